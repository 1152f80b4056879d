//! The broker's behavioural suite: every story runs against both brokers, the in-memory one and
//! Redis (a private `redis-server` per test, see `support/redis_server.rs`), because both must
//! keep the same promises. The per-method docs of `wtq_client::broker::Broker` are the spec.
//!
//! A story is written once, as `async fn story(broker: impl Broker)`, and `both!` turns it into
//! `story::on_memory` and `story::on_redis`. Redis-only properties (persistence across a crash,
//! refusing an evicting server, key hygiene) are at the end, in `mod redis_only`.
//!
//! Time is the caller's: stories pass `now` explicitly, from a fixed base [`T0`], and advance it
//! by hand. The few that need the real clock say why: waking up a waiter, Redis expiring a
//! finished record (PEXPIRE counts real milliseconds), Redis restarting.
//!
//! Run: `cargo test -p wtq-client --test broker` (needs `redis-server` on PATH).

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wtq_client::broker::memory::MemoryBroker;
use wtq_client::broker::redis::RedisBroker;
use wtq_client::broker::{
    Broker, Delivery, Enqueued, Error, Lease, Mark, NewTask, Revoked, Settle, Settled, Settlement,
    Tenancy,
};
use wtq_client::message::{
    Attempt, Backoff, DEFAULT_MAX_DELIVERIES, DEFAULT_RESULT_EXPIRES_MS, LimitOverrides, Progress,
    State, TaskFailure, TaskMessage, TaskRecord,
};
use wtq_client::registry::{ComponentRecord, TaskInfo, TaskPolicy, Upload, Version};
use wtq_client::tenancy::{
    EVENTS_FROM_START, Event, Quotas, Rate, RateDecision, Tenant, TokenRecord, Usage, namespace_of,
};
use wtq_client::workflow::{
    Input, JoinSlot, Links, Parked, Plan, PlannedJoin, PlannedTask, TaskLeaf, Tree,
};

use redis_server::{Options, RedisServer};

/// The stories' "now" before anything happens (November 2023), far from the real clock, so a
/// broker that consults the real clock instead of `now_ms` is caught.
const T0: u64 = 1_700_000_000_000;
/// The lease every story's worker asks for.
const LEASE_MS: u64 = 30_000;
/// The worker of most stories.
const WORKER: &str = "worker-1";
/// A bound on anything that should happen "at once" in real time (a wake-up, a failed
/// connect): generous, so a loaded CI machine does not flake, yet far below the timeouts the
/// calls were given.
const PROMPTLY: Duration = Duration::from_secs(2);

