//! `GET /v1/events[?task=ID][&after=CURSOR]`: the tenant's event log as server-sent events —
//! `event: task` (a task's state change) or `event: worker` (online, heartbeat, offline),
//! `data:` the `Event` JSON (a task event's `id`, `state` and `at_ms` as before, plus `type`,
//! `cursor`, `task`, `worker` and an ended attempt's figures) — with
//! keep-alive comments so proxies keep the connection open. It starts at the newest event,
//! or after `after` (or a `Last-Event-ID` header), reads the same
//! log as `wtq events`, and ends when the service shuts down. A watcher that falls behind
//! holds up only its own reader.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use wtq_client::broker::Tenancy;

use super::auth::TenantCaller;
use super::body::Query;
use super::error::ApiResult;
use super::state::AppState;

/// How often an idle stream sends a comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Query of `events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this task's events.
    task: Option<String>,
    /// Start after this event's cursor (`0`: the whole log kept).
    after: Option<String>,
}

/// `GET /v1/events`.
pub async fn events(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let last_seen = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let after = query.after.clone().or(last_seen);
    let receiver = shared.call(tenant.broker.events(after)).await?;
    let events = stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        Some((event, receiver))
    })
    .filter(move |event| {
        let wanted = query
            .task
            .as_ref()
            .is_none_or(|task| event.id.as_ref() == Some(task));
        std::future::ready(wanted)
    })
    .map(|event| {
        // An `Event` always serialises; an event that somehow did not is sent as a comment
        // rather than ending the stream.
        let name = if event.is_task() { "task" } else { "worker" };
        Ok(Event::default()
            .event(name)
            .json_data(&event)
            .unwrap_or_else(|_| Event::default().comment("an event could not be encoded")))
    })
    .take_until(async move { shared.shutting_down().await });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
