//! Every Redis key, channel and task-hash field name the Redis broker uses, built in one place.
//!
//! All keys of a namespace are `wtq:{<namespace>}:<rest>`: the braces are a Redis Cluster hash
//! tag, so the whole namespace lives in one slot and every Lua script may touch any of its keys.
//! The scripts receive [`Keys::prefix`] and derive per-task and per-queue keys from it with the
//! same spellings as here (`task:`, `ready:`, `delayed:`, `idem:`, and the `done:`/`work:`
//! channels); keys that do not depend on the data (`leases`, `dead`, ...) are passed in `KEYS`.
//!
//! Layout:
//!
//! | key                   | type   | holds                                                   |
//! |-----------------------|--------|---------------------------------------------------------|
//! | `task:<id>`           | hash   | the message and its mutable fields, see [`field`]       |
//! | `ready:<queue>`       | zset   | ready ids, score = priority rank · 2^44 + enqueue seq   |
//! | `delayed:<queue>`     | zset   | ids waiting for their eta, score = eta (Unix ms)        |
//! | `leases`              | zset   | leased ids, score = lease expiry (Unix ms)              |
//! | `dead`                | zset   | dead-lettered ids, score = seq when dead-lettered       |
//! | `terminating`         | set    | running ids a terminate was requested for               |
//! | `idem:<key>`          | string | first task id of an idempotency key, with a TTL         |
//! | `seq`                 | string | counter: enqueue order and dead-letter order            |
//! | `fence`               | string | counter: fencing tokens                                 |
//! | `registry`            | hash   | component name → `ComponentRecord` JSON                 |
//! | `blob:<digest>`       | string | gzip-compressed component bytes                         |
//! | `quota`               | hash   | the namespace's caps: `concurrency` (absent: uncapped)  |
//! | `usage`               | hash   | metered usage: `tasks`, `attempts`, `fuel`, `cpu_us`,   |
//! |                       |        | `memory_kib_ms` (absent: 0)                             |
//! | `rate:<bucket>`       | string | GCRA theoretical arrival time (Unix µs), with a TTL     |
//! | `task-rates`          | hash   | task (`component.task`) → its rate limit, `N/ms` text   |
//! | `task-time-limits`    | hash   | task → its time limit (ms), set at run time             |
//! | `task-rate:<task>`    | string | a rate-limited task's next free slot (Unix µs), w/ TTL  |
//! | `task-rate-defer:<task>` | string | its defer cursor: the next deferred message's     |
//! |                       |        | earliest due time (Unix µs), with a TTL                 |
//! | `task-rate-deferred:<task>` | zset | its deferred messages, score = due (Unix ms),    |
//! |                       |        | with a TTL (see `scripts/reserve.lua`)                  |
//! | `task-rate-undefer:<task>` | zset | deferred messages a changed limit is moving back  |
//! |                       |        | to their ready sets (`scripts/set_rate_limit.lua`)      |
//! | `events`              | stream | the event log: task and worker events (fields: `type`,  |
//! |                       |        | `id`, `state`, `at_ms`, `task`, `worker`, `attempt`,    |
//! |                       |        | `error`, `progress`), capped with `MAXLEN ~ <cap>`      |
//! | `events-on`           | string | the log's cap, with a TTL; absent: nothing is logged    |
//! | `flow:<id>`           | string | a workflow's `Tree` JSON, with a TTL                    |
//! | `join:<id>`           | hash   | a workflow join: `size`, `done`, `mode`, `flatten`,     |
//! |                       |        | results `r:<index>`, links (deleted once it fired)      |
//! | `schedules`           | hash   | schedule entry name → `ScheduleEntry` JSON (run time)   |
//! | `schedule-fired`      | hash   | entry name → `Fired` JSON: its last handled tick        |
//! | `beat-leader`         | string | the beat lease `<token>:<holder>`, with a PX expiry     |
//! | `beat-fence`          | string | counter: beat lease tokens                              |
//!
//! Pub/sub channels (not keys, but named the same way): `done:<id>` (a task became final),
//! `work:<queue>` (a message may be ready there), `terminate` (payload: a task id). Events are
//! not published: readers block on the `events` stream (XREAD BLOCK, each on a connection of
//! its own), which also keeps the history a late reader needs.
//!
//! The only keys outside a namespace, shared by all of them (the tenant registry of the hosted
//! service; see `broker::tenancy`):
//!
//! | key           | type | holds                                                      |
//! |---------------|------|------------------------------------------------------------|
//! | `wtq:tenants` | hash | tenant name → `Tenant` JSON                                |
//! | `wtq:tokens`  | hash | SHA-256 hex of an API token → `TokenRecord` JSON           |