/// `both!(story, ...)`: for each story, `story::on_memory` and `story::on_redis`.
macro_rules! both {
    ($($story:ident),* $(,)?) => {$(
        mod $story {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_memory() {
                super::$story(super::memory_broker()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redis() {
                let (_server, broker) = super::redis_broker().await;
                super::$story(broker).await;
            }
        }
    )*};
}

both!(
    a_terminate_travels_with_the_next_delivery,
    a_finished_task_keeps_its_result,
    a_message_arrives_exactly_as_it_was_sent,
    a_batch_settles_each_lease_on_its_own,
    higher_priorities_run_first_and_equal_ones_in_enqueue_order,
    workers_see_only_their_queues_in_the_order_they_give,
    reserve_leases_at_most_max,
    a_task_with_an_eta_waits_until_it_is_due,
    an_expired_task_is_revoked_and_never_delivered,
    a_task_that_expires_while_delayed_is_never_delivered,
    an_idempotency_key_returns_the_first_task,
    a_task_id_in_use_is_refused,
    renewing_a_lease_keeps_it,
    a_lapsed_lease_nobody_took_over_is_still_held,
    a_lost_lease_cannot_be_renewed,
    an_expired_lease_is_redelivered_with_a_new_token,
    a_zombie_workers_late_result_is_rejected,
    a_message_is_dead_lettered_after_max_deliveries,
    dead_letters_can_be_retried,
    dead_letters_can_be_purged,
    a_released_message_goes_back_to_its_place,
    releasing_does_not_count_as_a_delivery,
    a_retry_waits_for_its_eta_then_runs_as_the_next_attempt,
    a_dead_letter_settlement_fails_the_task,
    marks_show_in_the_record_only_under_the_lease,
    revoking_a_waiting_task_means_it_never_runs,
    revoking_a_running_task_with_terminate_tells_its_worker,
    revoking_a_finished_task_changes_nothing,
    unknown_ids_are_unknown_everywhere,
    purge_revokes_every_waiting_message_of_its_queue,
    wait_returns_as_soon_as_the_task_finishes,
    wait_gives_up_after_its_timeout,
    wait_for_work_wakes_up_on_enqueue_and_release,
    concurrent_workers_never_share_a_message,
    the_registry_keeps_every_version_newest_first,
    finished_records_expire_and_waiting_ones_do_not,
);

both!(
    namespaces_are_isolated,
    tenants_and_tokens_round_trip_and_tokens_revoke,
    a_concurrency_cap_holds_across_workers,
    the_rate_limiter_allows_a_burst_then_paces,
    usage_counts_exactly_the_committed_settlements,
    events_follow_a_tasks_lifecycle_in_order,
    the_event_log_tells_a_tasks_whole_story,
    the_event_log_is_capped_and_off_by_default,
);

both!(
    a_task_rate_limit_spaces_leases_across_workers,
    without_a_task_rate_limit_nothing_changes,
    other_tasks_are_not_held_back_by_a_limited_backlog,
    removing_a_task_rate_limit_frees_its_backlog,
    a_revoked_booked_message_leaves_its_slot_unused,
    a_retry_and_a_redelivery_take_a_slot_each,
    task_policies_round_trip,
    a_huge_limited_backlog_holds_back_no_other_task,
    a_slow_tasks_backlog_is_not_examined_again_and_again,
    raising_a_task_rate_limit_brings_its_deferred_backlog_back,
    removing_a_task_rate_limit_frees_a_far_deferred_backlog_at_once,
);

both!(
    a_chain_starts_each_step_with_the_previous_output,
    a_chord_callback_runs_once_with_every_result_in_member_order,
    a_failed_chord_member_fails_the_callback_and_starts_its_errback_once,
    a_collecting_chord_gathers_failures_and_counts_each_member_once,
    chunk_results_are_concatenated,
    a_failed_chain_step_fails_the_rest_and_starts_the_errback_once,
    a_revoked_parked_task_is_never_started,
    revoking_a_waiting_chain_step_revokes_the_rest,
    a_success_skips_its_parked_errback,
    an_upstream_failure_fails_a_collecting_group,
    every_way_a_step_ends_runs_its_links,
    a_workflow_with_an_id_in_use_stores_nothing,
    a_workflow_tree_can_be_read_back,
    waiters_and_workers_wake_when_links_run,
    a_chord_of_nine_thousand_members_calls_back_once_in_order,
);

// ---------------------------------------------------------------------------------------------
// Producing and consuming
// ---------------------------------------------------------------------------------------------

async fn a_finished_task_keeps_its_result(broker: impl Broker) {
    let mut now = T0;
    let enqueued = broker
        .enqueue(vec![task(message("a"))], now)
        .await
        .expect("enqueue");
    assert_eq!(enqueued, [created("a")]);
    let pending = record(&broker, "a").await;
    assert_eq!(pending.state, State::Pending);
    assert_eq!(pending.message, message("a"));
    assert_eq!((pending.deliveries, pending.attempts.len()), (0, 0));
    assert_eq!(depth(&broker, "default").await, 1);

    now += 10;
    let delivery = one(reserve(&broker, &["default"], 10, now).await);
    assert_eq!(delivery.id, "a");
    assert_eq!(delivery.message, Ok(message("a")));
    assert_eq!((delivery.deliveries, delivery.attempt), (1, 1));
    assert_eq!(delivery.received_ms, now);
    let received = record(&broker, "a").await;
    assert_eq!(received.state, State::Received);
    assert_eq!(received.worker.as_deref(), Some(WORKER));
    assert_eq!(received.deliveries, 1);
    assert_eq!(depth(&broker, "default").await, 0);

    now += 25;
    let attempt = succeeded(&delivery, "3", now);
    assert_eq!(
        settle(&broker, &delivery, Settlement::Finish(attempt.clone()), now).await,
        Settled::Committed
    );
    let done = record(&broker, "a").await;
    assert_eq!(done.state, State::Success);
    assert_eq!(done.output(), Some("3"));
    assert_eq!(done.attempts, [attempt]);
    assert_eq!(done.finished_ms, Some(now));
    assert_eq!(done.error, None);

    // Settled means acknowledged: nothing is left to deliver or to reclaim.
    assert!(reserve(&broker, &["default"], 10, now).await.is_empty());
    assert_eq!(reap(&broker, now + 10 * LEASE_MS).await, 0);
}

/// Every field a producer can set reaches the worker and the record unchanged.
async fn a_message_arrives_exactly_as_it_was_sent(broker: impl Broker) {
    let everything = TaskMessage {
        id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        component: "text".into(),
        digest: Some("3f2a".repeat(16)),
        task: "word_count".into(),
        args: r#"{"text": "naïve café — \"quoted\"\n", "n": [1, 2.5, null]}"#.into(),
        queue: "batch-jobs_2".into(),
        priority: 7,
        eta_ms: Some(T0 - 1_000),
        expires_ms: Some(T0 + 3_600_000),
        max_retries: Some(5),
        retry_backoff: Some(Backoff {
            base_ms: 250,
            max_ms: 60_000,
            jitter: false,
        }),
        limits: LimitOverrides {
            time_ms: Some(1_500),
            fuel: Some(10_000_000),
            memory: Some(64 << 20),
        },
        max_deliveries: 7,
        result_expires_ms: 3_600_000,
        created_ms: T0 - 5,
        batch: false,
    };
    enqueue(&broker, [everything.clone()], T0).await;
    assert_eq!(record(&broker, &everything.id).await.message, everything);
    let delivery = one(reserve(&broker, &["batch-jobs_2"], 1, T0).await);
    assert_eq!(delivery.message, Ok(everything.clone()));
    finish(&broker, &delivery, r#"{"words": 4}"#, T0 + 1).await;
    let done = record(&broker, &everything.id).await;
    assert_eq!(done.message, everything);
    assert_eq!(done.output(), Some(r#"{"words": 4}"#));
}

/// One settle call carries many settlements; each stands or falls on its own lease.
async fn a_batch_settles_each_lease_on_its_own(broker: impl Broker) {
    enqueue(&broker, [message("a"), message("b"), message("c")], T0).await;
    let [a, b, c] = <[Delivery; 3]>::try_from(reserve(&broker, &["default"], 3, T0).await)
        .expect("three deliveries");
    let stale_b = Lease {
        id: b.id.clone(),
        token: b.token + 1_000,
    };
    let settles = vec![
        Settle {
            lease: lease(&a),
            settlement: Settlement::Finish(succeeded(&a, "1", T0 + 1)),
        },
        Settle {
            lease: stale_b,
            settlement: Settlement::Finish(succeeded(&b, "2", T0 + 1)),
        },
        Settle {
            lease: lease(&c),
            settlement: Settlement::Release,
        },
        // The same lease twice: the first settlement ends it.
        Settle {
            lease: lease(&a),
            settlement: Settlement::Finish(succeeded(&a, "again", T0 + 1)),
        },
    ];
    let settled = broker.settle(settles, T0 + 1).await.expect("settle");
    assert_eq!(
        settled,
        [
            Settled::Committed,
            Settled::Stale,
            Settled::Committed,
            Settled::Stale
        ]
    );
    assert_eq!(record(&broker, "a").await.output(), Some("1"));
    assert_eq!(record(&broker, "b").await.state, State::Received);
    assert_eq!(ids(&reserve(&broker, &["default"], 3, T0 + 2).await), ["c"]);
    finish(&broker, &b, "2", T0 + 3).await;
}

async fn higher_priorities_run_first_and_equal_ones_in_enqueue_order(broker: impl Broker) {
    let expected = ["high-1", "high-2", "mid", "one", "low-1", "low-2"];
    let tasks = [
        ("low-1", 0),
        ("high-1", 9),
        ("mid", 5),
        ("high-2", 9),
        ("low-2", 0),
        ("one", 1),
    ];

    // Enqueued one by one, drained one by one.
    for (i, (id, priority)) in tasks.iter().enumerate() {
        let message = TaskMessage {
            priority: *priority,
            ..message(id)
        };
        enqueue(&broker, [message], T0 + i as u64).await;
    }
    let mut drained = Vec::new();
    while let Some(delivery) = reserve(&broker, &["default"], 1, T0 + 100).await.pop() {
        drained.push(delivery.id);
    }
    assert_eq!(drained, expected, "one at a time");

    // Enqueued as one batch at one instant, drained by one reserve: the same order.
    let batch: Vec<TaskMessage> = tasks
        .iter()
        .map(|(id, priority)| TaskMessage {
            priority: *priority,
            ..message(&format!("batch-{id}"))
        })
        .collect();
    enqueue(&broker, batch, T0 + 200).await;
    let deliveries = reserve(&broker, &["default"], 10, T0 + 300).await;
    let expected: Vec<String> = expected.iter().map(|id| format!("batch-{id}")).collect();
    assert_eq!(ids(&deliveries), expected, "one batch");
}

async fn workers_see_only_their_queues_in_the_order_they_give(broker: impl Broker) {
    let mut now = T0;
    for (id, queue) in [
        ("d1", "default"),
        ("h1", "high"),
        ("d2", "default"),
        ("h2", "high"),
    ] {
        now += 1;
        enqueue(&broker, [on_queue(message(id), queue)], now).await;
    }

    // A worker of `high` never sees `default`, however much it asks for.
    assert_eq!(
        ids(&reserve(&broker, &["high"], 10, now).await),
        ["h1", "h2"]
    );
    assert!(reserve(&broker, &["high"], 10, now).await.is_empty());
    assert_eq!(depth(&broker, "default").await, 2);
    assert_eq!(depth(&broker, "high").await, 0);

    // Queues are taken in the order given, even when a later queue holds older messages.
    now += 1;
    enqueue(&broker, [on_queue(message("h3"), "high")], now).await;
    assert_eq!(
        ids(&reserve(&broker, &["high", "default"], 10, now).await),
        ["h3", "d1", "d2"]
    );

    now += 1;
    enqueue(&broker, [on_queue(message("h4"), "high")], now).await;
    enqueue(&broker, [message("d3")], now + 1).await;
    assert_eq!(
        ids(&reserve(&broker, &["low", "default", "high"], 1, now + 2).await),
        ["d3"]
    );
    assert_eq!(
        ids(&reserve(&broker, &["low", "default", "high"], 1, now + 2).await),
        ["h4"]
    );
}

async fn reserve_leases_at_most_max(broker: impl Broker) {
    let messages: Vec<TaskMessage> = (1..=5).map(|n| message(&format!("t{n}"))).collect();
    enqueue(&broker, messages, T0).await;

    let check = async |max: usize, expected: &[&str]| {
        let got = reserve(&broker, &["default"], max, T0 + 1).await;
        assert_eq!(ids(&got), expected, "reserve max {max}");
    };
    check(0, &[]).await;
    check(2, &["t1", "t2"]).await;
    assert_eq!(depth(&broker, "default").await, 3);
    check(1, &["t3"]).await;
    check(10, &["t4", "t5"]).await;
    check(10, &[]).await;
}

async fn a_task_with_an_eta_waits_until_it_is_due(broker: impl Broker) {
    let eta = T0 + 10_000;
    let later = TaskMessage {
        eta_ms: Some(eta),
        ..message("later")
    };
    enqueue(&broker, [later], T0).await;
    enqueue(&broker, [message("now")], T0 + 1).await;

    // Delayed messages are not in the queue: not counted, not delivered, and they do not hold
    // up the ready ones behind them.
    assert_eq!(record(&broker, "later").await.state, State::Pending);
    assert_eq!(depth(&broker, "default").await, 1);
    assert_eq!(
        ids(&reserve(&broker, &["default"], 10, T0 + 2).await),
        ["now"]
    );

    for now in [T0 + 3, eta - 1] {
        assert!(
            reserve(&broker, &["default"], 10, now).await.is_empty(),
            "delivered {} ms before its eta",
            eta - now
        );
    }
    // "Not before this time": due at its eta exactly.
    let delivery = one(reserve(&broker, &["default"], 10, eta).await);
    assert_eq!(delivery.id, "later");
    assert_eq!((delivery.deliveries, delivery.attempt), (1, 1));
    assert!(
        reserve(&broker, &["default"], 10, eta + LEASE_MS / 2)
            .await
            .is_empty()
    );
}

async fn an_expired_task_is_revoked_and_never_delivered(broker: impl Broker) {
    let stale = TaskMessage {
        expires_ms: Some(T0 + 1_000),
        ..message("stale")
    };
    let fresh = TaskMessage {
        expires_ms: Some(T0 + 60_000),
        ..message("fresh")
    };
    enqueue(&broker, [stale, fresh, message("forever")], T0).await;

    let now = T0 + 1_001;
    assert_eq!(
        ids(&reserve(&broker, &["default"], 10, now).await),
        ["fresh", "forever"]
    );
    let revoked = record(&broker, "stale").await;
    assert_eq!(revoked.state, State::Revoked);
    assert_eq!(kind(&revoked), Some("expired"));
    assert!(reserve(&broker, &["default"], 10, now + 1).await.is_empty());
    assert_eq!(depth(&broker, "default").await, 0);
}

async fn a_task_that_expires_while_delayed_is_never_delivered(broker: impl Broker) {
    let doomed = TaskMessage {
        eta_ms: Some(T0 + 10_000),
        expires_ms: Some(T0 + 5_000),
        ..message("doomed")
    };
    enqueue(&broker, [doomed], T0).await;
    assert_eq!(record(&broker, "doomed").await.state, State::Pending);

    assert!(
        reserve(&broker, &["default"], 10, T0 + 20_000)
            .await
            .is_empty()
    );
    let revoked = record(&broker, "doomed").await;
    assert_eq!(revoked.state, State::Revoked);
    assert_eq!(kind(&revoked), Some("expired"));
    assert!(
        reserve(&broker, &["default"], 10, T0 + 30_000)
            .await
            .is_empty()
    );
}

async fn an_idempotency_key_returns_the_first_task(broker: impl Broker) {
    let first = broker
        .enqueue(vec![keyed(message("first"), "order-42")], T0)
        .await
        .expect("enqueue");
    assert_eq!(first, [created("first")]);

    // A retried submission (another id, same key) gets the first id; nothing new is stored.
    let again = broker
        .enqueue(
            vec![
                keyed(message("second"), "order-42"),
                keyed(message("other"), "order-43"),
            ],
            T0 + 1_000,
        )
        .await
        .expect("enqueue");
    assert_eq!(again, [existing("first"), created("other")]);
    assert_eq!(broker.record("second").await.expect("record"), None);
    assert_eq!(depth(&broker, "default").await, 2);

    // Within one batch, the key is known from its first message on.
    let batch = broker
        .enqueue(
            vec![
                keyed(message("x"), "order-44"),
                keyed(message("y"), "order-44"),
            ],
            T0 + 2_000,
        )
        .await
        .expect("enqueue");
    assert_eq!(batch, [created("x"), existing("x")]);
    assert_eq!(broker.record("y").await.expect("record"), None);

    // The key outlives the task's run.
    let delivery = one(reserve(&broker, &["default"], 1, T0 + 3_000).await);
    assert_eq!(delivery.id, "first");
    finish(&broker, &delivery, "{}", T0 + 3_001).await;
    let after = broker
        .enqueue(vec![keyed(message("third"), "order-42")], T0 + 4_000)
        .await
        .expect("enqueue");
    assert_eq!(after, [existing("first")]);
    assert_eq!(
        ids(&reserve(&broker, &["default"], 10, T0 + 5_000).await),
        ["other", "x"]
    );
}

async fn a_task_id_in_use_is_refused(broker: impl Broker) {
    enqueue(&broker, [message("a")], T0).await;
    let impostor = TaskMessage {
        args: "[9, 9]".into(),
        ..message("a")
    };
    let refused = broker
        .enqueue(
            vec![
                task(message("b")),
                task(impostor.clone()),
                task(message("c")),
            ],
            T0 + 1,
        )
        .await;
    assert!(
        matches!(&refused, Err(Error::DuplicateId(id)) if id == "a"),
        "expected DuplicateId(\"a\"), got {refused:?}"
    );
    // The first task is untouched; the batch stopped at the refused message: what came
    // before it was stored, nothing after it.
    let original = record(&broker, "a").await;
    assert_eq!(original.message, message("a"));
    assert_eq!(original.state, State::Pending);
    assert_eq!(record(&broker, "b").await.state, State::Pending);
    assert_eq!(broker.record("c").await.expect("record"), None);

    // A finished task's id stays in use while its record lives.
    let delivery = one(reserve(&broker, &["default"], 1, T0 + 2).await);
    assert_eq!(delivery.id, "a");
    finish(&broker, &delivery, "3", T0 + 3).await;
    let refused = broker.enqueue(vec![task(impostor)], T0 + 4).await;
    assert!(
        matches!(&refused, Err(Error::DuplicateId(id)) if id == "a"),
        "expected DuplicateId(\"a\") for a finished task's id, got {refused:?}"
    );
    assert_eq!(record(&broker, "a").await.output(), Some("3"));
}

// ---------------------------------------------------------------------------------------------
// Leases: renewal, expiry, fencing
// ---------------------------------------------------------------------------------------------

async fn renewing_a_lease_keeps_it(broker: impl Broker) {
    enqueue(&broker, [message("long")], T0).await;
    let delivery = one(reserve(&broker, &["default"], 1, T0).await); // held until T0 + 30 s

    let renewed = broker
        .renew(&[lease(&delivery)], LEASE_MS, T0 + 20_000) // held until T0 + 50 s
        .await
        .expect("renew");
    assert_eq!(renewed, [true]);

    let past_first_lease = T0 + 40_000;
    assert_eq!(reap(&broker, past_first_lease).await, 0);
    assert!(
        reserve(&broker, &["default"], 1, past_first_lease)
            .await
            .is_empty()
    );
    assert_eq!(record(&broker, "long").await.state, State::Received);

    assert_eq!(reap(&broker, T0 + 50_001).await, 1);
}

/// A lease whose time ran out but that nobody took over (no reap yet) still matches its
/// token: the worker (back from a long pause) may renew it or settle it. Fencing is by token,
/// not by clock, so this can never commit a second result.
async fn a_lapsed_lease_nobody_took_over_is_still_held(broker: impl Broker) {
    enqueue(&broker, [message("paused"), message("late")], T0).await;
    let [paused, late] = <[Delivery; 2]>::try_from(reserve(&broker, &["default"], 2, T0).await)
        .expect("two deliveries");
    let lapsed = T0 + LEASE_MS + 5_000;

    let renewed = broker
        .renew(&[lease(&paused)], LEASE_MS, lapsed)
        .await
        .expect("renew");
    assert_eq!(renewed, [true]);
    finish(&broker, &late, "1", lapsed).await;

    // Reaping now finds nothing: one lease was renewed, the other settled.
    assert_eq!(reap(&broker, lapsed + 1).await, 0);
    assert_eq!(reap(&broker, lapsed + LEASE_MS + 1).await, 1);
}

async fn a_lost_lease_cannot_be_renewed(broker: impl Broker) {
    enqueue(&broker, [message("a")], T0).await;
    let lost = one(reserve(&broker, &["default"], 1, T0).await);
    let now = T0 + LEASE_MS + 1;
    assert_eq!(reap(&broker, now).await, 1);
    let current = one(reserve(&broker, &["default"], 1, now).await);

    let ghost = Lease {
        id: "ghost".into(),
        token: lost.token,
    };
    let renewed = broker
        .renew(&[lease(&current), lease(&lost), ghost], LEASE_MS, now + 1)
        .await
        .expect("renew");
    assert_eq!(renewed, [true, false, false]);
}

async fn an_expired_lease_is_redelivered_with_a_new_token(broker: impl Broker) {
    let messages: Vec<TaskMessage> = ["a", "b", "c"].map(message).to_vec();
    enqueue(&broker, messages, T0).await;
    let first = reserve(&broker, &["default"], 10, T0).await;
    assert_eq!(ids(&first), ["a", "b", "c"]);

    assert_eq!(
        reap(&broker, T0 + LEASE_MS - 1).await,
        0,
        "leases still held"
    );
    assert!(
        reserve(&broker, &["default"], 10, T0 + LEASE_MS - 1)
            .await
            .is_empty()
    );

    // Reap takes at most `limit` at a time.
    let now = T0 + LEASE_MS + 1;
    assert_eq!(broker.reap(now, 2).await.expect("reap"), 2);
    assert_eq!(broker.reap(now, 10).await.expect("reap"), 1);
    assert_eq!(broker.reap(now, 10).await.expect("reap"), 0);
    for id in ["a", "b", "c"] {
        assert_eq!(record(&broker, id).await.state, State::Pending, "{id}");
    }

    let second = reserve(&broker, &["default"], 10, now).await;
    assert_eq!(
        ids(&second),
        ["a", "b", "c"],
        "back in their original order"
    );
    for (old, new) in first.iter().zip(&second) {
        assert_eq!((new.deliveries, new.attempt), (2, 1), "{}", new.id);
        assert_ne!(new.token, old.token, "{} kept its fencing token", new.id);
        assert_eq!(new.received_ms, now);
    }
}

/// The zombie-worker property (reliability R2): a worker whose lease was taken over (paused,
/// partitioned) cannot write anything about the task, and exactly one result is committed.
async fn a_zombie_workers_late_result_is_rejected(broker: impl Broker) {
    enqueue(&broker, [message("a")], T0).await;
    let zombie = one(reserve(&broker, &["default"], 1, T0).await);
    let mut now = T0 + LEASE_MS + 1;
    assert_eq!(reap(&broker, now).await, 1);
    let successor = one(broker
        .reserve("worker-2", &queues(&["default"]), 1, LEASE_MS, now)
        .await
        .expect("reserve"));
    assert_eq!(successor.deliveries, 2);

    let before = record(&broker, "a").await;
    assert_eq!(before.state, State::Received);
    assert_eq!(before.worker.as_deref(), Some("worker-2"));

    now += 1_000;
    let zombie_settlements = [
        Settlement::Finish(succeeded(&zombie, "\"zombie\"", now)),
        Settlement::Finish(failed(&zombie, "boom", now)),
        Settlement::Retry {
            attempt: Attempt {
                state: State::Retry,
                ..failed(&zombie, "later", now)
            },
            eta_ms: now + 1_000,
        },
        Settlement::Release,
        Settlement::DeadLetter(failure("malformed_message", "zombie")),
    ];
    for settlement in zombie_settlements {
        let what = format!("{settlement:?}");
        assert_eq!(
            settle(&broker, &zombie, settlement, now).await,
            Settled::Stale,
            "{what}"
        );
        assert_eq!(record(&broker, "a").await, before, "{what} wrote something");
    }
    mark(
        &broker,
        &zombie,
        State::Progress,
        Some(progress(9, 10)),
        now,
    )
    .await;
    assert_eq!(record(&broker, "a").await, before, "a zombie's mark wrote");
    let renewed = broker
        .renew(&[lease(&zombie)], LEASE_MS, now)
        .await
        .expect("renew");
    assert_eq!(renewed, [false]);
    assert!(reserve(&broker, &["default"], 10, now).await.is_empty());

    let attempt = Attempt {
        worker: "worker-2".into(),
        ..succeeded(&successor, "\"real\"", now)
    };
    assert_eq!(
        settle(
            &broker,
            &successor,
            Settlement::Finish(attempt.clone()),
            now
        )
        .await,
        Settled::Committed
    );
    let done = record(&broker, "a").await;
    assert_eq!(done.output(), Some("\"real\""));
    assert_eq!(done.attempts, [attempt], "exactly one committed result");

    // Later still, the zombie wakes again: still nothing.
    let late = Settlement::Finish(succeeded(&zombie, "\"zombie\"", now + 1));
    assert_eq!(
        settle(&broker, &zombie, late, now + 1).await,
        Settled::Stale
    );
    assert_eq!(record(&broker, "a").await, done);
}

// ---------------------------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------------------------

async fn a_message_is_dead_lettered_after_max_deliveries(broker: impl Broker) {
    let mut now = T0;
    for max_deliveries in [1, 2, 3] {
        let id = format!("poison-{max_deliveries}");
        let poison = TaskMessage {
            max_deliveries,
            ..message(&id)
        };
        enqueue(&broker, [poison], now).await;
        // Each delivery's worker dies: it never settles, its lease runs out, it is reaped.
        for delivery in 1..=max_deliveries {
            let leased = one(reserve(&broker, &["default"], 10, now).await);
            assert_eq!(
                (leased.id.as_str(), leased.deliveries),
                (id.as_str(), delivery)
            );
            now += LEASE_MS + 1;
            assert_eq!(reap(&broker, now).await, 1, "{id}, delivery {delivery}");
            let state = record(&broker, &id).await.state;
            assert_eq!(
                state.is_final(),
                delivery == max_deliveries,
                "{id} after delivery {delivery}: {state}"
            );
        }
        let dead = record(&broker, &id).await;
        assert_eq!(dead.state, State::Failure, "{id}");
        assert_eq!(kind(&dead), Some("dead_lettered"), "{id}");
        assert_eq!(dead.deliveries, max_deliveries, "{id}");
        assert!(reserve(&broker, &["default"], 10, now).await.is_empty());
        assert_eq!(depth(&broker, "default").await, 0);
    }
    // Most recent first.
    assert_eq!(
        dead_ids(&broker, 10).await,
        ["poison-3", "poison-2", "poison-1"]
    );
    assert_eq!(dead_ids(&broker, 2).await, ["poison-3", "poison-2"]);
}

async fn dead_letters_can_be_retried(broker: impl Broker) {
    let mut now = T0;
    for id in ["p1", "p2", "p3"] {
        now += 1;
        dead_letter_by_crashes(&broker, id, &mut now).await;
    }
    assert_eq!(dead_ids(&broker, 10).await, ["p3", "p2", "p1"]);

    assert_eq!(broker.retry_dead(Some("p2"), now).await.expect("retry"), 1);
    let again = record(&broker, "p2").await;
    assert_eq!((again.state, again.deliveries), (State::Pending, 0));
    assert_eq!(dead_ids(&broker, 10).await, ["p3", "p1"]);
    let delivery = one(reserve(&broker, &["default"], 10, now).await);
    assert_eq!(
        (delivery.id.as_str(), delivery.deliveries, delivery.attempt),
        ("p2", 1, 2),
        "a fresh attempt"
    );
    finish(&broker, &delivery, "2", now).await;
    assert_eq!(record(&broker, "p2").await.state, State::Success);
    // Only dead letters come back: a finished task stays finished.
    assert_eq!(broker.retry_dead(Some("p2"), now).await.expect("retry"), 0);
    assert_eq!(record(&broker, "p2").await.state, State::Success);

    assert_eq!(broker.retry_dead(None, now).await.expect("retry"), 2);
    assert!(dead_ids(&broker, 10).await.is_empty());
    let redelivered = reserve(&broker, &["default"], 10, now).await;
    let mut redelivered = ids(&redelivered);
    redelivered.sort();
    assert_eq!(redelivered, ["p1", "p3"]);
    assert_eq!(broker.retry_dead(None, now).await.expect("retry"), 0);
}

async fn dead_letters_can_be_purged(broker: impl Broker) {
    let mut now = T0;
    dead_letter_by_crashes(&broker, "crashed", &mut now).await;
    enqueue(&broker, [message("malformed")], now).await;
    let delivery = one(reserve(&broker, &["default"], 1, now).await);
    let dead_letter = Settlement::DeadLetter(failure("malformed_message", "bad body"));
    assert_eq!(
        settle(&broker, &delivery, dead_letter, now).await,
        Settled::Committed
    );
    assert_eq!(dead_ids(&broker, 10).await, ["malformed", "crashed"]);

    assert_eq!(broker.purge_dead().await.expect("purge dead"), 2);
    assert!(dead_ids(&broker, 10).await.is_empty());
    for id in ["crashed", "malformed"] {
        assert_eq!(broker.record(id).await.expect("record"), None, "{id}");
    }
    assert_eq!(broker.retry_dead(None, now).await.expect("retry"), 0);
    assert_eq!(broker.purge_dead().await.expect("purge dead"), 0);
}

// ---------------------------------------------------------------------------------------------
// Settlements other than Finish
// ---------------------------------------------------------------------------------------------

/// Warm shutdown: a worker gives a message back. It is ready again at once and goes back to
/// its place: a message keeps the place its priority and enqueue order gave it, so it runs
/// before everything younger of its priority and after anything older (here an ETA message
/// enqueued before it, which fell due while it was out).
async fn a_released_message_goes_back_to_its_place(broker: impl Broker) {
    let early = TaskMessage {
        eta_ms: Some(T0 + 1_000),
        ..message("early")
    };
    enqueue(&broker, [early], T0).await;
    enqueue(&broker, [message("a")], T0 + 1).await;
    let delivery = one(reserve(&broker, &["default"], 1, T0 + 2).await);
    assert_eq!(delivery.id, "a");
    let urgent = TaskMessage {
        priority: 9,
        ..message("urgent")
    };
    enqueue(&broker, [message("b"), urgent], T0 + 3).await;

    let now = T0 + 1_001;
    assert_eq!(
        settle(&broker, &delivery, Settlement::Release, now).await,
        Settled::Committed
    );
    assert_eq!(record(&broker, "a").await.state, State::Pending);
    let order = reserve(&broker, &["default"], 10, now).await;
    assert_eq!(ids(&order), ["urgent", "early", "a", "b"]);
    assert_eq!(order[2].deliveries, 1, "the released delivery counted");
    assert_ne!(order[2].token, delivery.token);

    // A released lease is gone.
    let again = Settlement::Finish(succeeded(&delivery, "1", now + 1));
    assert_eq!(
        settle(&broker, &delivery, again, now + 1).await,
        Settled::Stale
    );
}

async fn releasing_does_not_count_as_a_delivery(broker: impl Broker) {
    let fragile = TaskMessage {
        max_deliveries: 1,
        ..message("fragile")
    };
    enqueue(&broker, [fragile], T0).await;
    let mut now = T0;
    for round in 1..=3 {
        now += 1;
        let delivery = one(reserve(&broker, &["default"], 1, now).await);
        assert_eq!(delivery.deliveries, 1, "round {round}");
        assert_eq!(
            settle(&broker, &delivery, Settlement::Release, now).await,
            Settled::Committed
        );
    }
    // The one delivery that is lost does count: with max_deliveries 1 it dead-letters.
    one(reserve(&broker, &["default"], 1, now).await);
    assert_eq!(reap(&broker, now + LEASE_MS + 1).await, 1);
    assert_eq!(
        kind(&record(&broker, "fragile").await),
        Some("dead_lettered")
    );
}

async fn a_retry_waits_for_its_eta_then_runs_as_the_next_attempt(broker: impl Broker) {
    enqueue(&broker, [message("flaky")], T0).await;
    // A first delivery lost to a crash, so that the retry visibly resets the count.
    one(reserve(&broker, &["default"], 1, T0).await);
    let mut now = T0 + LEASE_MS + 1;
    assert_eq!(reap(&broker, now).await, 1);
    let first = one(reserve(&broker, &["default"], 1, now).await);
    assert_eq!((first.attempt, first.deliveries), (1, 2));

    now += 100;
    let eta = now + 5_000;
    let retry = Attempt {
        state: State::Retry,
        ..failed(&first, "rate limited", now)
    };
    let settlement = Settlement::Retry {
        attempt: retry.clone(),
        eta_ms: eta,
    };
    assert_eq!(
        settle(&broker, &first, settlement, now).await,
        Settled::Committed
    );
    let waiting = record(&broker, "flaky").await;
    assert_eq!(waiting.state, State::Retry);
    assert_eq!(waiting.error, retry.error);
    assert_eq!(waiting.attempts, std::slice::from_ref(&retry));
    assert_eq!(depth(&broker, "default").await, 0);
    assert!(reserve(&broker, &["default"], 1, eta - 1).await.is_empty());

    let second = one(reserve(&broker, &["default"], 1, eta).await);
    assert_eq!((second.attempt, second.deliveries), (2, 1));
    assert_ne!(second.token, first.token);
    let success = succeeded(&second, "42", eta + 10);
    assert_eq!(
        settle(
            &broker,
            &second,
            Settlement::Finish(success.clone()),
            eta + 10
        )
        .await,
        Settled::Committed
    );
    let done = record(&broker, "flaky").await;
    assert_eq!(done.state, State::Success);
    assert_eq!(done.output(), Some("42"));
    assert_eq!(done.attempts, [retry, success]);
}

/// A worker dead-letters a message it cannot run. (A message whose stored body is garbage,
/// `Delivery::message == Err(..)`, cannot be made through the trait; that case belongs to the
/// Redis broker's own tests, which can write a raw hash field.)
async fn a_dead_letter_settlement_fails_the_task(broker: impl Broker) {
    enqueue(&broker, [message("orphan")], T0).await;
    let delivery = one(reserve(&broker, &["default"], 1, T0).await);
    let why = failure(
        "unknown_component",
        "component `math` is not in the registry",
    );
    let settlement = Settlement::DeadLetter(why.clone());
    assert_eq!(
        settle(&broker, &delivery, settlement, T0 + 1).await,
        Settled::Committed
    );
    let dead = record(&broker, "orphan").await;
    assert_eq!(dead.state, State::Failure);
    assert_eq!(dead.error, Some(why));
    assert_eq!(dead_ids(&broker, 10).await, ["orphan"]);
    assert!(reserve(&broker, &["default"], 1, T0 + 2).await.is_empty());
    assert_eq!(reap(&broker, T0 + 10 * LEASE_MS).await, 0);
}

async fn marks_show_in_the_record_only_under_the_lease(broker: impl Broker) {
    enqueue(&broker, [message("a")], T0).await;
    let stalled = one(reserve(&broker, &["default"], 1, T0).await);

    mark(&broker, &stalled, State::Started, None, T0 + 5).await;
    assert_eq!(record(&broker, "a").await.state, State::Started);
    mark(
        &broker,
        &stalled,
        State::Progress,
        Some(progress(3, 10)),
        T0 + 6,
    )
    .await;
    let running = record(&broker, "a").await;
    assert_eq!(running.state, State::Progress);
    assert_eq!(running.progress, Some(progress(3, 10)));

    let now = T0 + LEASE_MS + 1;
    assert_eq!(reap(&broker, now).await, 1);
    let current = one(broker
        .reserve("worker-2", &queues(&["default"]), 1, LEASE_MS, now)
        .await
        .expect("reserve"));
    let before = record(&broker, "a").await;
    assert_eq!(before.state, State::Received);
    mark(
        &broker,
        &stalled,
        State::Progress,
        Some(progress(9, 10)),
        now + 1,
    )
    .await;
    assert_eq!(
        record(&broker, "a").await,
        before,
        "a stale mark was written"
    );

    mark(&broker, &current, State::Started, None, now + 2).await;
    assert_eq!(record(&broker, "a").await.state, State::Started);
}

// ---------------------------------------------------------------------------------------------
// Revoke, purge
// ---------------------------------------------------------------------------------------------

async fn revoking_a_waiting_task_means_it_never_runs(broker: impl Broker) {
    let later = TaskMessage {
        eta_ms: Some(T0 + 10_000),
        ..message("later")
    };
    enqueue(&broker, [message("retrying"), message("ready"), later], T0).await;
    // "retrying" ran once and waits for its retry's eta: not running, so revocable.
    let first = one(reserve(&broker, &["default"], 1, T0).await);
    let retry = Settlement::Retry {
        attempt: Attempt {
            state: State::Retry,
            ..failed(&first, "busy", T0)
        },
        eta_ms: T0 + 5_000,
    };
    assert_eq!(settle(&broker, &first, retry, T0).await, Settled::Committed);

    for (id, terminate) in [("ready", false), ("later", true), ("retrying", false)] {
        let revoked = broker.revoke(id, terminate, T0 + 1).await.expect("revoke");
        assert_eq!(revoked, Revoked::Revoked, "{id}");
        let record = record(&broker, id).await;
        assert_eq!(record.state, State::Revoked, "{id}");
        assert_eq!(kind(&record), Some("revoked"), "{id}");
    }
    assert_eq!(depth(&broker, "default").await, 0);
    assert!(
        reserve(&broker, &["default"], 10, T0 + 20_000)
            .await
            .is_empty()
    );
    assert_eq!(
        broker.revoke("ready", false, T0 + 2).await.expect("revoke"),
        Revoked::AlreadyFinal(State::Revoked)
    );
}

/// A worker holding a task dies; the task is revoked with terminate while nobody runs it; the
/// next delivery carries the request, so the next worker ends it instead of running it.
async fn a_terminate_travels_with_the_next_delivery(broker: impl Broker) {
    enqueue(&broker, [message("doomed"), message("spared")], T0).await;
    let first = reserve(&broker, &["default"], 10, T0).await;
    assert!(first.iter().all(|delivery| !delivery.terminating));
    assert_eq!(
        broker.revoke("doomed", true, T0 + 1).await.expect("revoke"),
        Revoked::Running { terminating: true }
    );
    assert_eq!(reap(&broker, T0 + LEASE_MS + 1).await, 2);
    let again = reserve(&broker, &["default"], 10, T0 + LEASE_MS + 2).await;
    let flags: Vec<(&str, bool)> = again
        .iter()
        .map(|delivery| (delivery.id.as_str(), delivery.terminating))
        .collect();
    assert_eq!(flags, [("doomed", true), ("spared", false)]);
}

async fn revoking_a_running_task_with_terminate_tells_its_worker(broker: impl Broker) {
    // Every subscribed worker hears every request: only the one holding the task acts on it.
    let mut terminations = broker.terminations().await.expect("terminations");
    let mut other_worker = broker.terminations().await.expect("terminations");
    enqueue(&broker, [message("spared"), message("doomed")], T0).await;
    let running = reserve(&broker, &["default"], 10, T0).await;
    assert_eq!(ids(&running), ["spared", "doomed"]);

    assert_eq!(
        broker
            .revoke("spared", false, T0 + 1)
            .await
            .expect("revoke"),
        Revoked::Running { terminating: false }
    );
    assert_eq!(
        broker.revoke("doomed", true, T0 + 2).await.expect("revoke"),
        Revoked::Running { terminating: true }
    );
    // The first id to arrive is the terminated one: a revoke without terminate sends nothing.
    for receiver in [&mut terminations, &mut other_worker] {
        let id = within(PROMPTLY, "the termination request", receiver.recv()).await;
        assert_eq!(id.as_deref(), Some("doomed"));
    }
    assert!(broker.terminating("doomed").await.expect("terminating"));
    assert!(!broker.terminating("spared").await.expect("terminating"));

    // The doomed task's worker stops it and says so; the spared one runs to completion.
    let doomed = &running[1];
    let stopped = Attempt {
        state: State::Revoked,
        output: None,
        error: Some(failure("terminated", "revoked with terminate")),
        ..succeeded(doomed, "null", T0 + 3)
    };
    assert_eq!(
        settle(&broker, doomed, Settlement::Finish(stopped), T0 + 3).await,
        Settled::Committed
    );
    let record_doomed = record(&broker, "doomed").await;
    assert_eq!(record_doomed.state, State::Revoked);
    assert_eq!(kind(&record_doomed), Some("terminated"));
    finish(&broker, &running[0], "1", T0 + 4).await;
    assert_eq!(record(&broker, "spared").await.output(), Some("1"));
}

async fn revoking_a_finished_task_changes_nothing(broker: impl Broker) {
    enqueue(&broker, [message("done"), message("broken")], T0).await;
    let [done, broken] = <[Delivery; 2]>::try_from(reserve(&broker, &["default"], 2, T0).await)
        .expect("two deliveries");
    finish(&broker, &done, "3", T0 + 1).await;
    let failed_attempt = Settlement::Finish(failed(&broken, "boom", T0 + 1));
    assert_eq!(
        settle(&broker, &broken, failed_attempt, T0 + 1).await,
        Settled::Committed
    );

    for (id, state) in [("done", State::Success), ("broken", State::Failure)] {
        let before = record(&broker, id).await;
        assert_eq!(
            broker.revoke(id, true, T0 + 2).await.expect("revoke"),
            Revoked::AlreadyFinal(state),
            "{id}"
        );
        assert_eq!(record(&broker, id).await, before, "{id}");
        assert!(!broker.terminating(id).await.expect("terminating"), "{id}");
    }
}

async fn unknown_ids_are_unknown_everywhere(broker: impl Broker) {
    let ghost = Lease {
        id: "ghost".into(),
        token: 1,
    };
    assert_eq!(broker.record("ghost").await.expect("record"), None);
    assert_eq!(
        broker.revoke("ghost", true, T0).await.expect("revoke"),
        Revoked::Unknown
    );
    assert!(!broker.terminating("ghost").await.expect("terminating"));
    let started = Instant::now();
    let waited = broker
        .wait("ghost", Duration::from_secs(30))
        .await
        .expect("wait");
    assert_eq!(waited, None);
    assert!(
        started.elapsed() < PROMPTLY,
        "waited {:?}",
        started.elapsed()
    );
    let renewed = broker
        .renew(std::slice::from_ref(&ghost), LEASE_MS, T0)
        .await
        .expect("renew");
    assert_eq!(renewed, [false]);
    let settled = broker
        .settle(
            vec![Settle {
                lease: ghost.clone(),
                settlement: Settlement::Release,
            }],
            T0,
        )
        .await
        .expect("settle");
    assert_eq!(settled, [Settled::Stale]);
    let marks = [Mark {
        lease: ghost,
        state: State::Started,
        progress: None,
        at_ms: T0,
    }];
    broker.mark(&marks).await.expect("mark");
    assert_eq!(broker.record("ghost").await.expect("record"), None);
    assert_eq!(
        broker.retry_dead(Some("ghost"), T0).await.expect("retry"),
        0
    );
    assert_eq!(depth(&broker, "nowhere").await, 0);
    assert_eq!(broker.purge("nowhere", T0).await.expect("purge"), 0);
}

async fn purge_revokes_every_waiting_message_of_its_queue(broker: impl Broker) {
    let delayed = TaskMessage {
        eta_ms: Some(T0 + 10_000),
        ..message("delayed")
    };
    enqueue(
        &broker,
        [
            message("running"),
            message("ready"),
            delayed,
            on_queue(message("elsewhere"), "high"),
        ],
        T0,
    )
    .await;
    let running = one(reserve(&broker, &["default"], 1, T0).await);

    assert_eq!(broker.purge("default", T0 + 1).await.expect("purge"), 2);
    for id in ["ready", "delayed"] {
        let record = record(&broker, id).await;
        assert_eq!(record.state, State::Revoked, "{id}");
        assert_eq!(kind(&record), Some("purged"), "{id}");
    }
    assert_eq!(depth(&broker, "default").await, 0);
    assert!(
        reserve(&broker, &["default"], 10, T0 + 20_000)
            .await
            .is_empty()
    );

    // Running tasks and other queues are not touched.
    assert_eq!(record(&broker, "running").await.state, State::Received);
    finish(&broker, &running, "1", T0 + 2).await;
    assert_eq!(record(&broker, "elsewhere").await.state, State::Pending);
    assert_eq!(depth(&broker, "high").await, 1);
}

// ---------------------------------------------------------------------------------------------
// Waiting (real time: these are about waking up)
// ---------------------------------------------------------------------------------------------

async fn wait_returns_as_soon_as_the_task_finishes(broker: impl Broker) {
    let broker = Arc::new(broker);
    enqueue(&*broker, [message("a")], T0).await;
    let delivery = one(reserve(&*broker, &["default"], 1, T0).await);

    let waiter = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            let started = Instant::now();
            let record = broker.wait("a", Duration::from_secs(30)).await;
            (record, started.elapsed())
        })
    };
    // Let the waiter subscribe first, so that it is the wake-up being measured rather than
    // the "already final" fast path. The assertions hold either way.
    tokio::time::sleep(Duration::from_millis(100)).await;
    finish(&*broker, &delivery, "3", T0 + 1).await;

    let (record, elapsed) = within(PROMPTLY * 2, "the waiter", waiter)
        .await
        .expect("waiter task");
    let record = record.expect("wait").expect("a record");
    assert_eq!(record.state, State::Success);
    assert_eq!(record.output(), Some("3"));
    assert!(elapsed < PROMPTLY, "woke after {elapsed:?}");

    // A final task's wait returns at once.
    let started = Instant::now();
    let again = broker
        .wait("a", Duration::from_secs(30))
        .await
        .expect("wait");
    assert_eq!(again.map(|record| record.state), Some(State::Success));
    assert!(started.elapsed() < PROMPTLY);

    // Any way of becoming final wakes a waiter, a revoke too.
    enqueue(&*broker, [message("b")], T0 + 2).await;
    let waiter = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move { broker.wait("b", Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let revoked = broker.revoke("b", false, T0 + 3).await.expect("revoke");
    assert_eq!(revoked, Revoked::Revoked);
    let record = within(PROMPTLY, "the waiter of a revoked task", waiter)
        .await
        .expect("waiter task")
        .expect("wait");
    assert_eq!(record.map(|record| record.state), Some(State::Revoked));
}

async fn wait_gives_up_after_its_timeout(broker: impl Broker) {
    enqueue(&broker, [message("slow")], T0).await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let record = broker.wait("slow", timeout).await.expect("wait");
    let elapsed = started.elapsed();
    assert_eq!(record.map(|record| record.state), Some(State::Pending));
    assert!(
        elapsed >= timeout - Duration::from_millis(20),
        "gave up early, after {elapsed:?}"
    );
    assert!(
        elapsed < timeout + PROMPTLY,
        "gave up late, after {elapsed:?}"
    );
}

async fn wait_for_work_wakes_up_on_enqueue_and_release(broker: impl Broker) {
    let broker = Arc::new(broker);
    let idle_worker = |queue: &'static str| {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            let started = Instant::now();
            let waited = broker
                .wait_for_work(&queues(&["other", queue]), Duration::from_secs(30))
                .await;
            (waited, started.elapsed())
        })
    };

    let waiter = idle_worker("default");
    tokio::time::sleep(Duration::from_millis(100)).await; // see wait_returns_as_soon_as...
    enqueue(&*broker, [message("a")], T0).await;
    let (waited, elapsed) = within(PROMPTLY * 2, "wait_for_work", waiter)
        .await
        .expect("waiter task");
    waited.expect("wait_for_work");
    assert!(elapsed < PROMPTLY, "woke after {elapsed:?}");

    let delivery = one(reserve(&*broker, &["default"], 1, T0).await);
    let waiter = idle_worker("default");
    tokio::time::sleep(Duration::from_millis(100)).await;
    settle(&*broker, &delivery, Settlement::Release, T0 + 1).await;
    let (waited, elapsed) = within(PROMPTLY * 2, "wait_for_work", waiter)
        .await
        .expect("waiter task");
    waited.expect("wait_for_work");
    assert!(elapsed < PROMPTLY, "woke after {elapsed:?}");

    // Work already waiting: it returns at once. A worker that found its queues empty and
    // then waits must not sleep through a message enqueued in between.
    let started = Instant::now();
    broker
        .wait_for_work(&queues(&["other", "default"]), Duration::from_secs(30))
        .await
        .expect("wait_for_work");
    assert!(
        started.elapsed() < PROMPTLY,
        "waited {:?} with a message ready",
        started.elapsed()
    );

    // With nothing coming, it returns by its timeout (spurious returns are allowed earlier).
    let started = Instant::now();
    broker
        .wait_for_work(&queues(&["silent"]), Duration::from_millis(200))
        .await
        .expect("wait_for_work");
    assert!(started.elapsed() < PROMPTLY);
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

/// Four workers race for forty messages: every message is leased to exactly one of them, and
/// each task commits exactly one result.
async fn concurrent_workers_never_share_a_message(broker: impl Broker) {
    const TASKS: usize = 40;
    let broker = Arc::new(broker);
    let all: Vec<String> = (0..TASKS).map(|n| format!("t{n:02}")).collect();
    enqueue(&*broker, all.iter().map(|id| message(id)), T0).await;

    let workers: Vec<_> = (0..4)
        .map(|n| {
            let broker = Arc::clone(&broker);
            tokio::spawn(async move {
                let worker = format!("worker-{n}");
                let mut mine = Vec::new();
                loop {
                    let leased = broker
                        .reserve(&worker, &queues(&["default"]), 3, LEASE_MS, T0 + 1)
                        .await
                        .expect("reserve");
                    if leased.is_empty() {
                        return mine;
                    }
                    for delivery in leased {
                        finish(&*broker, &delivery, "0", T0 + 2).await;
                        mine.push(delivery.id);
                    }
                }
            })
        })
        .collect();
    let mut delivered = Vec::new();
    for worker in workers {
        delivered.extend(
            within(PROMPTLY * 5, "a worker", worker)
                .await
                .expect("worker"),
        );
    }
    delivered.sort();
    assert_eq!(delivered, all, "each message delivered exactly once");
    for id in &all {
        assert_eq!(record(&*broker, id).await.attempts.len(), 1, "{id}");
    }
}

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

async fn the_registry_keeps_every_version_newest_first(broker: impl Broker) {
    let v1 = upload("math", 'a', b"math v1", T0);
    let first = broker.put_component(v1.clone()).await.expect("put");
    assert_eq!(first, component_record("math", [&v1]));

    // Deploying the current digest again changes nothing, not even the deploy time.
    let redeploy = Upload {
        version: Version {
            deployed_ms: T0 + 1_000,
            ..v1.version.clone()
        },
        ..v1.clone()
    };
    assert_eq!(broker.put_component(redeploy).await.expect("put"), first);

    let v2 = upload("math", 'b', b"math v2", T0 + 2_000);
    let second = broker.put_component(v2.clone()).await.expect("put");
    assert_eq!(second, component_record("math", [&v2, &v1]));
    assert_eq!(
        second.current().map(|version| version.digest.as_str()),
        Some(v2.version.digest.as_str())
    );
    assert_eq!(
        broker.component("math").await.expect("component"),
        Some(second.clone())
    );

    for (digest, bytes) in [
        (&v1.version.digest, &v1.compressed),
        (&v2.version.digest, &v2.compressed),
    ] {
        assert_eq!(
            broker.blob(digest).await.expect("blob").as_ref(),
            Some(bytes)
        );
    }
    assert_eq!(broker.blob(&"c".repeat(64)).await.expect("blob"), None);
    assert_eq!(broker.component("nope").await.expect("component"), None);

    for name in ["zeta", "alpha"] {
        broker
            .put_component(upload(name, 'd', b"shared bytes", T0 + 3_000))
            .await
            .expect("put");
    }
    let names: Vec<String> = broker
        .components()
        .await
        .expect("components")
        .into_iter()
        .map(|component| component.name)
        .collect();
    assert_eq!(names, ["alpha", "math", "zeta"]);
    assert_eq!(
        broker.blob(&"d".repeat(64)).await.expect("blob"),
        Some(b"shared bytes".to_vec())
    );
}

// ---------------------------------------------------------------------------------------------
// Expiry (real time: Redis expires records with PEXPIRE)
// ---------------------------------------------------------------------------------------------

async fn finished_records_expire_and_waiting_ones_do_not(broker: impl Broker) {
    const EXPIRES_MS: u64 = 500;
    let now = wtq_client::message::now_ms;
    let short_lived = |id: &str| TaskMessage {
        result_expires_ms: EXPIRES_MS,
        created_ms: now(),
        ..message(id)
    };
    enqueue(
        &broker,
        [short_lived("finished"), short_lived("waiting")],
        now(),
    )
    .await;
    let delivery = one(reserve(&broker, &["default"], 1, now()).await);
    assert_eq!(delivery.id, "finished");
    finish(&broker, &delivery, "1", now()).await;
    let finished_at = Instant::now();
    assert!(broker.record("finished").await.expect("record").is_some());

    // Poll with a bound: expiry is the broker's (Redis's) business, in real time.
    let deadline = finished_at + Duration::from_secs(5);
    loop {
        // A call that carries `now`, for a broker that expires lazily by the caller's clock.
        reap(&broker, now()).await;
        if broker.record("finished").await.expect("record").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a record with result_expires_ms {EXPIRES_MS} still exists after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        finished_at.elapsed() >= Duration::from_millis(EXPIRES_MS) - Duration::from_millis(50),
        "expired after {:?}, before its {EXPIRES_MS} ms",
        finished_at.elapsed()
    );

    // A task that has not finished keeps its record however long it waits.
    assert_eq!(record(&broker, "waiting").await.state, State::Pending);
    let delivery = one(reserve(&broker, &["default"], 1, now()).await);
    assert_eq!(delivery.id, "waiting");
}

// ---------------------------------------------------------------------------------------------
// Redis only
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Tenancy: namespaces, tenants and tokens, quotas, usage, events
// ---------------------------------------------------------------------------------------------

/// Two namespaces of one broker share nothing but the tenant registry; two handles on one
/// namespace share everything.
async fn namespaces_are_isolated(broker: impl Broker + Tenancy) {
    let blue = broker.namespaced("blue").expect("namespace blue");
    let again = broker.namespaced("blue").expect("namespace blue again");
    let green = broker.namespaced("green").expect("namespace green");
    for bad in ["", "a:b", "{x}", "a b", &"n".repeat(65)] {
        assert!(broker.namespaced(bad).is_err(), "namespace {bad:?}");
    }

    let mut now = T0;
    dead_letter_by_crashes(&blue, "poison", &mut now).await;
    enqueue(&blue, [message("a"), message("b")], now).await;
    blue.put_component(upload("math", '1', b"wasm", now))
        .await
        .expect("deploy");

    assert_eq!(record(&again, "a").await.state, State::Pending);
    assert_eq!(depth(&again, "default").await, 2);
    assert_eq!(again.components().await.expect("components").len(), 1);
    assert_eq!(dead_ids(&again, 10).await, ["poison"]);

    for other in [&green, &broker] {
        assert_eq!(other.record("a").await.expect("record"), None);
        assert_eq!(depth(other, "default").await, 0);
        assert!(reserve(other, &["default"], 10, now).await.is_empty());
        assert_eq!(other.components().await.expect("components"), []);
        assert_eq!(other.component("math").await.expect("component"), None);
        assert!(dead_ids(other, 10).await.is_empty());
        assert_eq!(other.retry_dead(None, now).await.expect("retry dead"), 0);
        assert_eq!(other.purge("default", now).await.expect("purge"), 0);
        assert_eq!(
            other.revoke("a", false, now).await.expect("revoke"),
            Revoked::Unknown
        );
    }
    // The same id is free in another namespace.
    enqueue(&green, [message("a")], now).await;

    // Waiting and terminations are per namespace too, over the shared connections.
    let mut blue_terminations = blue.terminations().await.expect("terminations");
    let mut green_terminations = green.terminations().await.expect("terminations");
    let a = one(reserve(&again, &["default"], 1, now).await);
    assert_eq!(a.id, "a");
    let waiter = tokio::spawn({
        let blue = blue.namespaced("blue").expect("namespace blue");
        async move { blue.wait("a", PROMPTLY * 5).await }
    });
    assert_eq!(
        blue.revoke("a", true, now).await.expect("revoke"),
        Revoked::Running { terminating: true }
    );
    let id = within(PROMPTLY, "the termination", blue_terminations.recv()).await;
    assert_eq!(id.as_deref(), Some("a"));
    assert!(!green.terminating("a").await.expect("terminating"));
    finish(&blue, &a, "3", now + 1).await;
    let done = within(PROMPTLY * 2, "the waiter", waiter)
        .await
        .expect("waiter task")
        .expect("wait");
    assert_eq!(done.map(|record| record.state), Some(State::Success));
    assert_eq!(record(&green, "a").await.state, State::Pending);
    assert!(
        green_terminations.try_recv().is_err(),
        "green heard blue's terminate"
    );
}

fn tenant(name: &str, concurrency: Option<u32>) -> Tenant {
    Tenant {
        name: name.into(),
        created_ms: T0,
        quotas: Quotas {
            concurrency,
            rate: Some(Rate {
                count: 100,
                per_ms: 1_000,
            }),
            max_time_ms: Some(5_000),
            ..Quotas::default()
        },
    }
}

fn token(id: &str, tenant: Option<&str>) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        tenant: tenant.map(String::from),
        created_ms: T0,
    }
}

