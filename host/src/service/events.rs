//! `GET /v1/events[?task=ID]`: the tenant's task events as server-sent events (`event: task`,
//! `data: TaskEvent`), with keep-alive comments so proxies keep the connection open. The
//! stream ends when the service shuts down. A watcher that falls behind loses events (the
//! broker drops them rather than buffer without bound).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
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
}

/// `GET /v1/events`.
pub async fn events(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let receiver = shared.call(tenant.broker.events()).await?;
    let events = stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        Some((event, receiver))
    })
    .filter(move |event| {
        let wanted = query.task.as_ref().is_none_or(|task| *task == event.id);
        std::future::ready(wanted)
    })
    .map(|event| {
        // A `TaskEvent` always serialises; an event that somehow did not is sent as a comment
        // rather than ending the stream.
        Ok(Event::default()
            .event("task")
            .json_data(&event)
            .unwrap_or_else(|_| Event::default().comment("an event could not be encoded")))
    })
    .take_until(async move { shared.shutting_down().await });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