use crate::message::MAX_PRIORITY;

/// The first part of every key.
const ROOT: &str = "wtq";
/// The tenant registry: name → `Tenant` JSON. Global: tenants are not in any one namespace.
pub const TENANTS: &str = "wtq:tenants";
/// The token registry: token hash → `TokenRecord` JSON. Global, as a token names its tenant.
pub const TOKENS: &str = "wtq:tokens";
/// Longest namespace accepted: namespaces appear in every key, so they stay short.
pub const MAX_NAMESPACE_LEN: usize = 64;
/// Bits of the ready score left to the enqueue sequence number below the priority rank. 2^44
/// enqueues (27 years at 20,000 a second) fit, and rank · 2^44 + seq stays below 2^53, so the
/// score is an exact integer in a Redis double and in Lua.
pub const SEQ_BITS: u32 = 44;

/// Field names of a task hash. The scripts write (and spell) all of them; Rust reads back the
/// ones named here when it rebuilds a record. The others, for the scripts' own use:
///
/// - `queue`: the message's queue, so scripts need not decode the message;
/// - `score`: the ready-set score, fixed at enqueue, so a message always returns to its place;
/// - `token`: the fencing token of the current lease, non-empty exactly while it is leased;
/// - `attempt`: the current attempt (absent: 1);
/// - `expires`: from the message, when an unstarted message is revoked (absent: never);
/// - `max_deliveries`, `result_ttl`: from the message (`result_expires_ms`);
/// - `rate_slot`: a booked rate-limit slot (Unix µs) while the message waits for it in the
///   delayed set; the delivery at that slot takes no other (see `scripts/reserve.lua`);
/// - `watched`: set by a waiter, so that a finish publishes on `done:<id>` (unwatched tasks
///   skip the PUBLISH).
pub mod field {
    /// The message as JSON, written once at enqueue.
    pub const MESSAGE: &str = "msg";
    /// The state, as `State::as_str`.
    pub const STATE: &str = "state";
    /// Deliveries of the current attempt (absent: 0).
    pub const DELIVERIES: &str = "deliveries";
    pub const WORKER: &str = "worker";
    /// `Progress` JSON; empty for none (the scripts clear it by writing '', which costs no
    /// extra command).
    pub const PROGRESS: &str = "progress";
    /// `TaskFailure` JSON; empty for none, as `progress`.
    pub const ERROR: &str = "error";
    /// When the task became final (Unix ms).
    pub const FINISHED: &str = "finished";
    /// Prefix of the finished attempts' fields: `a:<n>` holds attempt n's `Attempt` JSON.
    pub const ATTEMPT_PREFIX: &str = "a:";
}

/// Why a namespace cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid namespace `{0}`: use 1 to {MAX_NAMESPACE_LEN} ASCII letters, digits, `_` or `-`")]
pub struct InvalidNamespace(pub String);