/// The registry is global: every namespace's broker sees the same tenants and tokens.
async fn tenants_and_tokens_round_trip_and_tokens_revoke(broker: impl Broker + Tenancy) {
    let elsewhere = broker.namespaced("elsewhere").expect("namespace");
    assert_eq!(broker.tenants().await.expect("tenants"), []);
    assert_eq!(broker.tenant("acme").await.expect("tenant"), None);
    broker
        .put_tenant(&tenant("zeta", None))
        .await
        .expect("put zeta");
    broker
        .put_tenant(&tenant("acme", Some(4)))
        .await
        .expect("put acme");
    assert_eq!(
        elsewhere.tenant("acme").await.expect("tenant"),
        Some(tenant("acme", Some(4)))
    );
    let replaced = Tenant {
        quotas: Quotas::default(),
        ..tenant("acme", None)
    };
    elsewhere.put_tenant(&replaced).await.expect("replace acme");
    assert_eq!(
        broker.tenants().await.expect("tenants"),
        [replaced, tenant("zeta", None)]
    );

    assert_eq!(broker.tokens().await.expect("tokens"), []);
    let hash = |n: u8| format!("{n:02x}").repeat(32);
    broker
        .put_token(&hash(2), &token("tok_b", Some("acme")))
        .await
        .expect("put token");
    broker
        .put_token(&hash(1), &token("tok_a", None))
        .await
        .expect("put admin token");
    assert_eq!(
        elsewhere.token(&hash(2)).await.expect("token"),
        Some(token("tok_b", Some("acme")))
    );
    assert_eq!(broker.token(&hash(3)).await.expect("token"), None);
    assert_eq!(
        broker.tokens().await.expect("tokens"),
        [token("tok_a", None), token("tok_b", Some("acme"))]
    );
    assert!(elsewhere.revoke_token("tok_b").await.expect("revoke"));
    assert!(!broker.revoke_token("tok_b").await.expect("revoke again"));
    assert!(
        !broker
            .revoke_token("tok_zzz")
            .await
            .expect("revoke unknown")
    );
    assert_eq!(broker.token(&hash(2)).await.expect("token"), None);
    assert_eq!(
        broker.tokens().await.expect("tokens"),
        [token("tok_a", None)]
    );
}

