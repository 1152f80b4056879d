//! `wtq events [--json] [--task ID] [--after CURSOR]`: tails the event log of a namespace (a
//! broker URL) or of the caller's tenant (the service's `GET /v1/events`), live, until
//! interrupted. `--json` prints one `Event` object per line; otherwise one readable line each.
//! While it runs the log is on (see `Tenancy::enable_events`).

use clap::Args;
use wtq_client::Endpoint;
use wtq_client::broker::Tenancy;
use wtq_client::tenancy::Event;

use super::queue::{Connection, broker_failure};
use super::{Failure, exit, say, visible};
use crate::units::format_rfc3339;

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// One JSON object per line instead of readable lines.
    #[arg(long)]
    pub json: bool,
    /// Only this task's events.
    #[arg(long)]
    pub task: Option<String>,
    /// Start after this cursor (an event's `cursor`; `0`: every event the log still keeps)
    /// instead of at the newest event.
    #[arg(long)]
    pub after: Option<String>,
}

pub async fn events(args: EventsArgs) -> Result<u8, Failure> {
    let mut receiver = match args.connection.endpoint().await? {
        Endpoint::Broker(broker) => broker
            .events(args.after.clone())
            .await
            .map_err(broker_failure)?,
        Endpoint::Http(api) => api
            .events(args.after.as_deref(), args.task.as_deref())
            .await
            .map_err(broker_failure)?,
    };
    // On stderr, so that `--json` output stays pure: the tail is live from here on.
    eprintln!("tailing events (Ctrl-C to stop)");
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let event = tokio::select! {
            event = receiver.recv() => event,
            _ = &mut interrupted => return Ok(exit::SUCCESS),
        };
        let Some(event) = event else {
            return Err(Failure::new(exit::UNAVAILABLE, "the event stream ended"));
        };
        if args
            .task
            .as_ref()
            .is_some_and(|task| event.id.as_ref() != Some(task))
        {
            continue;
        }
        say(render(&event, args.json));
    }
}

fn render(event: &Event, json: bool) -> String {
    if json {
        serde_json::to_string(event).unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
    } else {
        visible(&format!("{} {}", format_rfc3339(event.at_ms), event.line()))
    }
}