/// The key builder of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// Whether `namespace` may name a namespace: it goes inside the braces of every key, so only
/// characters that cannot end the hash tag or a key part.
pub fn valid_namespace(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace.len() <= MAX_NAMESPACE_LEN
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Keys {
    pub fn new(namespace: &str) -> Result<Keys, InvalidNamespace> {
        if !valid_namespace(namespace) {
            return Err(InvalidNamespace(namespace.to_string()));
        }
        Ok(Keys {
            prefix: format!("{ROOT}:{{{namespace}}}:"),
        })
    }

    /// `wtq:{<namespace>}:`, which the scripts extend with the spellings below.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub fn task(&self, id: &str) -> String {
        self.key(&format!("task:{id}"))
    }

    pub fn ready(&self, queue: &str) -> String {
        self.key(&format!("ready:{queue}"))
    }

    pub fn delayed(&self, queue: &str) -> String {
        self.key(&format!("delayed:{queue}"))
    }

    pub fn leases(&self) -> String {
        self.key("leases")
    }

    pub fn dead(&self) -> String {
        self.key("dead")
    }

    pub fn terminating(&self) -> String {
        self.key("terminating")
    }

    pub fn seq(&self) -> String {
        self.key("seq")
    }

    pub fn fence(&self) -> String {
        self.key("fence")
    }

    pub fn registry(&self) -> String {
        self.key("registry")
    }

    pub fn blob(&self, digest: &str) -> String {
        self.key(&format!("blob:{digest}"))
    }

    /// The namespace's caps (field `concurrency`, read by the reserve script).
    pub fn quota(&self) -> String {
        self.key("quota")
    }

    /// The namespace's usage counters, incremented by the settle script.
    pub fn usage(&self) -> String {
        self.key("usage")
    }

    /// A rate limiter's bucket.
    pub fn rate(&self, bucket: &str) -> String {
        self.key(&format!("rate:{bucket}"))
    }

    /// Per-task rate limits set by an operator: task → `<count>/<per_ms>` (read by reserve).
    pub fn task_rates(&self) -> String {
        self.key("task-rates")
    }

    /// Per-task time limits set by an operator: task → milliseconds.
    pub fn task_time_limits(&self) -> String {
        self.key("task-time-limits")
    }

    /// A rate-limited task's slot bucket (the reserve script derives it from the prefix).
    pub fn task_rate(&self, task: &str) -> String {
        self.key(&format!("task-rate:{task}"))
    }

    /// A rate-limited task's defer cursor (the reserve script derives it from the prefix).
    pub fn task_rate_defer(&self, task: &str) -> String {
        self.key(&format!("task-rate-defer:{task}"))
    }

    /// A rate-limited task's deferred messages (id → due ms), written by the reserve script.
    pub fn task_rate_deferred(&self, task: &str) -> String {
        self.key(&format!("task-rate-deferred:{task}"))
    }

    /// A task's deferred messages being moved back after its limit changed.
    pub fn task_rate_undefer(&self, task: &str) -> String {
        self.key(&format!("task-rate-undefer:{task}"))
    }

    /// Run-time schedule entries (`wtq schedule add`).
    pub fn schedules(&self) -> String {
        self.key("schedules")
    }

    /// Every schedule entry's last handled tick.
    pub fn schedule_fired(&self) -> String {
        self.key("schedule-fired")
    }

    /// The beat lease: one beat process fires at a time.
    pub fn beat_leader(&self) -> String {
        self.key("beat-leader")
    }

    /// The counter of beat lease tokens.
    pub fn beat_fence(&self) -> String {
        self.key("beat-fence")
    }

    /// A submitted workflow's tree (the scripts derive `join:<id>` keys themselves).
    pub fn workflow(&self, id: &str) -> String {
        self.key(&format!("flow:{id}"))
    }

    /// Present (value: the log's cap) while the event log is on; the scripts log only then.
    pub fn events_on(&self) -> String {
        self.key("events-on")
    }

    /// The event log (a stream), appended by the scripts at every state change while on.
    pub fn events(&self) -> String {
        self.key("events")
    }

    /// Published (by the scripts) when the task becomes final (a finish: if it is watched).
    pub fn done_channel(&self, id: &str) -> String {
        self.key(&format!("done:{id}"))
    }

    /// Published (by the scripts) when a message may have become ready in `queue`, or a
    /// delayed one was added there (a waiting worker recomputes when the next one is due).
    pub fn work_channel(&self, queue: &str) -> String {
        self.key(&format!("work:{queue}"))
    }

    /// Published by `revoke` with terminate; the payload is the task id.
    pub fn terminate_channel(&self) -> String {
        self.key("terminate")
    }
}