/// A tenant capped at 2 never has more than 2 tasks leased, however many workers ask and
/// however much is queued; the cap frees as tasks settle, and can be changed or lifted.
async fn a_concurrency_cap_holds_across_workers(broker: impl Broker + Tenancy) {
    broker
        .put_tenant(&tenant("acme", Some(2)))
        .await
        .expect("put tenant");
    let acme = broker
        .namespaced(&namespace_of("acme"))
        .expect("acme's namespace");
    let other = broker.namespaced("uncapped").expect("namespace");
    let ids: Vec<String> = (0..6).map(|n| format!("t{n}")).collect();
    enqueue(&acme, ids.iter().map(|id| message(id)), T0).await;
    enqueue(&other, ids.iter().map(|id| message(id)), T0).await;

    let take = |worker: &'static str, max: usize, now: u64| {
        let acme = &acme;
        async move {
            acme.reserve(worker, &queues(&["default"]), max, LEASE_MS, now)
                .await
                .expect("reserve")
        }
    };
    let first = take("worker-1", 10, T0).await;
    assert_eq!(ids_of(&first), ["t0", "t1"]);
    assert!(take("worker-2", 10, T0).await.is_empty(), "over the cap");
    assert!(take("worker-1", 1, T0).await.is_empty(), "over the cap");
    // Another namespace is not capped by acme's quota.
    assert_eq!(reserve(&other, &["default"], 10, T0).await.len(), 6);

    finish(&acme, &first[0], "ok", T0 + 1).await;
    let second = take("worker-2", 10, T0 + 1).await;
    assert_eq!(ids_of(&second), ["t2"], "one slot freed");
    assert!(take("worker-1", 10, T0 + 1).await.is_empty());

    // A released or retried lease frees its slot too.
    assert_eq!(
        settle(&acme, &second[0], Settlement::Release, T0 + 2).await,
        Settled::Committed
    );
    assert_eq!(ids_of(&take("worker-1", 10, T0 + 2).await), ["t2"]);

    // Raising the cap lets more through at once; lifting it, everything.
    broker
        .put_tenant(&tenant("acme", Some(3)))
        .await
        .expect("raise cap");
    assert_eq!(ids_of(&take("worker-2", 10, T0 + 3).await), ["t3"]);
    assert!(take("worker-2", 10, T0 + 3).await.is_empty());
    broker
        .put_tenant(&tenant("acme", None))
        .await
        .expect("lift cap");
    assert_eq!(ids_of(&take("worker-2", 10, T0 + 4).await), ["t4", "t5"]);
}

fn ids_of(deliveries: &[Delivery]) -> Vec<&str> {
    ids(deliveries)
}

/// GCRA at 3 a minute: a burst of 3, then one every 20 s; a refusal takes nothing and says
/// when to come back. (A minute, not a second: Redis expires an idle bucket in real time, and
/// a story must not depend on how fast it runs.)
async fn the_rate_limiter_allows_a_burst_then_paces(broker: impl Broker + Tenancy) {
    let rate = Rate {
        count: 3,
        per_ms: 60_000,
    };
    let take = |n: u32, now: u64| {
        let broker = &broker;
        async move {
            broker
                .take_rate("enqueue", rate, n, now)
                .await
                .expect("take_rate")
        }
    };
    for i in 0..3 {
        assert_eq!(take(1, T0 + i).await, RateDecision::Allowed, "#{i}");
    }
    // The 3 were taken at T0..T0+2, one every 20 s: the next fits at T0 + 20 s.
    let limited = take(1, T0 + 10_000).await;
    assert_eq!(
        limited,
        RateDecision::Limited {
            retry_after_ms: 10_000
        }
    );
    assert_eq!(
        take(1, T0 + 19_999).await,
        RateDecision::Limited { retry_after_ms: 1 }
    );
    assert_eq!(take(1, T0 + 20_000).await, RateDecision::Allowed);
    assert!(matches!(
        take(1, T0 + 20_000).await,
        RateDecision::Limited { .. }
    ));
    // More than is free is refused whole, and takes nothing: 2 need 40 s more.
    assert_eq!(
        take(2, T0 + 40_000).await,
        RateDecision::Limited {
            retry_after_ms: 20_000
        }
    );
    assert_eq!(take(1, T0 + 40_000).await, RateDecision::Allowed);
    // Buckets are per name and per namespace.
    assert_eq!(
        broker
            .take_rate("deploy", rate, 3, T0 + 40_000)
            .await
            .expect("take_rate"),
        RateDecision::Allowed
    );
    let elsewhere = broker.namespaced("elsewhere").expect("namespace");
    assert_eq!(
        elsewhere
            .take_rate("enqueue", rate, 3, T0 + 40_000)
            .await
            .expect("take_rate"),
        RateDecision::Allowed
    );
    // Idle for a period: a full burst again, and no more.
    let later = T0 + 200_000;
    assert_eq!(take(3, later).await, RateDecision::Allowed);
    assert!(matches!(take(1, later).await, RateDecision::Limited { .. }));
}

// ---------------------------------------------------------------------------------------------
// Per-task rate limits (set at run time, enforced by reserve for every worker)
// ---------------------------------------------------------------------------------------------

/// 30 a minute: one slot every 2 s, booked up to 2 s ahead (one interval). Minutes, not
/// seconds, for the reason given at the rate limiter's story: Redis expires buckets in real
/// time.
const THIRTY_A_MINUTE: Rate = Rate {
    count: 30,
    per_ms: 60_000,
};

fn call_of(id: &str, task: &str) -> TaskMessage {
    TaskMessage {
        task: task.into(),
        ..message(id)
    }
}

async fn limit(broker: &impl Broker, task: &str, rate: Option<Rate>) {
    broker
        .set_rate_limit(task, rate)
        .await
        .expect("set_rate_limit");
}

async fn reserve_as(broker: &impl Broker, worker: &str, max: usize, now: u64) -> Vec<Delivery> {
    broker
        .reserve(worker, &queues(&["default"]), max, LEASE_MS, now)
        .await
        .expect("reserve")
}

/// Three workers reserving over and over: `math.add` is leased once per 2 s slot, in enqueue
/// order, whoever asks; the next slot is booked (the message waits for it in the delayed set,
/// then runs without taking another), and the rest take no slot until theirs is near.
async fn a_task_rate_limit_spaces_leases_across_workers(broker: impl Broker) {
    limit(&broker, "math.add", Some(THIRTY_A_MINUTE)).await;
    let ids: Vec<String> = (0..6).map(|n| format!("t{n}")).collect();
    enqueue(&broker, ids.iter().map(|id| message(id)), T0).await;
    let workers = ["worker-1", "worker-2", "worker-3"];
    let mut leased = Vec::new();
    // Every 500 ms for 12 s, each worker asks for up to 10.
    for step in 0..=24u64 {
        let now = T0 + step * 500;
        for worker in workers {
            for delivery in reserve_as(&broker, worker, 10, now).await {
                leased.push((delivery.id.clone(), now));
            }
        }
    }
    let expected: Vec<(String, u64)> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.clone(), T0 + 2000 * n as u64))
        .collect();
    assert_eq!(leased, expected, "one lease per 2 s slot, in order");
    // Each delivery is the first of its attempt: waiting for a slot is not a delivery.
    for id in &ids {
        let record = broker.record(id).await.expect("record").expect("exists");
        assert_eq!(
            (record.state, record.deliveries),
            (State::Received, 1),
            "{id}"
        );
    }
}

/// A limit on another task changes nothing for this one: all at once, in order.
async fn without_a_task_rate_limit_nothing_changes(broker: impl Broker) {
    let ids: Vec<String> = (0..5).map(|n| format!("t{n}")).collect();
    enqueue(&broker, ids.iter().map(|id| message(id)), T0).await;
    assert_eq!(reserve(&broker, &["default"], 10, T0).await.len(), 5);
    limit(&broker, "math.mul", Some(THIRTY_A_MINUTE)).await;
    enqueue(&broker, ids.iter().map(|id| message(&format!("{id}b"))), T0).await;
    let got = reserve(&broker, &["default"], 3, T0).await;
    assert_eq!(ids_of(&got), ["t0b", "t1b", "t2b"]);
    assert_eq!(reserve(&broker, &["default"], 10, T0).await.len(), 2);
}

/// 150 limited messages ahead of two others in one queue: a reserve examines at most `max` +
/// 100, and those waiting for a slot leave the ready set, so the others are reached within a
/// few calls. A pinned call (`math@<digest>.add`) counts against the same limit.
async fn other_tasks_are_not_held_back_by_a_limited_backlog(broker: impl Broker) {
    limit(&broker, "math.add", Some(THIRTY_A_MINUTE)).await;
    let mut messages: Vec<TaskMessage> = (0..150).map(|n| message(&format!("a{n}"))).collect();
    messages.push(TaskMessage {
        digest: Some("ab".repeat(32)),
        ..message("pinned")
    });
    messages.push(call_of("m0", "mul"));
    messages.push(call_of("m1", "mul"));
    enqueue(&broker, messages, T0).await;
    let first = reserve(&broker, &["default"], 1, T0).await;
    assert_eq!(ids_of(&first), ["a0"]);
    // a1 is booked, a2..a105 deferred: 105 examined, nothing leased.
    assert!(reserve(&broker, &["default"], 5, T0).await.is_empty());
    let third = reserve(&broker, &["default"], 5, T0).await;
    assert_eq!(
        ids_of(&third),
        ["m0", "m1"],
        "the pinned add waits for a slot"
    );
    assert_eq!(broker.depth("default").await.expect("depth"), 0);
    assert!(
        reserve(&broker, &["default"], 5, T0 + 1999)
            .await
            .is_empty()
    );
    assert_eq!(
        ids_of(&reserve(&broker, &["default"], 5, T0 + 2000).await),
        ["a1"]
    );
}

