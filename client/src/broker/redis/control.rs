//! [`Control`] over Redis pub/sub: requests are published on the namespace's `control`
//! channel, replies on `reply:<request id>`. The sender subscribes to its reply channel before
//! it publishes, so no reply is missed, and PUBLISH's count of receivers tells it how many
//! workers heard the request: it stops waiting once they all answered. For that count to be
//! one per worker, each [`Control::control_requests`] listens on a pub/sub connection of its
//! own (the broker's shared one would count every worker of a process once).

use std::time::Duration;

use tokio::sync::mpsc;

use super::RedisBroker;
use super::listener::Listener;
use crate::broker::Error;
use crate::broker::control::{Control, ControlReply, ControlRequest, REQUEST_BUFFER, collect};

/// Replies buffered per request before more are dropped (one per worker).
const REPLY_BUFFER: usize = 4096;

impl RedisBroker {
    fn control_channel(&self) -> String {
        format!("{}control", self.keys().prefix())
    }

    fn reply_channel(&self, request: &str) -> String {
        format!("{}reply:{request}", self.keys().prefix())
    }
}

impl Control for RedisBroker {
    async fn broadcast(
        &self,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<Vec<ControlReply>, Error> {
        let listener = &self.inner.shared.listener;
        let mut raw = listener
            .forward(self.reply_channel(&request.id), None, REPLY_BUFFER)
            .await;
        let (sender, mut replies) = mpsc::channel(REPLY_BUFFER);
        let decoder = tokio::spawn(async move {
            while let Some(text) = raw.recv().await {
                match serde_json::from_str::<ControlReply>(&text) {
                    Ok(reply) => {
                        if sender.send(reply).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "ignoring an undecodable control reply"),
                }
            }
        });
        let published: Result<usize, Error> = self
            .query(
                redis::cmd("PUBLISH")
                    .arg(self.control_channel())
                    .arg(super::json(request)),
            )
            .await;
        let collected = match published {
            Ok(heard) => Ok(collect(request, heard, &mut replies, timeout).await),
            Err(error) => Err(error),
        };
        // Ends the reply subscription on every path.
        decoder.abort();
        collected
    }

    async fn control_requests(&self) -> Result<mpsc::Receiver<ControlRequest>, Error> {
        let shared = &self.inner.shared;
        let listener = Listener::new(shared.client.clone(), shared.commands.clone());
        let mut raw = listener
            .forward(self.control_channel(), None, REQUEST_BUFFER)
            .await;
        let (sender, requests) = mpsc::channel(REQUEST_BUFFER);
        tokio::spawn(async move {
            // Owns the connection: it closes with this task, when the receiver is dropped.
            let _listener = listener;
            loop {
                let text = tokio::select! {
                    () = sender.closed() => return,
                    text = raw.recv() => match text {
                        Some(text) => text,
                        None => return,
                    },
                };
                match serde_json::from_str::<ControlRequest>(&text) {
                    Ok(request) => {
                        if sender.send(request).await.is_err() {
                            return;
                        }
                    }
                    // From a newer client, say: its sender sees this worker not answer.
                    Err(error) => {
                        tracing::warn!(%error, request = %text, "ignoring a control request this worker does not understand")
                    }
                }
            }
        });
        Ok(requests)
    }

    async fn delayed(&self, queue: &str, limit: usize) -> Result<Vec<(String, u64)>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let found: Vec<(String, f64)> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys().delayed(queue))
                    .arg(0)
                    .arg(limit - 1)
                    .arg("WITHSCORES"),
            )
            .await?;
        Ok(found
            .into_iter()
            .map(|(id, due)| (id, due.max(0.0) as u64))
            .collect())
    }

    async fn reply(&self, reply: &ControlReply) -> Result<(), Error> {
        let _: i64 = self
            .query(
                redis::cmd("PUBLISH")
                    .arg(self.reply_channel(&reply.request))
                    .arg(super::json(reply)),
            )
            .await?;
        Ok(())
    }
}