/// The high part of a ready score: priority 9 gets rank 0 (first), 0 gets rank 9. Priorities
/// above [`MAX_PRIORITY`] count as it.
pub fn rank_base(priority: u8) -> u64 {
    u64::from(MAX_PRIORITY - priority.min(MAX_PRIORITY)) << SEQ_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        let check = |namespace: &str, valid: bool| {
            assert_eq!(Keys::new(namespace).is_ok(), valid, "{namespace:?}");
        };
        check("test", true);
        check("tenant_42-blue", true);
        check(&"a".repeat(MAX_NAMESPACE_LEN), true);
        check(&"a".repeat(MAX_NAMESPACE_LEN + 1), false);
        check("", false);
        check("a b", false);
        check("a:b", false);
        check("{a}", false);
        check("é", false);
    }

    #[test]
    fn every_key_is_in_the_namespace_slot() {
        let keys = Keys::new("blue").expect("valid namespace");
        let check = |key: String, expected: &str| assert_eq!(key, expected);
        check(keys.task("0193-a"), "wtq:{blue}:task:0193-a");
        check(keys.ready("default"), "wtq:{blue}:ready:default");
        check(keys.delayed("default"), "wtq:{blue}:delayed:default");
        check(keys.leases(), "wtq:{blue}:leases");
        check(keys.dead(), "wtq:{blue}:dead");
        check(keys.terminating(), "wtq:{blue}:terminating");
        check(keys.seq(), "wtq:{blue}:seq");
        check(keys.fence(), "wtq:{blue}:fence");
        check(keys.registry(), "wtq:{blue}:registry");
        check(keys.blob("3f2a"), "wtq:{blue}:blob:3f2a");
        check(keys.schedules(), "wtq:{blue}:schedules");
        check(keys.schedule_fired(), "wtq:{blue}:schedule-fired");
        check(keys.beat_leader(), "wtq:{blue}:beat-leader");
        check(keys.beat_fence(), "wtq:{blue}:beat-fence");
        check(keys.done_channel("x"), "wtq:{blue}:done:x");
        check(keys.work_channel("high"), "wtq:{blue}:work:high");
        check(keys.terminate_channel(), "wtq:{blue}:terminate");
        check(keys.quota(), "wtq:{blue}:quota");
        check(keys.usage(), "wtq:{blue}:usage");
        check(keys.rate("enqueue"), "wtq:{blue}:rate:enqueue");
        check(keys.task_rates(), "wtq:{blue}:task-rates");
        check(keys.task_time_limits(), "wtq:{blue}:task-time-limits");
        check(keys.task_rate("math.add"), "wtq:{blue}:task-rate:math.add");
        check(
            keys.task_rate_defer("math.add"),
            "wtq:{blue}:task-rate-defer:math.add",
        );
        check(
            keys.task_rate_deferred("math.add"),
            "wtq:{blue}:task-rate-deferred:math.add",
        );
        check(
            keys.task_rate_undefer("math.add"),
            "wtq:{blue}:task-rate-undefer:math.add",
        );
        check(keys.events_on(), "wtq:{blue}:events-on");
        check(keys.events(), "wtq:{blue}:events");
        // A brace in an id cannot move a key to another slot: only the first `{...}` counts.
        check(keys.task("{x}"), "wtq:{blue}:task:{x}");
        assert_eq!(keys.prefix(), "wtq:{blue}:");
    }

    #[test]
    fn higher_priority_ranks_first_and_seq_never_reaches_the_next_rank() {
        let check = |priority: u8, expected: u64| assert_eq!(rank_base(priority), expected);
        check(9, 0);
        check(200, 0);
        check(8, 1 << SEQ_BITS);
        check(0, 9 << SEQ_BITS);
        // The largest score is exact in an f64 (Redis scores, Lua numbers).
        let largest = rank_base(0) + (1 << SEQ_BITS) - 1;
        assert!(largest < 1 << f64::MANTISSA_DIGITS);
        assert_eq!(largest as f64 as u64, largest);
    }
}