/// Removing a limit: new calls run at once, and so do the deferred ones, back in their places
/// ahead of them; messages already booked keep their slot.
async fn removing_a_task_rate_limit_frees_its_backlog(broker: impl Broker) {
    limit(&broker, "math.add", Some(THIRTY_A_MINUTE)).await;
    enqueue(&broker, ["a", "b", "c", "d"].map(message), T0).await;
    assert_eq!(ids_of(&reserve(&broker, &["default"], 10, T0).await), ["a"]);
    // b is booked for T0 + 2 s, c deferred to then, d to T0 + 4 s.
    limit(&broker, "math.add", None).await;
    enqueue(&broker, [message("e"), message("f")], T0 + 1).await;
    assert_eq!(
        ids_of(&reserve(&broker, &["default"], 10, T0 + 1).await),
        ["c", "d", "e", "f"]
    );
    assert!(
        reserve(&broker, &["default"], 10, T0 + 1999)
            .await
            .is_empty()
    );
    assert_eq!(
        ids_of(&reserve(&broker, &["default"], 10, T0 + 2000).await),
        ["b"]
    );
    assert!(
        broker
            .task_policies()
            .await
            .expect("task_policies")
            .is_empty()
    );
}

/// A booked message that is revoked never runs, and its slot goes unused: the next message
/// still waits for the slot after it. Purging a queue empties booked and deferred ones alike.
async fn a_revoked_booked_message_leaves_its_slot_unused(broker: impl Broker) {
    limit(&broker, "math.add", Some(THIRTY_A_MINUTE)).await;
    enqueue(&broker, ["a", "b", "c", "d"].map(message), T0).await;
    assert_eq!(ids_of(&reserve(&broker, &["default"], 10, T0).await), ["a"]);
    let revoked = broker.revoke("b", false, T0 + 1).await.expect("revoke");
    assert_eq!(revoked, Revoked::Revoked);
    assert!(
        reserve(&broker, &["default"], 10, T0 + 2000)
            .await
            .is_empty()
    );
    assert_eq!(
        ids_of(&reserve(&broker, &["default"], 10, T0 + 4000).await),
        ["c"]
    );
    let record = broker.record("b").await.expect("record").expect("exists");
    assert_eq!((record.state, record.deliveries), (State::Revoked, 0));
    // d is booked for T0 + 6 s: a purge finds it.
    assert_eq!(broker.purge("default", T0 + 4001).await.expect("purge"), 1);
    assert!(
        reserve(&broker, &["default"], 10, T0 + 10_000)
            .await
            .is_empty()
    );
}

/// A retry and a redelivery after a lost lease run again, so each takes a slot of its own.
async fn a_retry_and_a_redelivery_take_a_slot_each(broker: impl Broker) {
    limit(&broker, "math.add", Some(THIRTY_A_MINUTE)).await;
    enqueue(&broker, ["a", "b"].map(message), T0).await;
    let a = one(reserve(&broker, &["default"], 10, T0).await);
    // a retries at once: its slot is booked after b's (T0 + 2 s), at T0 + 4 s.
    let retry = Settlement::Retry {
        attempt: Attempt {
            state: State::Retry,
            ..failed(&a, "again", T0 + 10)
        },
        eta_ms: T0 + 10,
    };
    assert_eq!(
        settle(&broker, &a, retry, T0 + 10).await,
        Settled::Committed
    );
    let b = one(reserve(&broker, &["default"], 10, T0 + 2000).await);
    assert_eq!(b.id, "b");
    finish(&broker, &b, "3", T0 + 2001).await;
    assert!(
        reserve(&broker, &["default"], 10, T0 + 3999)
            .await
            .is_empty()
    );
    let again = one(reserve(&broker, &["default"], 10, T0 + 4000).await);
    assert_eq!((again.id.as_str(), again.attempt), ("a", 2));
    // Its lease is lost (the worker died): the redelivery, long after, takes the free slot at
    // once, so the next call waits one interval.
    let expired = T0 + 4000 + LEASE_MS + 1;
    assert_eq!(broker.reap(expired, 10).await.expect("reap"), 1);
    let redelivered = one(reserve(&broker, &["default"], 10, expired).await);
    assert_eq!((redelivered.id.as_str(), redelivered.deliveries), ("a", 2));
    enqueue(&broker, [message("c")], expired).await;
    assert!(reserve(&broker, &["default"], 10, expired).await.is_empty());
    assert_eq!(
        ids_of(&reserve(&broker, &["default"], 10, expired + 2000).await),
        ["c"]
    );
}

/// Ten a second: one slot every 100 ms, booked up to 1 s ahead.
const TEN_A_SECOND: Rate = Rate {
    count: 10,
    per_ms: 1000,
};

/// One a minute: one slot every 60 s, booked up to 60 s ahead.
const ONE_A_MINUTE: Rate = Rate {
    count: 1,
    per_ms: 60_000,
};

/// A worker's loop on `default` from `*now` until `until`: it asks for up to 10 at a time and,
/// after two empty calls in a row, waits 100 ms. Returns every lease with its time.
async fn work_until(broker: &impl Broker, now: &mut u64, until: u64) -> Vec<(String, u64)> {
    let mut leased = Vec::new();
    let mut empty = 0;
    while *now < until {
        let got = reserve(broker, &["default"], 10, *now).await;
        if got.is_empty() {
            empty += 1;
            if empty == 2 {
                empty = 0;
                *now += 100;
            }
        } else {
            empty = 0;
            leased.extend(got.into_iter().map(|delivery| (delivery.id, *now)));
        }
    }
    leased
}

fn leased_at(leased: &[(String, u64)], id: &str) -> Option<u64> {
    leased.iter().find(|(got, _)| got == id).map(|(_, at)| *at)
}

/// 20,000 `math.add` at 10 a second, then a `math.mul` on the same queue: the backlog is
/// deferred a batch per call, each message about when its slot could be booked (spread over
/// the ~33 minutes it needs), so the `mul` is reached once the backlog has been looked at once
/// (a few simulated seconds), one arriving later at once, and `add` runs at its rate meanwhile.
async fn a_huge_limited_backlog_holds_back_no_other_task(broker: impl Broker) {
    limit(&broker, "math.add", Some(TEN_A_SECOND)).await;
    let messages: Vec<TaskMessage> = (0..20_000).map(|n| message(&format!("a{n}"))).collect();
    enqueue(&broker, messages, T0).await;
    enqueue(&broker, [call_of("m1", "mul")], T0).await;
    let mut now = T0;
    let mut leased = work_until(&broker, &mut now, T0 + 20_000).await;
    let m1 = leased_at(&leased, "m1").expect("m1 is leased within 20 s");
    assert!(m1 <= T0 + 12_000, "m1 leased at T0 + {} ms", m1 - T0);
    enqueue(&broker, [call_of("m2", "mul")], now).await;
    let enqueued = now;
    leased.extend(work_until(&broker, &mut now, T0 + 40_000).await);
    let m2 = leased_at(&leased, "m2").expect("m2 is leased");
    assert!(m2 <= enqueued + 2000, "m2 waited {} ms", m2 - enqueued);
    let in_window = leased
        .iter()
        .filter(|(id, at)| id.starts_with('a') && (T0 + 10_000..T0 + 40_000).contains(at))
        .count();
    assert!(
        (270..=330).contains(&in_window),
        "{in_window} leases of add in 30 s at 10/s"
    );
}

/// 300 `math.add` at one a minute: once the backlog has been deferred, each message is looked
/// at again about when its slot can be booked, not all of them every minute: after each
/// reserve the ready set is empty, and one runs a minute.
async fn a_slow_tasks_backlog_is_not_examined_again_and_again(broker: impl Broker) {
    limit(&broker, "math.add", Some(ONE_A_MINUTE)).await;
    let messages: Vec<TaskMessage> = (0..300).map(|n| message(&format!("a{n}"))).collect();
    enqueue(&broker, messages, T0).await;
    let mut leased = Vec::new();
    for step in 0..=300u64 {
        let now = T0 + step * 1000;
        for _ in 0..3 {
            let got = reserve(&broker, &["default"], 10, now).await;
            leased.extend(got.into_iter().map(|delivery| delivery.id));
            if step > 0 {
                assert_eq!(depth(&broker, "default").await, 0, "at T0 + {step} s");
            }
        }
    }
    let expected: Vec<String> = (0..6).map(|n| format!("a{n}")).collect();
    assert_eq!(leased, expected);
}

/// A slow limit defers a backlog far ahead; raising it brings the backlog back at once, to run
/// at the new pace. The booked message keeps its slot; a revoked deferred one stays revoked.
async fn raising_a_task_rate_limit_brings_its_deferred_backlog_back(broker: impl Broker) {
    limit(&broker, "math.add", Some(ONE_A_MINUTE)).await;
    let ids: Vec<String> = (0..50).map(|n| format!("a{n}")).collect();
    enqueue(&broker, ids.iter().map(|id| message(id)), T0).await;
    assert_eq!(
        ids_of(&reserve(&broker, &["default"], 10, T0).await),
        ["a0"]
    );
    // a1 is booked for T0 + 60 s, the others deferred, up to ~47 minutes ahead.
    let revoked = broker.revoke("a7", false, T0 + 1).await.expect("revoke");
    assert_eq!(revoked, Revoked::Revoked);
    assert!(
        reserve(&broker, &["default"], 10, T0 + 1000)
            .await
            .is_empty()
    );
    limit(&broker, "math.add", Some(TEN_A_SECOND)).await;
    let mut now = T0 + 1000;
    let leased = work_until(&broker, &mut now, T0 + 61_000).await;
    let got: Vec<&str> = leased.iter().map(|(id, _)| id.as_str()).collect();
    let mut expected: Vec<&str> = ids[2..].iter().map(String::as_str).collect();
    expected.retain(|id| *id != "a7");
    expected.push("a1");
    assert_eq!(got, expected);
    // 47 at ten a second from T0 + 1 s: the last at T0 + 5.6 s; a1 at its booked slot.
    assert_eq!(leased[0].1, T0 + 1000);
    assert_eq!(leased[46].1, T0 + 5600);
    assert_eq!(leased[47].1, T0 + 60_000);
    let record = broker.record("a7").await.expect("record").expect("exists");
    assert_eq!((record.state, record.deliveries), (State::Revoked, 0));
}

/// Removing a slow limit: every deferred message (here more than one call of the broker moves
/// back at a time) is ready again at once; the booked one keeps its slot.
async fn removing_a_task_rate_limit_frees_a_far_deferred_backlog_at_once(broker: impl Broker) {
    const N: usize = 10_050;
    limit(&broker, "math.add", Some(ONE_A_MINUTE)).await;
    let messages: Vec<TaskMessage> = (0..N).map(|n| message(&format!("a{n}"))).collect();
    enqueue(&broker, messages, T0).await;
    assert_eq!(
        ids_of(&reserve(&broker, &["default"], 10, T0).await),
        ["a0"]
    );
    while depth(&broker, "default").await > 0 {
        assert!(reserve(&broker, &["default"], 10, T0).await.is_empty());
    }
    limit(&broker, "math.add", None).await;
    assert_eq!(depth(&broker, "default").await, N - 2);
    let got = reserve(&broker, &["default"], 1000, T0 + 1).await;
    assert_eq!(got.len(), 1000);
    assert_eq!(got[0].id, "a2", "back in their places");
    assert!(
        reserve(&broker, &["default"], 1000, T0 + 59_999)
            .await
            .iter()
            .all(|delivery| delivery.id != "a1")
    );
}

/// What is set is read back per task, rate and time limits merged; `None` removes each.
async fn task_policies_round_trip(broker: impl Broker) {
    limit(&broker, "math.add", Some(THIRTY_A_MINUTE)).await;
    broker
        .set_time_limit("math.add", Some(90_000))
        .await
        .expect("set_time_limit");
    broker
        .set_time_limit("text.upper", Some(1500))
        .await
        .expect("set_time_limit");
    let policies = broker.task_policies().await.expect("task_policies");
    let expected = std::collections::BTreeMap::from([
        (
            "math.add".to_string(),
            TaskPolicy {
                rate_limit: Some(THIRTY_A_MINUTE),
                time_limit_ms: Some(90_000),
            },
        ),
        (
            "text.upper".to_string(),
            TaskPolicy {
                rate_limit: None,
                time_limit_ms: Some(1500),
            },
        ),
    ]);
    assert_eq!(policies, expected);
    limit(&broker, "math.add", None).await;
    broker
        .set_time_limit("math.add", None)
        .await
        .expect("set_time_limit");
    let policies = broker.task_policies().await.expect("task_policies");
    assert_eq!(policies.keys().collect::<Vec<_>>(), ["text.upper"]);
}

/// An attempt that reports fuel, CPU time and memory × time.
fn metered(delivery: &Delivery, state: State, now: u64) -> Attempt {
    Attempt {
        state,
        duration_ms: Some(10.0),
        cpu_ms: Some(2.5),
        fuel: Some(1_000),
        peak_memory: Some(2 << 20),
        ..succeeded(delivery, "1", now)
    }
}

/// Usage counts each committed settlement once, in the same step; stale settlements and
/// releases count nothing.
async fn usage_counts_exactly_the_committed_settlements(broker: impl Broker + Tenancy) {
    let acme = broker.namespaced("acme").expect("namespace");
    assert_eq!(acme.usage().await.expect("usage"), Usage::default());
    enqueue(&acme, [message("a"), message("b"), message("c")], T0).await;
    let [a, b, c] = <[Delivery; 3]>::try_from(reserve(&acme, &["default"], 3, T0).await)
        .expect("three deliveries");

    let settles = vec![
        Settle {
            lease: lease(&a),
            settlement: Settlement::Finish(metered(&a, State::Success, T0 + 1)),
        },
        Settle {
            lease: lease(&b),
            settlement: Settlement::Retry {
                attempt: metered(&b, State::Retry, T0 + 1),
                eta_ms: T0 + 1,
            },
        },
        Settle {
            lease: lease(&c),
            settlement: Settlement::Release,
        },
        // Stale: `a` was just settled.
        Settle {
            lease: lease(&a),
            settlement: Settlement::Finish(metered(&a, State::Success, T0 + 1)),
        },
    ];
    let settled = acme.settle(settles, T0 + 1).await.expect("settle");
    assert_eq!(
        settled,
        [
            Settled::Committed,
            Settled::Committed,
            Settled::Committed,
            Settled::Stale
        ]
    );
    // 2 attempts ran: 2 × (1000 fuel, 2500 µs CPU, 2048 KiB × 10 ms); 1 task is final.
    let after_first = Usage {
        tasks: 1,
        attempts: 2,
        fuel: 2_000,
        cpu_us: 5_000,
        memory_kib_ms: 40_960,
    };
    assert_eq!(acme.usage().await.expect("usage"), after_first);

    let again = reserve(&acme, &["default"], 3, T0 + 2).await;
    let (b2, c2) = match again.as_slice() {
        [first, second] if first.id == "b" => (first.clone(), second.clone()),
        [first, second] => (second.clone(), first.clone()),
        other => panic!("expected b and c again, got {:?}", ids(other)),
    };
    let late = settle(
        &acme,
        &b,
        Settlement::Finish(metered(&b, State::Success, T0 + 3)),
        T0 + 3,
    )
    .await;
    assert_eq!(late, Settled::Stale, "b's first lease ended with its retry");
    assert_eq!(acme.usage().await.expect("usage"), after_first);

    let failed = Attempt {
        fuel: Some(5),
        cpu_ms: None,
        peak_memory: None,
        ..failed(&b2, "boom", T0 + 3)
    };
    assert_eq!(
        settle(&acme, &b2, Settlement::Finish(failed), T0 + 3).await,
        Settled::Committed
    );
    let dead = Settlement::DeadLetter(failure("unknown_component", "no such component"));
    assert_eq!(settle(&acme, &c2, dead, T0 + 3).await, Settled::Committed);
    assert_eq!(
        acme.usage().await.expect("usage"),
        Usage {
            tasks: 3,
            attempts: 3,
            fuel: 2_005,
            ..after_first
        }
    );
    assert_eq!(broker.usage().await.expect("usage"), Usage::default());
}

/// Receives the next event, promptly.
async fn next_full_event(events: &mut tokio::sync::mpsc::Receiver<Event>) -> Event {
    within(PROMPTLY, "the next event", events.recv())
        .await
        .expect("the events channel closed")
}

/// Receives the next task event, promptly: its task, state and time.
async fn next_event(events: &mut tokio::sync::mpsc::Receiver<Event>) -> (String, State, u64) {
    let event = next_full_event(events).await;
    (
        event.id.expect("a task event"),
        event.state.expect("a task event's state"),
        event.at_ms,
    )
}

/// Every state change is an event, in order, with the time of the call that made it; other
/// namespaces' changes are not.
async fn events_follow_a_tasks_lifecycle_in_order(broker: impl Broker + Tenancy) {
    let acme = broker.namespaced("acme").expect("namespace");
    let other = broker.namespaced("other").expect("namespace");
    let mut events = acme.events(None).await.expect("events");
    let mut now = T0;
    let expect = |id: &str, state: State, at: u64| (id.to_string(), state, at);

    enqueue(&other, [message("elsewhere")], now).await;
    enqueue(&acme, [message("a"), message("b")], now).await;
    assert_eq!(
        next_event(&mut events).await,
        expect("a", State::Pending, now)
    );
    assert_eq!(
        next_event(&mut events).await,
        expect("b", State::Pending, now)
    );

    now += 1;
    let first = one(reserve(&acme, &["default"], 1, now).await);
    assert_eq!(
        next_event(&mut events).await,
        expect("a", State::Received, now)
    );
    mark(&acme, &first, State::Started, None, now + 1).await;
    mark(
        &acme,
        &first,
        State::Progress,
        Some(progress(1, 2)),
        now + 2,
    )
    .await;
    assert_eq!(
        next_event(&mut events).await,
        expect("a", State::Started, now + 1)
    );
    assert_eq!(
        next_event(&mut events).await,
        expect("a", State::Progress, now + 2)
    );

    now += 10;
    let retry = Settlement::Retry {
        attempt: failed(&first, "again", now),
        eta_ms: now,
    };
    assert_eq!(settle(&acme, &first, retry, now).await, Settled::Committed);
    assert_eq!(
        next_event(&mut events).await,
        expect("a", State::Retry, now)
    );

    now += 1;
    let second = one(reserve(&acme, &["default"], 1, now).await);
    assert_eq!(second.id, "a");
    assert_eq!(
        next_event(&mut events).await,
        expect("a", State::Received, now)
    );
    assert_eq!(
        acme.revoke("b", false, now).await.expect("revoke"),
        Revoked::Revoked
    );
    assert_eq!(
        next_event(&mut events).await,
        expect("b", State::Revoked, now)
    );
    finish(&acme, &second, "3", now + 5).await;
    assert_eq!(
        next_event(&mut events).await,
        expect("a", State::Success, now + 5)
    );

    // A stale settlement and another namespace's work are silent: the next event is this
    // one's (events of one broker arrive in the order they were published).
    settle(&acme, &first, Settlement::Release, now + 6).await;
    let elsewhere = one(reserve(&other, &["default"], 1, now + 6).await);
    finish(&other, &elsewhere, "x", now + 6).await;
    enqueue(&acme, [message("z")], now + 7).await;
    assert_eq!(
        next_event(&mut events).await,
        expect("z", State::Pending, now + 7)
    );
    assert!(events.try_recv().is_err(), "no event after the last");
}

/// A task's whole story in the log, with Celery's names and the fields each event carries:
/// sent, received, started, progress, retried (with the attempt's figures and error), received
/// again, succeeded (with its figures); then a worker's events between them. A reader that
/// starts at the beginning of the log replays it all.
async fn the_event_log_tells_a_tasks_whole_story(broker: impl Broker + Tenancy) {
    let acme = broker.namespaced("acme").expect("namespace");
    let mut live = acme.events(None).await.expect("events");
    let mut now = T0;
    enqueue(&acme, [message("a")], now).await;
    now += 1;
    let first = one(reserve(&acme, &["default"], 1, now).await);
    mark(&acme, &first, State::Started, None, now + 1).await;
    mark(
        &acme,
        &first,
        State::Progress,
        Some(progress(1, 2)),
        now + 2,
    )
    .await;
    now += 10;
    let retry = Settlement::Retry {
        attempt: failed(&first, "again", now),
        eta_ms: now,
    };
    assert_eq!(settle(&acme, &first, retry, now).await, Settled::Committed);
    acme.record_event(&Event::worker("worker-heartbeat", WORKER, now))
        .await
        .expect("worker event");
    now += 1;
    let second = one(reserve(&acme, &["default"], 1, now).await);
    finish(&acme, &second, "3", now + 5).await;

    let mut seen = Vec::new();
    for _ in 0..8 {
        seen.push(next_full_event(&mut live).await);
    }
    let kinds: Vec<&str> = seen.iter().map(|event| event.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "task-sent",
            "task-received",
            "task-started",
            "task-progress",
            "task-retried",
            "worker-heartbeat",
            "task-received",
            "task-succeeded",
        ]
    );
    for event in seen.iter().filter(|event| event.is_task()) {
        assert_eq!(event.id.as_deref(), Some("a"), "{event:?}");
        assert_eq!(event.task.as_deref(), Some("math.add"), "{event:?}");
        assert!(!event.cursor.is_empty(), "{event:?}");
    }
    assert_eq!(seen[0].worker, None, "a sent task has no worker yet");
    assert_eq!(seen[1].worker.as_deref(), Some(WORKER));
    assert_eq!(seen[3].progress, Some(progress(1, 2)));
    let retried = &seen[4];
    assert_eq!(retried.state, Some(State::Retry));
    assert_eq!(retried.attempt, Some(1));
    assert_eq!(retried.worker.as_deref(), Some(WORKER));
    assert_eq!(retried.fuel, Some(1_000));
    assert_eq!(retried.peak_memory, Some(65_536));
    assert_eq!(retried.runtime_ms, Some(10.0));
    assert_eq!(retried.digest, Some("a".repeat(64)));
    assert_eq!(retried.error, Some(failure("failed", "again")));
    assert_eq!(seen[5].worker.as_deref(), Some(WORKER));
    assert_eq!(seen[5].id, None);
    let succeeded = &seen[7];
    assert_eq!(succeeded.attempt, Some(2));
    assert_eq!(succeeded.runtime_ms, Some(5.0));
    assert_eq!(succeeded.fuel, Some(1_000));
    assert_eq!(succeeded.error, None);

    // The same story again from the start of the log, and from a cursor in its middle.
    let mut replay = acme
        .events(Some(EVENTS_FROM_START.to_string()))
        .await
        .expect("events");
    for expected in &seen {
        assert_eq!(&next_full_event(&mut replay).await, expected);
    }
    let mut rest = acme
        .events(Some(seen[5].cursor.clone()))
        .await
        .expect("events");
    assert_eq!(&next_full_event(&mut rest).await, &seen[6]);
}

/// The log keeps about its cap of the newest events (Redis trims whole blocks, so a little
/// more); nothing is logged while it is off.
async fn the_event_log_is_capped_and_off_by_default(broker: impl Broker + Tenancy) {
    const CAP: u64 = 200;
    const WRITTEN: usize = 1_000;
    let acme = broker.namespaced("acme").expect("namespace");
    enqueue(&acme, [message("unlogged")], T0).await;
    acme.record_event(&Event::worker("worker-online", WORKER, T0))
        .await
        .expect("worker event");
    acme.enable_events(CAP, Duration::from_secs(60))
        .await
        .expect("enable");
    let ids: Vec<String> = (0..WRITTEN).map(|i| format!("t{i}")).collect();
    enqueue(&acme, ids.iter().map(|id| message(id)), T0).await;

    let mut replay = acme
        .events(Some(EVENTS_FROM_START.to_string()))
        .await
        .expect("events");
    let mut kept = Vec::new();
    loop {
        let event = next_full_event(&mut replay).await;
        let id = event.id.expect("only task events were logged");
        let last = id == ids[WRITTEN - 1];
        kept.push(id);
        if last {
            break;
        }
    }
    assert!(!kept.contains(&"unlogged".to_string()));
    assert!(
        kept.len() as u64 >= CAP && kept.len() as u64 <= CAP + 200,
        "kept {} of {WRITTEN} with a cap of {CAP}",
        kept.len()
    );
    // The newest, in order.
    assert_eq!(kept[..], ids[WRITTEN - kept.len()..]);
}

// ---------------------------------------------------------------------------------------------
// Workflows: plans built by hand, each task on its own queue (named by its id) so a story can
// run exactly the task it means to, and see whether a parked task was queued.
// ---------------------------------------------------------------------------------------------

async fn a_chain_starts_each_step_with_the_previous_output(broker: impl Broker) {
    let mut now = T0;
    let plan = chain_plan(
        "wf",
        vec![
            then(planned("s1", "[5,8]"), &["s2"]),
            then(parked("s2", "[8]", Input::Prepend), &["s3"]),
            then(
                parked("s3", r#" {"y":1}"#, Input::Keyword("x".into())),
                &["s4"],
            ),
            delayed(parked("s4", "[2,2]", Input::Ignore), 1_000),
        ],
    );
    submit(&broker, plan, now).await;

    // Everything is stored PENDING; only the first step is queued.
    for id in ["s1", "s2", "s3", "s4"] {
        assert_eq!(record(&broker, id).await.state, State::Pending, "{id}");
    }
    assert_eq!(depth(&broker, "s1").await, 1);
    assert_eq!(record(&broker, "s2").await.message.args, "[8]");
    assert!(
        reserve(&broker, &["s2", "s3", "s4"], 10, now)
            .await
            .is_empty()
    );

    now += 10;
    run(&broker, "s1", "13", now).await;
    let s2 = take(&broker, "s2", now).await;
    assert_eq!(args(&s2), json("[13,8]"), "prepended");
    assert_eq!(
        json(&record(&broker, "s2").await.message.args),
        json("[13,8]")
    );
    assert_eq!(record(&broker, "s3").await.state, State::Pending);
    finish(&broker, &s2, r#"{"sum": 21}"#, now).await;

    let s3 = take(&broker, "s3", now).await;
    assert_eq!(
        args(&s3),
        json(r#"{"x": {"sum": 21}, "y": 1}"#),
        "by keyword"
    );
    finish(&broker, &s3, r#""done""#, now).await;

    // Its countdown counts from its start.
    assert!(reserve(&broker, &["s4"], 10, now + 999).await.is_empty());
    let s4 = take(&broker, "s4", now + 1_000).await;
    assert_eq!(args(&s4), json("[2,2]"), "immutable: the output is ignored");
    finish(&broker, &s4, "4", now + 1_000).await;
    assert_eq!(record(&broker, "s4").await.state, State::Success);
}

async fn a_chord_callback_runs_once_with_every_result_in_member_order(broker: impl Broker) {
    let mut now = T0;
    let members = ["m0", "m1", "m2"];
    submit(&broker, chord_plan("wf", &members, join("j", 3, "cb")), now).await;
    let deliveries = reserve(&broker, &members, 10, now).await;
    assert_eq!(ids(&deliveries), members);

    // m1's first worker stalls; its lease is taken over, and its late result is refused.
    now += LEASE_MS + 1;
    assert_eq!(reap(&broker, now).await, 3);
    let zombie = &deliveries[1];
    let outputs = [r#""zero""#, "[1, 1]", r#"{"two": 2}"#];
    for index in [2, 1, 0] {
        let id = members[index];
        let delivery = take(&broker, id, now).await;
        if index == 1 {
            let late = Settlement::Finish(succeeded(zombie, "666", now));
            assert_eq!(settle(&broker, zombie, late, now).await, Settled::Stale);
        }
        assert_eq!(depth(&broker, "cb").await, 0, "not before the last member");
        assert_eq!(record(&broker, "cb").await.state, State::Pending);
        finish(&broker, &delivery, outputs[index], now).await;
    }

    let callback = take(&broker, "cb", now).await;
    assert_eq!(
        args(&callback),
        json(r#"[["zero", [1, 1], {"two": 2}], "own"]"#)
    );
    assert!(
        reserve(&broker, &["cb"], 10, now).await.is_empty(),
        "queued once"
    );
}

async fn a_failed_chord_member_fails_the_callback_and_starts_its_errback_once(broker: impl Broker) {
    let now = T0;
    let members = ["m0", "m1", "m2", "m3"];
    let mut plan = chord_plan("wf", &members, join("j", 4, "cb"));
    plan.tasks.push(parked("eb", "[]", Input::Prepend));
    errback_of(&mut plan, "cb", "eb");
    submit(&broker, plan, now).await;

    run(&broker, "m0", "0", now).await;
    fail(&broker, "m1", "boom", now).await;

    let callback = record(&broker, "cb").await;
    assert_eq!(callback.state, State::Failure);
    assert_eq!(
        callback.error,
        Some(failure(
            "upstream_failed",
            "chord header member 1, math.add (m1) failed: failed: boom"
        ))
    );
    assert!(callback.finished_ms.is_some());
    let errback = take(&broker, "eb", now).await;
    let expected = r#"{"id": "m1", "task": "math.add", "kind": "failed", "message": "boom",
                       "member": 1}"#;
    assert_eq!(args(&errback), json(&format!("[{expected}]")));

    // Later members change nothing: another failure does not start the errback again, a
    // success does not revive the callback.
    fail(&broker, "m2", "again", now + 1).await;
    run(&broker, "m3", "3", now + 2).await;
    assert!(
        reserve(&broker, &["eb", "cb"], 10, now + 2)
            .await
            .is_empty()
    );
    assert_eq!(record(&broker, "cb").await, callback);
    assert_eq!(record(&broker, "eb").await.state, State::Received);
}

async fn a_collecting_chord_gathers_failures_and_counts_each_member_once(broker: impl Broker) {
    let now = T0;
    let members = ["m0", "m1", "m2"];
    let collecting = PlannedJoin {
        collect: true,
        ..join("j", 3, "cb")
    };
    submit(&broker, chord_plan("wf", &members, collecting), now).await;

    run(&broker, "m0", "1", now).await;
    let m1 = take(&broker, "m1", now).await;
    let unknown = failure("unknown_component", "no component `math`");
    let dead = Settlement::DeadLetter(unknown);
    assert_eq!(settle(&broker, &m1, dead, now).await, Settled::Committed);
    assert_eq!(depth(&broker, "cb").await, 0);

    // Retried from the dead letters, it succeeds: the join already has its entry.
    assert_eq!(
        broker
            .retry_dead(Some("m1"), now)
            .await
            .expect("retry_dead"),
        1
    );
    run(&broker, "m1", "99", now + 1).await;
    assert_eq!(depth(&broker, "cb").await, 0, "m1 counted once");

    run(&broker, "m2", "3", now + 2).await;
    let callback = take(&broker, "cb", now + 2).await;
    let error = r#"{"error": {"id": "m1", "task": "math.add", "kind": "unknown_component",
                              "message": "no component `math`"}}"#;
    assert_eq!(
        args(&callback),
        json(&format!(r#"[[1, {error}, 3], "own"]"#))
    );
    assert!(reserve(&broker, &["cb"], 10, now + 2).await.is_empty());
}

async fn chunk_results_are_concatenated(broker: impl Broker) {
    let now = T0;
    let members = ["c0", "c1", "c2"];
    let flattening = PlannedJoin {
        flatten: true,
        ..join("j", 3, "cb")
    };
    submit(&broker, chord_plan("wf", &members, flattening), now).await;
    run(&broker, "c2", "[3]", now).await;
    run(&broker, "c1", "[]", now).await;
    run(&broker, "c0", "[1, 2]", now).await;
    let callback = take(&broker, "cb", now).await;
    assert_eq!(args(&callback), json(r#"[[1, 2, 3], "own"]"#));

    // Outputs and arguments are JSON text: whitespace around them changes nothing.
    let mut plan = chord_plan("wf2", &["d0", "d1", "d2"], join("j2", 3, "cb2"));
    plan.joins[0].flatten = true;
    let callback = plan.tasks.last_mut().expect("the callback");
    callback.message.id = "cb2".into();
    callback.message.queue = "cb2".into();
    callback.message.args = " [ ] ".into();
    submit(&broker, plan, now).await;
    run(&broker, "d0", " [1, 2]\n", now).await;
    run(&broker, "d1", "[ ] ", now).await;
    run(&broker, "d2", "\"three\"", now).await;
    let callback = take(&broker, "cb2", now).await;
    assert_eq!(args(&callback), json(r#"[[1, 2, "three"]]"#));
}

async fn a_failed_chain_step_fails_the_rest_and_starts_the_errback_once(broker: impl Broker) {
    let now = T0;
    let mut plan = chain_plan(
        "wf",
        vec![
            then(planned("s1", "[1]"), &["s2"]),
            then(parked("s2", "[2]", Input::Prepend), &["s3"]),
            parked("s3", "[3]", Input::Prepend),
            parked("eb", "[]", Input::Prepend),
        ],
    );
    errback_of(&mut plan, "s3", "eb");
    submit(&broker, plan, now).await;

    fail(&broker, "s1", "boom", now + 5).await;
    for id in ["s2", "s3"] {
        let downstream = record(&broker, id).await;
        assert_eq!(downstream.state, State::Failure, "{id}");
        assert_eq!(
            downstream.error,
            Some(failure(
                "upstream_failed",
                "math.add (s1) failed: failed: boom"
            )),
            "{id}"
        );
        assert_eq!(downstream.finished_ms, Some(now + 5), "{id}");
        assert_eq!(downstream.message.args, format!("[{}]", &id[1..]), "{id}");
    }
    assert!(
        reserve(&broker, &["s2", "s3"], 10, now + 5)
            .await
            .is_empty()
    );
    let errback = take(&broker, "eb", now + 5).await;
    let expected = r#"[{"id": "s1", "task": "math.add", "kind": "failed", "message": "boom"}]"#;
    assert_eq!(args(&errback), json(expected));
    assert!(
        reserve(&broker, &["eb"], 10, now + 5).await.is_empty(),
        "started once"
    );
}

async fn a_revoked_parked_task_is_never_started(broker: impl Broker) {
    let now = T0;
    let plan = chain_plan(
        "wf",
        vec![
            then(planned("s1", "[1]"), &["s2"]),
            then(parked("s2", "[2]", Input::Prepend), &["s3"]),
            parked("s3", "[3]", Input::Prepend),
        ],
    );
    submit(&broker, plan, now).await;
    let revoked = broker.revoke("s2", false, now).await.expect("revoke");
    assert_eq!(revoked, Revoked::Revoked);
    let s2 = record(&broker, "s2").await;
    assert_eq!((s2.state, kind(&s2)), (State::Revoked, Some("revoked")));
    // Its own links ran: what it would have started will not run either.
    let s3 = record(&broker, "s3").await;
    assert_eq!(
        (s3.state, kind(&s3)),
        (State::Revoked, Some("upstream_revoked"))
    );
    let message = &s3.error.as_ref().expect("an error").message;
    assert!(
        message.starts_with("math.add (s2) was revoked: revoked: "),
        "{message}"
    );

    run(&broker, "s1", "1", now + 1).await;
    assert!(
        reserve(&broker, &["s2", "s3"], 10, now + 1)
            .await
            .is_empty()
    );
    assert_eq!(record(&broker, "s2").await, s2, "still revoked, untouched");
    assert_eq!(
        broker.revoke("s2", false, now + 2).await.expect("revoke"),
        Revoked::AlreadyFinal(State::Revoked)
    );
}

async fn revoking_a_waiting_chain_step_revokes_the_rest(broker: impl Broker) {
    let now = T0;
    let plan = chain_plan(
        "wf",
        vec![
            then(planned("s1", "[1]"), &["s2"]),
            then(parked("s2", "[2]", Input::Prepend), &["s3"]),
            parked("s3", "[3]", Input::Prepend),
        ],
    );
    submit(&broker, plan, now).await;
    let revoked = broker.revoke("s1", false, now).await.expect("revoke");
    assert_eq!(revoked, Revoked::Revoked);
    for id in ["s2", "s3"] {
        let downstream = record(&broker, id).await;
        assert_eq!(downstream.state, State::Revoked, "{id}");
        assert_eq!(kind(&downstream), Some("upstream_revoked"), "{id}");
        let message = &downstream.error.as_ref().expect("an error").message;
        assert!(
            message.starts_with("math.add (s1) was revoked: "),
            "{message}"
        );
    }
    assert!(
        reserve(&broker, &["s1", "s2", "s3"], 10, now)
            .await
            .is_empty()
    );
}

async fn a_success_skips_its_parked_errback(broker: impl Broker) {
    let now = T0;
    let mut plan = chain_plan(
        "wf",
        vec![
            then(planned("s1", "[1]"), &["s2"]),
            parked("s2", "[]", Input::Prepend),
            then(parked("eb", "[]", Input::Prepend), &["after"]),
            parked("after", "[]", Input::Prepend),
            parked("eb-of-eb", "[]", Input::Prepend),
        ],
    );
    errback_of(&mut plan, "s1", "eb");
    errback_of(&mut plan, "eb", "eb-of-eb");
    submit(&broker, plan, now).await;

    run(&broker, "s1", "7", now).await;
    assert_eq!(args(&take(&broker, "s2", now).await), json("[7]"));
    let errback = record(&broker, "eb").await;
    assert_eq!(errback.state, State::Revoked);
    assert_eq!(
        errback.error,
        Some(failure(
            "skipped",
            "not needed: what it handles did not fail"
        ))
    );
    // What the errback would have started is skipped in turn, its own errback too: nothing
    // failed.
    for id in ["after", "eb-of-eb"] {
        let skipped = record(&broker, id).await;
        assert_eq!(
            (skipped.state, kind(&skipped)),
            (State::Revoked, Some("skipped")),
            "{id}"
        );
    }
    assert!(
        reserve(&broker, &["eb", "after", "eb-of-eb"], 10, now)
            .await
            .is_empty()
    );
}

/// A collecting group collects its own members' failures, not a failure from before it:
/// that one fails the group, stops the chain and reaches its errback.
async fn an_upstream_failure_fails_a_collecting_group(broker: impl Broker) {
    let now = T0;
    let mut members: Vec<PlannedTask> = ["m0", "m1"]
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let mut task = parked(id, "[]", Input::Prepend);
            task.links.join = Some(JoinSlot {
                join: "j".into(),
                index,
            });
            task.within = vec!["j".into()];
            task
        })
        .collect();
    let mut tasks = vec![then(planned("a", "[]"), &["m0", "m1"])];
    tasks.append(&mut members);
    tasks.push(parked("d", "[]", Input::Prepend));
    tasks.push(parked("e", "[]", Input::Prepend));
    let mut plan = Plan {
        joins: vec![PlannedJoin {
            collect: true,
            ..join("j", 2, "d")
        }],
        ..chain_plan("wf", tasks)
    };
    errback_of(&mut plan, "d", "e");
    submit(&broker, plan, now).await;

    fail(&broker, "a", "boom", now).await;
    for id in ["m0", "m1", "d"] {
        let dropped = record(&broker, id).await;
        assert_eq!(
            (dropped.state, kind(&dropped)),
            (State::Failure, Some("upstream_failed")),
            "{id}"
        );
    }
    let errback = take(&broker, "e", now).await;
    let input = args(&errback);
    assert_eq!(input[0]["id"], "a", "{input}");
    assert!(reserve(&broker, &["d", "e"], 10, now).await.is_empty());
}

/// Purge, expiry and dead-lettering end a workflow task like a worker's settlement does.
async fn every_way_a_step_ends_runs_its_links(broker: impl Broker) {
    let mut now = T0;
    let mut expiring = then(planned("expiring", "[]"), &["after-expiry"]);
    expiring.message.expires_ms = Some(now + 10);
    let mut poison = then(planned("poison", "[]"), &["after-poison"]);
    poison.message.max_deliveries = 1;
    let plan = chain_plan(
        "wf",
        vec![
            then(planned("purged", "[]"), &["after-purge"]),
            parked("after-purge", "[]", Input::Prepend),
            expiring,
            parked("after-expiry", "[]", Input::Prepend),
            poison,
            parked("after-poison", "[]", Input::Prepend),
        ],
    );
    submit(&broker, plan, now).await;

    assert_eq!(broker.purge("purged", now).await.expect("purge"), 1);
    let downstream = record(&broker, "after-purge").await;
    assert_eq!(downstream.state, State::Revoked);
    assert_eq!(kind(&downstream), Some("upstream_revoked"));

    take(&broker, "poison", now).await;
    now += LEASE_MS + 1;
    assert!(reserve(&broker, &["expiring"], 10, now).await.is_empty());
    let downstream = record(&broker, "after-expiry").await;
    assert_eq!(downstream.state, State::Revoked);
    let message = &downstream.error.as_ref().expect("an error").message;
    assert!(
        message.starts_with("math.add (expiring) was revoked: expired: "),
        "{message}"
    );

    assert_eq!(reap(&broker, now).await, 1);
    let downstream = record(&broker, "after-poison").await;
    assert_eq!(downstream.state, State::Failure);
    let message = &downstream.error.as_ref().expect("an error").message;
    assert!(
        message.starts_with("math.add (poison) failed: dead_lettered: delivered 1 times"),
        "{message}"
    );
    assert!(
        reserve(
            &broker,
            &["after-purge", "after-expiry", "after-poison"],
            10,
            now
        )
        .await
        .is_empty()
    );
}

async fn a_workflow_with_an_id_in_use_stores_nothing(broker: impl Broker) {
    let now = T0;
    submit(&broker, chain_plan("wf", vec![planned("a", "[]")]), now).await;

    let same_id = chain_plan("wf", vec![planned("b", "[]")]);
    let refused = broker.submit(same_id, now).await;
    assert!(
        matches!(&refused, Err(Error::DuplicateId(id)) if id == "wf"),
        "{refused:?}"
    );
    assert!(broker.record("b").await.expect("record").is_none());

    enqueue(&broker, [message("plain")], now).await;
    let mut task_in_use = chain_plan(
        "wf2",
        vec![
            planned("c", "[]"),
            planned("plain", "[]"),
            planned("d", "[]"),
        ],
    );
    task_in_use.joins.push(join("j", 1, "c"));
    let refused = broker.submit(task_in_use, now).await;
    assert!(
        matches!(&refused, Err(Error::DuplicateId(id)) if id == "plain"),
        "{refused:?}"
    );
    let twice = chain_plan("wf3", vec![planned("e", "[]"), planned("e", "[]")]);
    let refused = broker.submit(twice, now).await;
    assert!(
        matches!(&refused, Err(Error::DuplicateId(id)) if id == "e"),
        "{refused:?}"
    );

    for id in ["c", "d", "e"] {
        assert!(broker.record(id).await.expect("record").is_none(), "{id}");
    }
    for id in ["wf2", "wf3"] {
        assert_eq!(broker.workflow(id).await.expect("workflow"), None, "{id}");
    }
    assert_eq!(record(&broker, "plain").await.message, message("plain"));
    assert_eq!(depth(&broker, "c").await + depth(&broker, "e").await, 0);
    // The first workflow is intact.
    assert_eq!(depth(&broker, "a").await, 1);
    assert!(broker.workflow("wf").await.expect("workflow").is_some());
}

async fn a_workflow_tree_can_be_read_back(broker: impl Broker) {
    let tree = Tree::Linked {
        node: Box::new(Tree::Chord {
            header: vec![leaf("m0"), leaf("m1")],
            body: Box::new(Tree::Task(TaskLeaf {
                link_error: vec![leaf("eb")],
                ..TaskLeaf {
                    id: "cb".into(),
                    task: "math.xsum".into(),
                    batch: false,
                    link: Vec::new(),
                    link_error: Vec::new(),
                }
            })),
        }),
        link: vec![Tree::Chunks(vec![leaf("k0")])],
        link_error: Vec::new(),
    };
    let plan = Plan {
        tree: tree.clone(),
        ..chain_plan("wf", vec![planned("m0", "[]")])
    };
    submit(&broker, plan, T0).await;
    assert_eq!(broker.workflow("wf").await.expect("workflow"), Some(tree));
    assert_eq!(broker.workflow("nope").await.expect("workflow"), None);
}

/// A task a link starts wakes the workers of its queue, and one it ends wakes its waiters.
async fn waiters_and_workers_wake_when_links_run(broker: impl Broker) {
    let broker = Arc::new(broker);
    let plan = chain_plan(
        "wf",
        vec![
            then(planned("s1", "[1]"), &["s2"]),
            then(planned("f1", "[1]"), &["f2"]),
            parked("s2", "[]", Input::Prepend),
            parked("f2", "[]", Input::Prepend),
        ],
    );
    submit(&*broker, plan, T0).await;
    let worker = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            let started = Instant::now();
            let waited = broker
                .wait_for_work(&queues(&["s2"]), Duration::from_secs(30))
                .await;
            (waited, started.elapsed())
        })
    };
    let waiter = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move { broker.wait("f2", Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await; // see wait_returns_as_soon_as...

    run(&*broker, "s1", "1", T0).await;
    let (waited, elapsed) = within(PROMPTLY * 2, "wait_for_work", worker)
        .await
        .expect("worker task");
    waited.expect("wait_for_work");
    assert!(elapsed < PROMPTLY, "woke after {elapsed:?}");

    fail(&*broker, "f1", "boom", T0).await;
    let record = within(PROMPTLY, "the waiter of a dropped task", waiter)
        .await
        .expect("waiter task")
        .expect("wait");
    assert_eq!(record.map(|record| record.state), Some(State::Failure));
}

/// Also Redis's limits: the gather reads results 1,000 at a time, and submit must not
/// `unpack` one value per task (Lua's stack holds about 8,000).
async fn a_chord_of_nine_thousand_members_calls_back_once_in_order(broker: impl Broker) {
    const MEMBERS: usize = 9_000;
    let now = T0;
    let mut tasks: Vec<PlannedTask> = (0..MEMBERS)
        .map(|index| {
            let mut member = planned(&format!("m{index:04}"), "[]");
            member.message.queue = "default".into();
            member.links.join = Some(JoinSlot {
                join: "j".into(),
                index,
            });
            member
        })
        .collect();
    tasks.push(parked("cb", "[]", Input::Prepend));
    let plan = Plan {
        joins: vec![join("j", MEMBERS, "cb")],
        ..chain_plan("wf", tasks)
    };
    submit(&broker, plan, now).await;

    let mut batches = Vec::new();
    loop {
        let batch = reserve(&broker, &["default"], 500, now).await;
        if batch.is_empty() {
            break;
        }
        batches.push(batch);
    }
    assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), MEMBERS);
    // Last batch first, so results arrive out of order.
    for batch in batches.iter().rev() {
        assert_eq!(depth(&broker, "cb").await, 0);
        let settles = batch
            .iter()
            .map(|delivery| {
                let index: usize = delivery.id[1..].parse().expect("a member index");
                Settle {
                    lease: lease(delivery),
                    settlement: Settlement::Finish(succeeded(delivery, &index.to_string(), now)),
                }
            })
            .collect();
        let settled = broker.settle(settles, now).await.expect("settle");
        assert!(settled.iter().all(|settled| *settled == Settled::Committed));
    }
    let callback = take(&broker, "cb", now).await;
    let expected: Vec<usize> = (0..MEMBERS).collect();
    assert_eq!(args(&callback), serde_json::json!([expected]));
    assert!(
        reserve(&broker, &["cb"], 10, now).await.is_empty(),
        "queued once"
    );
}

/// A workflow task `math.add` with its own arguments, queued at submit, on the queue named by
/// its id.
fn planned(id: &str, args: &str) -> PlannedTask {
    PlannedTask {
        message: TaskMessage {
            args: args.into(),
            ..on_queue(message(id), id)
        },
        parked: None,
        links: Links::default(),
        address: "math.add".into(),
        within: Vec::new(),
    }
}

/// The same, parked until its owner starts it.
fn parked(id: &str, args: &str, input: Input) -> PlannedTask {
    PlannedTask {
        parked: Some(Parked {
            input,
            delay_ms: None,
        }),
        ..planned(id, args)
    }
}

fn delayed(mut task: PlannedTask, delay_ms: u64) -> PlannedTask {
    if let Some(parked) = &mut task.parked {
        parked.delay_ms = Some(delay_ms);
    }
    task
}

fn then(mut task: PlannedTask, next: &[&str]) -> PlannedTask {
    task.links.next = next.iter().map(|id| id.to_string()).collect();
    task
}

fn errback_of(plan: &mut Plan, id: &str, errback: &str) {
    let task = plan
        .tasks
        .iter_mut()
        .find(|task| task.message.id == id)
        .expect("the task is in the plan");
    task.links.errback.push(errback.into());
}

/// A join of `size` members whose callback `next` is started with the list.
fn join(id: &str, size: usize, next: &str) -> PlannedJoin {
    PlannedJoin {
        id: id.into(),
        size,
        collect: false,
        flatten: false,
        links: Links {
            next: vec![next.into()],
            ..Links::default()
        },
    }
}

fn leaf(id: &str) -> Tree {
    Tree::Task(TaskLeaf {
        id: id.into(),
        task: "math.add".into(),
        batch: false,
        link: Vec::new(),
        link_error: Vec::new(),
    })
}

/// A plan of these tasks (its tree: a chain of their leaves, which the broker only stores).
fn chain_plan(id: &str, tasks: Vec<PlannedTask>) -> Plan {
    Plan {
        id: id.into(),
        tree: Tree::Chain(tasks.iter().map(|task| leaf(&task.message.id)).collect()),
        tasks,
        joins: Vec::new(),
        ttl_ms: 3_600_000,
    }
}

/// A chord: `members` delivering to `join` in order, and its callback `cb` (own arguments
/// `["own"]`, the list prepended).
fn chord_plan(id: &str, members: &[&str], join: PlannedJoin) -> Plan {
    let mut tasks: Vec<PlannedTask> = members
        .iter()
        .enumerate()
        .map(|(index, member)| {
            let mut task = planned(member, "[]");
            task.links.join = Some(JoinSlot {
                join: join.id.clone(),
                index,
            });
            task.within = vec![join.id.clone()];
            task
        })
        .collect();
    tasks.push(parked("cb", r#"["own"]"#, Input::Prepend));
    Plan {
        joins: vec![join],
        ..chain_plan(id, tasks)
    }
}

async fn submit(broker: &impl Broker, plan: Plan, now: u64) {
    let id = plan.id.clone();
    broker
        .submit(plan, now)
        .await
        .unwrap_or_else(|error| panic!("submitting {id}: {error}"));
}

/// Leases the task `id` (the only one on its queue).
async fn take(broker: &impl Broker, id: &str, now: u64) -> Delivery {
    let delivery = one(reserve(broker, &[id], 10, now).await);
    assert_eq!(delivery.id, id);
    delivery
}

/// Runs the task `id` to success with this output.
async fn run(broker: &impl Broker, id: &str, output: &str, now: u64) {
    let delivery = take(broker, id, now).await;
    finish(broker, &delivery, output, now).await;
}

/// Runs the task `id` to a failure (kind `failed`, message `why`).
async fn fail(broker: &impl Broker, id: &str, why: &str, now: u64) {
    let delivery = take(broker, id, now).await;
    let settlement = Settlement::Finish(failed(&delivery, why, now));
    assert_eq!(
        settle(broker, &delivery, settlement, now).await,
        Settled::Committed
    );
}

/// The arguments a delivery carries, as JSON.
fn args(delivery: &Delivery) -> serde_json::Value {
    let message = delivery.message.as_ref().expect("a decodable message");
    json(&message.args)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

mod redis_only {
    use super::*;

    /// Reliability R4/R13 in miniature: with `appendfsync always`, a SIGKILL loses no
    /// acknowledged enqueue; while Redis is down calls fail fast instead of hanging; and the
    /// same broker value works again once Redis is back, as a worker would need.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_enqueues_survive_a_crash_and_restart() {
        let mut server = RedisServer::start_durable();
        let broker = Arc::new(connect(&server, "test").await);
        let all: Vec<String> = (0..50).map(|n| format!("t{n:02}")).collect();
        for id in &all {
            enqueue(&*broker, [message(id)], T0).await;
        }
        let mut terminations = broker.terminations().await.expect("terminations");
        let running = one(reserve(&*broker, &["default"], 1, T0).await);

        server.kill();
        let started = Instant::now();
        let refused = broker.enqueue(vec![task(message("while-down"))], T0).await;
        assert!(refused.is_err(), "enqueue while Redis is down: {refused:?}");
        assert!(
            started.elapsed() < PROMPTLY,
            "enqueue while Redis is down took {:?}",
            started.elapsed()
        );

        server.restart();
        // A worker retries its first call for a few seconds, as a worker's loop would.
        let deadline = Instant::now() + Duration::from_secs(5);
        let depth = loop {
            match broker.depth("default").await {
                Ok(depth) => break depth,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("after restart: {error}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("the broker did not recover within 5 s: {error}"),
            }
        };
        assert_eq!(depth, all.len() - 1, "acknowledged enqueues were lost");
        assert_eq!(record(&*broker, &running.id).await.state, State::Received);

        // The worker's termination channel survived the restart: a revoke reaches it (the
        // listener resubscribes with backoff, and re-sends the `terminating` set when it does).
        assert_eq!(
            broker
                .revoke(&running.id, true, T0 + 1)
                .await
                .expect("revoke"),
            Revoked::Running { terminating: true }
        );
        let id = within(
            Duration::from_secs(5),
            "a termination request after the restart",
            terminations.recv(),
        )
        .await;
        assert_eq!(id.as_ref(), Some(&running.id));
        let stopped = Attempt {
            state: State::Revoked,
            output: None,
            error: Some(failure("terminated", "revoked with terminate")),
            ..succeeded(&running, "null", T0 + 2)
        };
        assert_eq!(
            settle(&*broker, &running, Settlement::Finish(stopped), T0 + 2).await,
            Settled::Committed
        );

        // Everything else still works: the rest are delivered, and a waiter is woken.
        let rest = reserve(&*broker, &["default"], 100, T0 + 3).await;
        let mut delivered: Vec<String> = ids(&rest).into_iter().map(String::from).collect();
        delivered.push(running.id.clone());
        delivered.sort();
        assert_eq!(delivered, all);
        let waiter = {
            let broker = Arc::clone(&broker);
            tokio::spawn(async move { broker.wait("t49", Duration::from_secs(30)).await })
        };
        for delivery in &rest {
            finish(&*broker, delivery, "0", T0 + 4).await;
        }
        let record = within(PROMPTLY * 2, "the waiter after the restart", waiter)
            .await
            .expect("waiter task")
            .expect("wait")
            .expect("a record");
        assert_eq!(record.state, State::Success);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_to_a_closed_port_is_unreachable_at_once() {
        // On 127.0.0.2, where no test's server listens (they bind 127.0.0.1), a port that was
        // free a moment ago stays closed.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        let url = format!("redis://127.0.0.2:{port}");
        let started = Instant::now();
        let result = within(
            Duration::from_secs(10),
            "connect",
            RedisBroker::connect(&url, "test"),
        )
        .await;
        let elapsed = started.elapsed();
        assert!(
            matches!(&result, Err(Error::Unreachable { url: got, .. }) if *got == url),
            "expected Unreachable for {url}, got {:?}",
            result.map(|_| "a broker")
        );
        assert!(elapsed < PROMPTLY, "connect failed after {elapsed:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_refuses_a_redis_that_evicts_keys() {
        let server = RedisServer::start_with(
            Options::ephemeral().with(&["--maxmemory-policy", "allkeys-lru"]),
        );
        let result = RedisBroker::connect(&server.url(), "test").await;
        assert!(
            matches!(&result, Err(Error::Evicting { policy, .. }) if policy == "allkeys-lru"),
            "expected Evicting with allkeys-lru, got {:?}",
            result.map(|_| "a broker")
        );
    }

    /// Reliability R14, second half: at `maxmemory` with `noeviction`, an enqueue fails loudly
    /// and nothing acknowledged is dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_redis_refuses_enqueues_loudly() {
        let server = RedisServer::start_with(Options::ephemeral().with(&["--maxmemory", "4mb"]));
        let broker = connect(&server, "test").await;
        let bulky = |n: usize| TaskMessage {
            args: format!("[\"{}\"]", "x".repeat(64 * 1024)),
            ..message(&format!("t{n:03}"))
        };
        let mut acknowledged = 0;
        let refusal = loop {
            assert!(acknowledged < 1_000, "4 MiB held 1000 tasks of 64 KiB?");
            match broker.enqueue(vec![task(bulky(acknowledged))], T0).await {
                Ok(enqueued) => {
                    assert_eq!(enqueued, [created(&format!("t{acknowledged:03}"))]);
                    acknowledged += 1;
                }
                Err(error) => break error,
            }
        };
        eprintln!("refused after {acknowledged} enqueues: {refusal}");
        assert!(acknowledged > 0, "refused the first enqueue: {refusal}");
        assert_eq!(depth(&broker, "default").await, acknowledged);
        let refused = format!("t{acknowledged:03}");
        assert_eq!(broker.record(&refused).await.expect("record"), None);
        for n in 0..acknowledged {
            record(&broker, &format!("t{n:03}")).await;
        }
    }

    /// Two namespaces on one server share nothing, not even task ids.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn namespaces_share_nothing() {
        let server = RedisServer::start();
        let blue = connect(&server, "blue").await;
        let green = connect(&server, "green").await;
        enqueue(&blue, [message("a")], T0).await;
        enqueue(&green, [message("a"), message("b")], T0).await;
        assert_eq!(depth(&blue, "default").await, 1);
        assert_eq!(depth(&green, "default").await, 2);
        assert_eq!(broker_revoke(&blue, "a").await, Revoked::Revoked);
        assert_eq!(record(&green, "a").await.state, State::Pending);
        assert_eq!(blue.record("b").await.expect("record"), None);
        assert_eq!(
            ids(&reserve(&green, &["default"], 10, T0).await),
            ["a", "b"]
        );
    }

    /// In production the producer, the waiting client and the worker are separate processes,
    /// each with its own connection: wake-ups and termination requests must cross them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wake_ups_and_terminations_cross_connections() {
        let server = RedisServer::start();
        let api = Arc::new(connect(&server, "test").await);
        let worker = Arc::new(connect(&server, "test").await);

        // An idle worker wakes when the API enqueues.
        let idle = {
            let worker = Arc::clone(&worker);
            tokio::spawn(async move {
                let started = Instant::now();
                let waited = worker
                    .wait_for_work(&queues(&["default"]), Duration::from_secs(30))
                    .await;
                (waited, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await; // let it subscribe (see above)
        enqueue(&*api, [message("a"), message("b")], T0).await;
        let (waited, elapsed) = within(PROMPTLY * 2, "the idle worker", idle)
            .await
            .expect("idle worker task");
        waited.expect("wait_for_work");
        assert!(elapsed < PROMPTLY, "the worker woke after {elapsed:?}");

        // A client waiting on the API wakes when the worker settles.
        let [a, b] = <[Delivery; 2]>::try_from(reserve(&*worker, &["default"], 2, T0).await)
            .expect("two deliveries");
        let client = {
            let api = Arc::clone(&api);
            tokio::spawn(async move {
                let started = Instant::now();
                let record = api.wait("a", Duration::from_secs(30)).await;
                (record, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        finish(&*worker, &a, "3", T0 + 1).await;
        let (record, elapsed) = within(PROMPTLY * 2, "the waiting client", client)
            .await
            .expect("client task");
        assert_eq!(
            record
                .expect("wait")
                .and_then(|r| r.output().map(String::from)),
            Some("3".into())
        );
        assert!(elapsed < PROMPTLY, "the client woke after {elapsed:?}");

        // A revoke with terminate on the API reaches the worker holding the task.
        let mut terminations = worker.terminations().await.expect("terminations");
        assert_eq!(
            api.revoke("b", true, T0 + 2).await.expect("revoke"),
            Revoked::Running { terminating: true }
        );
        let id = within(PROMPTLY, "the termination request", terminations.recv()).await;
        assert_eq!(id.as_deref(), Some("b"));
        assert!(worker.terminating(&b.id).await.expect("terminating"));
    }

    /// Reliability S5 in miniature: after a busy run through most stories, each in its own
    /// namespace on one server, every key is `wtq:{<namespace>}:…` (one hash slot per
    /// namespace, and nothing outside the prefix).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_key_is_under_its_namespace() {
        let server = RedisServer::start();
        macro_rules! in_namespace {
            ($($story:ident),* $(,)?) => {{
                let mut namespaces = Vec::new();
                $(
                    let namespace = stringify!($story).replace('_', "-");
                    super::$story(connect(&server, &namespace).await).await;
                    namespaces.push(namespace);
                )*
                namespaces
            }};
        }
        let namespaces = in_namespace!(
            a_finished_task_keeps_its_result,
            higher_priorities_run_first_and_equal_ones_in_enqueue_order,
            a_task_with_an_eta_waits_until_it_is_due,
            an_expired_task_is_revoked_and_never_delivered,
            an_idempotency_key_returns_the_first_task,
            a_zombie_workers_late_result_is_rejected,
            a_message_is_dead_lettered_after_max_deliveries,
            a_retry_waits_for_its_eta_then_runs_as_the_next_attempt,
            marks_show_in_the_record_only_under_the_lease,
            revoking_a_running_task_with_terminate_tells_its_worker,
            purge_revokes_every_waiting_message_of_its_queue,
            the_registry_keeps_every_version_newest_first,
        );

        let keys = server.keys();
        assert!(!keys.is_empty(), "the stories stored nothing?");
        let stray: Vec<&String> = keys
            .iter()
            .filter(|key| {
                !namespaces
                    .iter()
                    .any(|namespace| key.starts_with(&format!("wtq:{{{namespace}}}:")))
            })
            .collect();
        assert!(
            stray.is_empty(),
            "keys outside wtq:{{<namespace>}}: {stray:?}"
        );
        for namespace in &namespaces {
            let prefix = format!("wtq:{{{namespace}}}:");
            assert!(
                keys.iter().any(|key| key.starts_with(&prefix)),
                "no key under {prefix}"
            );
        }
    }

    /// The tenancy stories leave keys only under `wtq:{<namespace>}:` and in the two global
    /// registry hashes, `wtq:tenants` and `wtq:tokens` (each story on its own server: they
    /// reuse namespace names).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tenancy_keys_stay_in_namespaces_but_the_registry() {
        let mut seen = Vec::new();
        macro_rules! on_own_server {
            ($($story:ident),* $(,)?) => {$(
                let server = RedisServer::start();
                super::$story(connect(&server, "root").await).await;
                seen.extend(server.keys());
            )*};
        }
        on_own_server!(
            namespaces_are_isolated,
            tenants_and_tokens_round_trip_and_tokens_revoke,
            a_concurrency_cap_holds_across_workers,
            the_rate_limiter_allows_a_burst_then_paces,
            usage_counts_exactly_the_committed_settlements,
            events_follow_a_tasks_lifecycle_in_order,
        );
        let namespaced = |key: &str| {
            key.strip_prefix("wtq:{")
                .and_then(|rest| rest.split_once("}:"))
                .is_some_and(|(namespace, rest)| {
                    !namespace.is_empty()
                        && !rest.is_empty()
                        && namespace
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                })
        };
        let stray: Vec<&String> = seen
            .iter()
            .filter(|key| !namespaced(key) && *key != "wtq:tenants" && *key != "wtq:tokens")
            .collect();
        assert!(stray.is_empty(), "keys outside the layout: {stray:?}");
        for expected in [
            "wtq:tenants",
            "wtq:tokens",
            "wtq:{acme}:usage",
            "wtq:{root}:rate:enqueue",
            "wtq:{acme}:events-on",
            "wtq:{acme}:events",
        ] {
            assert!(seen.iter().any(|key| key == expected), "no {expected}");
        }
    }

    async fn broker_revoke(broker: &RedisBroker, id: &str) -> Revoked {
        broker.revoke(id, false, T0 + 1).await.expect("revoke")
    }
}

// ---------------------------------------------------------------------------------------------
// The two brokers
// ---------------------------------------------------------------------------------------------

fn memory_broker() -> MemoryBroker {
    MemoryBroker::new()
}

/// A broker on its own fresh server; keep the server alive as long as the broker.
async fn redis_broker() -> (RedisServer, RedisBroker) {
    let server = RedisServer::start();
    let broker = connect(&server, "test").await;
    (server, broker)
}

async fn connect(server: &RedisServer, namespace: &str) -> RedisBroker {
    RedisBroker::connect(&server.url(), namespace)
        .await
        .unwrap_or_else(|error| panic!("connecting to {}: {error}", server.url()))
}

// ---------------------------------------------------------------------------------------------
// The stories' vocabulary
// ---------------------------------------------------------------------------------------------

/// A task `math.add([1, 2])` on `default`, priority 0, with the default limits.
fn message(id: &str) -> TaskMessage {
    TaskMessage {
        id: id.to_string(),
        component: "math".into(),
        digest: None,
        task: "add".into(),
        args: "[1, 2]".into(),
        queue: "default".into(),
        priority: 0,
        eta_ms: None,
        expires_ms: None,
        max_retries: None,
        retry_backoff: None,
        limits: LimitOverrides::default(),
        max_deliveries: DEFAULT_MAX_DELIVERIES,
        result_expires_ms: DEFAULT_RESULT_EXPIRES_MS,
        created_ms: T0,
        batch: false,
    }
}

fn on_queue(message: TaskMessage, queue: &str) -> TaskMessage {
    TaskMessage {
        queue: queue.into(),
        ..message
    }
}

fn task(message: TaskMessage) -> NewTask {
    NewTask {
        message,
        idempotency_key: None,
    }
}

fn keyed(message: TaskMessage, key: &str) -> NewTask {
    NewTask {
        message,
        idempotency_key: Some(key.into()),
    }
}

fn created(id: &str) -> Enqueued {
    Enqueued {
        id: id.into(),
        created: true,
    }
}

fn existing(id: &str) -> Enqueued {
    Enqueued {
        id: id.into(),
        created: false,
    }
}

fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

fn lease(delivery: &Delivery) -> Lease {
    Lease {
        id: delivery.id.clone(),
        token: delivery.token,
    }
}

fn failure(kind: &str, message: &str) -> TaskFailure {
    TaskFailure {
        kind: kind.into(),
        message: message.into(),
    }
}

fn progress(done: u64, total: u64) -> Progress {
    Progress {
        done,
        total,
        note: format!("{done} of {total}"),
    }
}

/// The attempt a worker of [`WORKER`] reports after running `delivery` successfully.
fn succeeded(delivery: &Delivery, output: &str, now: u64) -> Attempt {
    Attempt {
        attempt: delivery.attempt,
        worker: WORKER.into(),
        digest: Some("a".repeat(64)),
        received_ms: delivery.received_ms,
        started_ms: Some(delivery.received_ms),
        finished_ms: now,
        state: State::Success,
        output: Some(output.into()),
        error: None,
        duration_ms: Some((now - delivery.received_ms) as f64),
        fuel: Some(1_000),
        cpu_ms: None,
        peak_memory: Some(65_536),
        log: "ran\n".into(),
    }
}

fn failed(delivery: &Delivery, why: &str, now: u64) -> Attempt {
    Attempt {
        state: State::Failure,
        output: None,
        error: Some(failure("failed", why)),
        ..succeeded(delivery, "null", now)
    }
}

fn upload(name: &str, digit: char, bytes: &[u8], deployed_ms: u64) -> Upload {
    Upload {
        name: name.into(),
        version: Version {
            digest: digit.to_string().repeat(64),
            deployed_ms,
            tasks: vec![TaskInfo {
                name: "add".into(),
                doc: "Adds two numbers.".into(),
                params: vec!["x".into(), "y".into()],
            }],
            size: bytes.len() as u64 * 3,
        },
        compressed: bytes.to_vec(),
    }
}

fn component_record<const N: usize>(name: &str, newest_first: [&Upload; N]) -> ComponentRecord {
    ComponentRecord {
        name: name.into(),
        versions: newest_first
            .iter()
            .map(|upload| upload.version.clone())
            .collect(),
    }
}

fn ids(deliveries: &[Delivery]) -> Vec<&str> {
    deliveries
        .iter()
        .map(|delivery| delivery.id.as_str())
        .collect()
}

fn kind(record: &TaskRecord) -> Option<&str> {
    record.error.as_ref().map(|error| error.kind.as_str())
}

fn one(mut deliveries: Vec<Delivery>) -> Delivery {
    assert_eq!(
        deliveries.len(),
        1,
        "expected one delivery, got {:?}",
        ids(&deliveries)
    );
    deliveries.pop().expect("one delivery")
}

/// Enqueues messages that must all be new.
async fn enqueue(broker: &impl Broker, messages: impl IntoIterator<Item = TaskMessage>, now: u64) {
    let tasks: Vec<NewTask> = messages.into_iter().map(task).collect();
    let expected: Vec<Enqueued> = tasks.iter().map(|task| created(&task.message.id)).collect();
    let enqueued = broker.enqueue(tasks, now).await.expect("enqueue");
    assert_eq!(enqueued, expected);
}

/// Leases up to `max` messages to [`WORKER`] for [`LEASE_MS`].
async fn reserve(broker: &impl Broker, from: &[&str], max: usize, now: u64) -> Vec<Delivery> {
    broker
        .reserve(WORKER, &queues(from), max, LEASE_MS, now)
        .await
        .expect("reserve")
}

async fn settle(
    broker: &impl Broker,
    delivery: &Delivery,
    settlement: Settlement,
    now: u64,
) -> Settled {
    let settles = vec![Settle {
        lease: lease(delivery),
        settlement,
    }];
    let settled = broker.settle(settles, now).await.expect("settle");
    assert_eq!(settled.len(), 1, "one answer per settlement");
    settled[0]
}

/// Settles a delivery as a success with this output, which must take effect.
async fn finish(broker: &impl Broker, delivery: &Delivery, output: &str, now: u64) {
    let settlement = Settlement::Finish(succeeded(delivery, output, now));
    assert_eq!(
        settle(broker, delivery, settlement, now).await,
        Settled::Committed,
        "finishing {}",
        delivery.id
    );
}

async fn mark(
    broker: &impl Broker,
    delivery: &Delivery,
    state: State,
    progress: Option<Progress>,
    now: u64,
) {
    let marks = [Mark {
        lease: lease(delivery),
        state,
        progress,
        at_ms: now,
    }];
    broker.mark(&marks).await.expect("mark");
}

async fn reap(broker: &impl Broker, now: u64) -> usize {
    broker.reap(now, 100).await.expect("reap")
}

async fn record(broker: &impl Broker, id: &str) -> TaskRecord {
    broker
        .record(id)
        .await
        .expect("record")
        .unwrap_or_else(|| panic!("no record for {id}"))
}

async fn depth(broker: &impl Broker, queue: &str) -> usize {
    broker.depth(queue).await.expect("depth")
}

async fn dead_ids(broker: &impl Broker, limit: usize) -> Vec<String> {
    let dead = broker.dead(limit).await.expect("dead");
    dead.into_iter().map(|record| record.id).collect()
}

/// Enqueues `id` with `max_deliveries` 1 and lets its only delivery's worker die.
async fn dead_letter_by_crashes(broker: &impl Broker, id: &str, now: &mut u64) {
    let poison = TaskMessage {
        max_deliveries: 1,
        ..message(id)
    };
    enqueue(broker, [poison], *now).await;
    let delivery = one(reserve(broker, &["default"], 1, *now).await);
    assert_eq!(delivery.id, id);
    *now += LEASE_MS + 1;
    assert_eq!(reap(broker, *now).await, 1);
    assert_eq!(kind(&record(broker, id).await), Some("dead_lettered"));
}

/// Awaits `future`, failing the test (rather than hanging it) after `limit`.
async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {limit:?}"))
}
