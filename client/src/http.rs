//! The service's HTTP API from the client side: [`HttpApi`] speaks `docs/http-api.md` with the
//! bodies of [`crate::api`]. It is a [`Producer`] (so `Client`, `AsyncResult` and every client
//! command work over it) and also offers deploy, the tenant's own calls and the admin calls.
//!
//! Errors map to [`Error`] variants a caller can branch on: 401 and 403 `forbidden` →
//! [`Error::Denied`]; 429 → [`Error::RateLimited`]; 400, 409, 413 and quota refusals →
//! [`Error::Rejected`] with the server's kind and one-line message; 404 `not_found` → `None`
//! (or [`Revoked::Unknown`], `false`, 0) exactly as a broker answers an unknown id; connection
//! failures and 503 → [`Error::ServiceUnreachable`].
//!
//! One connection pool per `HttpApi` (clones share it): HTTP/1.1 with keep-alive, no redirects
//! (the token goes to the URL given and nowhere else), rustls with the ring provider checking
//! certificates against the system's roots, as `rediss://` does. The token is never printed:
//! not in errors, not in `Debug`.
//!
//! The event stream (`GET /v1/events`, server-sent events) is read by [`HttpApi::events`] into
//! the same [`Event`]s a broker's log gives.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER,
};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    BatchRequest, BatchResponse, CountResponse, EnqueueRequest, EnqueueResponse, ErrorBody,
    MAX_WAIT, RetryDeadRequest, RevokeRequest, RevokeResponse, TenantRequest, TokenRequest,
    TokenResponse, WorkflowResponse,
};
use crate::broker::{Enqueued, Error, Revoked};
use crate::client::ClientError;
use crate::message::TaskRecord;
use crate::producer::{ComponentCache, Producer};
use crate::registry::ComponentRecord;
use crate::tenancy::{Event, Quotas, Tenant, TokenRecord, Usage};
use crate::workflow::{Node, Tree};

/// How long connecting (TCP and TLS) may take before the service counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an ordinary request may take from start to last byte: the service answers
/// within about a second or says 503, so this only catches a stalled connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a deploy may take: uploading up to 64 MiB and the service validating it.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Piece of a deploy's body handed to the connection at a time: one progress report each,
/// about a thousand for the largest upload, and small enough that a slow link still moves.
const UPLOAD_CHUNK: usize = 64 << 10;
/// How much longer than the wait it asked for a long poll may take before it counts as lost.
const WAIT_MARGIN: Duration = Duration::from_secs(10);
/// Largest reply read: a dead-letter page or a registry listing is far smaller, and a broken
/// or hostile server cannot make the client hold more.
const MAX_REPLY_BYTES: usize = 64 << 20;
/// Longest server text kept in an error message (the API's messages are one short line).
const MAX_MESSAGE_CHARS: usize = 300;
/// Shortest round of a wait: a server that answers a long poll at once instead of holding it
/// is asked at most ten times a second, not in a busy loop.
const MIN_ROUND: Duration = Duration::from_millis(100);
/// How long the event stream may be silent before it counts as lost: the service sends a
/// keep-alive comment every 15 s.
const EVENTS_SILENCE: Duration = Duration::from_secs(45);
/// Longest server-sent event accepted (one event's JSON is well under a kilobyte).
const MAX_SSE_EVENT: usize = 1 << 20;
/// Events the receiver of [`HttpApi::events`] holds before the reader waits.
const EVENTS_BUFFER: usize = 1024;
/// Retry-After when a 429 has none the client can read (the API sends whole seconds).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The service's API at one base URL, with an optional bearer token. Cheap to clone.
#[derive(Clone)]
pub struct HttpApi {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    /// The base URL; routes are appended as path segments.
    base: Url,
    /// The URL as errors show it.
    shown: String,
    /// `Bearer <token>`, marked sensitive so no debug output shows it.
    authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi")
            .field("url", &self.inner.shown)
            .field("token", &self.inner.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

impl HttpApi {
    /// The API at `url` (`http://HOST:PORT` or `https://HOST[:PORT][/PREFIX]`), sending `token`
    /// as a bearer token when given. Connects lazily: the first request reports an
    /// unreachable service.
    pub fn new(url: &str, token: Option<&str>) -> Result<HttpApi, Error> {
        let bad = |reason: String| Error::Url {
            // A password in the URL must not reach an error message or a log.
            url: crate::broker::redis::redact(url),
            reason,
        };
        let base = Url::parse(url).map_err(|error| bad(error.to_string()))?;
        let https = match base.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(bad("expected http://HOST:PORT or https://HOST".into())),
        };
        if base.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host".into()));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(bad(
                "credentials do not go in the URL: pass the API token separately".into(),
            ));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad(
                "no query or fragment: the API's routes are appended to the URL".into(),
            ));
        }
        let authorization = match token.filter(|token| !token.is_empty()) {
            Some(token) => {
                let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    bad("the token has characters an HTTP header cannot carry".into())
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(https).map_err(bad)?)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .user_agent(concat!("wtq-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| bad(format!("cannot set up the HTTP client: {error}")))?;
        let shown = base.as_str().trim_end_matches('/').to_string();
        Ok(HttpApi {
            inner: Arc::new(Inner {
                client,
                base,
                shown,
                authorization,
            }),
        })
    }

    /// The base URL, as errors show it.
    pub fn url(&self) -> &str {
        &self.inner.shown
    }

    /// `POST /v1/tasks`: enqueues one call (checked by the service against its registry).
    pub async fn enqueue(&self, call: &EnqueueRequest) -> Result<Enqueued, Error> {
        let url = self.route(&["v1", "tasks"])?;
        let reply: EnqueueResponse = self.required(Method::POST, url, Some(call)).await?;
        Ok(Enqueued {
            id: reply.id,
            created: reply.created,
        })
    }

    /// `POST /v1/tasks/batch`: enqueues up to 10,000 calls at once, all checked before any is
    /// stored; ids in request order.
    pub async fn enqueue_batch(&self, calls: Vec<EnqueueRequest>) -> Result<Vec<Enqueued>, Error> {
        let sent = calls.len();
        let url = self.route(&["v1", "tasks", "batch"])?;
        let reply: BatchResponse = self
            .required(Method::POST, url, Some(&BatchRequest { tasks: calls }))
            .await?;
        if reply.tasks.len() != sent {
            return Err(self.failed(format!(
                "a batch of {sent} calls was answered with {} ids",
                reply.tasks.len()
            )));
        }
        Ok(reply
            .tasks
            .into_iter()
            .map(|task| Enqueued {
                id: task.id,
                created: task.created,
            })
            .collect())
    }

    /// `POST /v1/workflows[?id=ID]`: submits a workflow document (checked by the service).
    pub async fn submit_workflow(
        &self,
        workflow: &Node,
        id: Option<&str>,
    ) -> Result<WorkflowResponse, Error> {
        let mut url = self.route(&["v1", "workflows"])?;
        if let Some(id) = id {
            url.query_pairs_mut().append_pair("id", id);
        }
        self.required(Method::POST, url, Some(workflow)).await
    }

    /// `GET /v1/workflows/{id}`: a workflow's tree, if it exists.
    pub async fn workflow(&self, id: &str) -> Result<Option<Tree>, Error> {
        let url = self.route(&["v1", "workflows", id])?;
        let reply: Option<WorkflowResponse> = self.optional(Method::GET, url, None::<&()>).await?;
        Ok(reply.map(|reply| reply.tree))
    }

    /// `GET /v1/tasks/{id}`: the task's record, if it exists.
    pub async fn record(&self, id: &str) -> Result<Option<TaskRecord>, Error> {
        let url = self.route(&["v1", "tasks", id])?;
        self.optional(Method::GET, url, None::<&()>).await
    }

    /// Long-polls `GET /v1/tasks/{id}/wait` in rounds of at most [`MAX_WAIT`] until the task
    /// is final or `timeout` passes; its record then, or `None` if there is no such task.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Option<TaskRecord>, Error> {
        let url = self.route(&["v1", "tasks", id, "wait"])?;
        wait_in_rounds(timeout, |round| {
            let mut url = url.clone();
            url.query_pairs_mut()
                .append_pair("timeout_ms", &round.as_millis().to_string());
            let request = self.request(Method::GET, url, None::<&()>, round + WAIT_MARGIN);
            async move { self.answer(request?).await }
        })
        .await
    }

    /// `POST /v1/tasks/{id}/revoke`.
    pub async fn revoke(&self, id: &str, terminate: bool) -> Result<Revoked, Error> {
        let url = self.route(&["v1", "tasks", id, "revoke"])?;
        let reply: Option<RevokeResponse> = self
            .optional(Method::POST, url, Some(&RevokeRequest { terminate }))
            .await?;
        Ok(reply.map_or(Revoked::Unknown, RevokeResponse::revoked))
    }

    /// `POST /v1/queues/{queue}/purge`: how many waiting messages were removed.
    pub async fn purge(&self, queue: &str) -> Result<usize, Error> {
        let url = self.route(&["v1", "queues", queue, "purge"])?;
        let reply: CountResponse = self.required(Method::POST, url, None::<&()>).await?;
        Ok(reply.count)
    }

    /// `GET /v1/dead?limit=N`: dead-lettered tasks, most recent first.
    pub async fn dead(&self, limit: usize) -> Result<Vec<TaskRecord>, Error> {
        let mut url = self.route(&["v1", "dead"])?;
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string());
        self.required(Method::GET, url, None::<&()>).await
    }

    /// `POST /v1/dead/retry`: queues one dead-lettered task again (0 if there is no such
    /// task), or all of them when `id` is `None`.
    pub async fn retry_dead(&self, id: Option<&str>) -> Result<usize, Error> {
        let url = self.route(&["v1", "dead", "retry"])?;
        let body = RetryDeadRequest {
            id: id.map(str::to_string),
        };
        let reply: Option<CountResponse> = self.optional(Method::POST, url, Some(&body)).await?;
        Ok(reply.map_or(0, |reply| reply.count))
    }

    /// `DELETE /v1/dead`: how many dead-lettered tasks were deleted.
    pub async fn purge_dead(&self) -> Result<usize, Error> {
        let url = self.route(&["v1", "dead"])?;
        let reply: CountResponse = self.required(Method::DELETE, url, None::<&()>).await?;
        Ok(reply.count)
    }

    /// `GET /v1/components`: every deployed component, sorted by name.
    pub async fn components(&self) -> Result<Vec<ComponentRecord>, Error> {
        let url = self.route(&["v1", "components"])?;
        self.required(Method::GET, url, None::<&()>).await
    }

    /// `GET /v1/components/{name}`.
    pub async fn component(&self, name: &str) -> Result<Option<ComponentRecord>, Error> {
        let url = self.route(&["v1", "components", name])?;
        self.optional(Method::GET, url, None::<&()>).await
    }

    /// `POST /v1/components/{name}`: uploads a component (gzip-compressed on the way); the
    /// service validates it and makes it the current version of `name`.
    pub async fn deploy(&self, name: &str, wasm: Vec<u8>) -> Result<ComponentRecord, Error> {
        self.deploy_with_progress(name, wasm, |_, _| {}).await
    }

    /// [`deploy`](Self::deploy), calling `on_progress(sent, total)` as the compressed body is
    /// handed to the connection, [`UPLOAD_CHUNK`] bytes at a time: `total` is the compressed
    /// size, and the last call has `sent == total` (the service then validates the component
    /// before it answers).
    pub async fn deploy_with_progress(
        &self,
        name: &str,
        wasm: Vec<u8>,
        on_progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<ComponentRecord, Error> {
        let url = self.route(&["v1", "components", name])?;
        // Compressing tens of MiB takes long enough to hold up other tasks on this thread.
        let gzipped = tokio::task::spawn_blocking(move || gzip(&wasm))
            .await
            .map_err(|error| error.to_string())
            .and_then(|result| result.map_err(|error| error.to_string()))
            .map_err(|error| Error::Corrupt(format!("compressing component `{name}`: {error}")))?;
        // The length is declared, not left to the body: the service refuses an upload from
        // its `Content-Length` before reading it, and a streamed body must not turn chunked.
        let length = gzipped.len() as u64;
        let request = self
            .authorized(self.inner.client.post(url))
            .header(CONTENT_TYPE, "application/wasm")
            .header(CONTENT_ENCODING, "gzip")
            .header(CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap(Upload {
                data: gzipped.into(),
                sent: 0,
                on_progress: Box::new(on_progress),
            }))
            .timeout(UPLOAD_TIMEOUT);
        let body = self
            .answer_bytes(request)
            .await?
            .ok_or_else(|| self.failed(format!("deploying `{name}` was answered 404")))?;
        self.decode(&body)
    }

    /// `GET /v1/usage`: the tenant's metered usage.
    pub async fn usage(&self) -> Result<Usage, Error> {
        let url = self.route(&["v1", "usage"])?;
        self.required(Method::GET, url, None::<&()>).await
    }

    /// `GET /v1/tenant`: the caller's own tenant and quotas.
    pub async fn tenant(&self) -> Result<Tenant, Error> {
        let url = self.route(&["v1", "tenant"])?;
        self.required(Method::GET, url, None::<&()>).await
    }

    /// `POST /v1/admin/tenants` (admin token): creates a tenant; 409 if it exists.
    pub async fn create_tenant(&self, tenant: &TenantRequest) -> Result<Tenant, Error> {
        let url = self.route(&["v1", "admin", "tenants"])?;
        self.required(Method::POST, url, Some(tenant)).await
    }

    /// `PUT /v1/admin/tenants/{name}` (admin token): replaces a tenant's quotas; `None` if
    /// there is no such tenant.
    pub async fn update_tenant(
        &self,
        name: &str,
        quotas: &Quotas,
    ) -> Result<Option<Tenant>, Error> {
        let url = self.route(&["v1", "admin", "tenants", name])?;
        self.optional(Method::PUT, url, Some(quotas)).await
    }

    /// `GET /v1/admin/tenants` (admin token): every tenant, sorted by name.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, Error> {
        let url = self.route(&["v1", "admin", "tenants"])?;
        self.required(Method::GET, url, None::<&()>).await
    }

    /// `POST /v1/admin/tokens` (admin token): a new token, whose text is in the reply only.
    pub async fn create_token(&self, token: &TokenRequest) -> Result<TokenResponse, Error> {
        let url = self.route(&["v1", "admin", "tokens"])?;
        self.required(Method::POST, url, Some(token)).await
    }

    /// `GET /v1/admin/tokens` (admin token): every token's record (never the token).
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        let url = self.route(&["v1", "admin", "tokens"])?;
        self.required(Method::GET, url, None::<&()>).await
    }

    /// `DELETE /v1/admin/tokens/{id}` (admin token): false if there was no such token.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, Error> {
        let url = self.route(&["v1", "admin", "tokens", id])?;
        let request = self.request(Method::DELETE, url, None::<&()>, REQUEST_TIMEOUT)?;
        Ok(self.answer_bytes(request).await?.is_some())
    }

    /// `GET /v1/events[?task=][&after=]`: the tenant's event log from now on (or after the
    /// cursor `after`), live, until the receiver is dropped or the stream ends (the service
    /// stopped, or it was silent past [`EVENTS_SILENCE`]).
    pub async fn events(
        &self,
        after: Option<&str>,
        task: Option<&str>,
    ) -> Result<tokio::sync::mpsc::Receiver<Event>, Error> {
        let mut url = self.route(&["v1", "events"])?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(task) = task {
                query.append_pair("task", task);
            }
            if let Some(after) = after {
                query.append_pair("after", after);
            }
        }
        let url = if url.query() == Some("") {
            let mut bare = url.clone();
            bare.set_query(None);
            bare
        } else {
            url
        };
        // No overall timeout: the stream is endless; silence is watched below instead.
        let request = self.authorized(self.inner.client.get(url));
        let response = tokio::time::timeout(CONNECT_TIMEOUT + REQUEST_TIMEOUT, request.send())
            .await
            .map_err(|_| Error::ServiceUnreachable {
                url: self.inner.shown.clone(),
                message: "no answer in time".to_string(),
            })?
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        if !status.is_success() {
            let body = self.body(response).await.unwrap_or_default();
            return Err(error_of(status, None, &body, &self.inner.shown)
                .unwrap_or_else(|| self.failed("GET /v1/events was answered 404".to_string())));
        }
        let (sender, receiver) = tokio::sync::mpsc::channel(EVENTS_BUFFER);
        let api = self.clone();
        tokio::spawn(async move {
            let mut response = response;
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let chunk = match tokio::time::timeout(EVENTS_SILENCE, response.chunk()).await {
                    Ok(Ok(Some(chunk))) => chunk,
                    Ok(Ok(None)) => return,
                    Ok(Err(error)) => {
                        tracing::warn!(error = %api.unreachable(&error), "event stream lost");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!("event stream silent for too long; giving up");
                        return;
                    }
                };
                pending.extend_from_slice(&chunk);
                while let Some(end) = sse_boundary(&pending) {
                    let block: Vec<u8> = pending.drain(..end.1).take(end.0).collect();
                    if let Some(event) = sse_event(&block)
                        && sender.send(event).await.is_err()
                    {
                        return;
                    }
                }
                if pending.len() > MAX_SSE_EVENT {
                    tracing::warn!("an event on the stream was too large; giving up");
                    return;
                }
            }
        });
        Ok(receiver)
    }

    /// `GET /healthz`: whether the service and its broker answer (false for a 503).
    pub async fn healthy(&self) -> Result<bool, Error> {
        let url = self.route(&["healthz"])?;
        let request = self.inner.client.get(url).timeout(REQUEST_TIMEOUT);
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        Ok(response.status().is_success())
    }

    /// The base URL with `segments` appended, each percent-encoded (a task id may hold `/`).
    fn route(&self, segments: &[&str]) -> Result<Url, Error> {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::Url {
                url: self.inner.shown.clone(),
                reason: "cannot append the API's routes to it".into(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.inner.authorization {
            Some(value) => request.header(AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    /// A request with the token and, if given, a JSON body.
    fn request<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<RequestBuilder, Error> {
        let request = self
            .authorized(self.inner.client.request(method, url))
            .timeout(timeout);
        Ok(match body {
            Some(body) => {
                let json = serde_json::to_vec(body)
                    .map_err(|error| Error::Corrupt(format!("encoding a request: {error}")))?;
                request.header(CONTENT_TYPE, "application/json").body(json)
            }
            None => request,
        })
    }

    /// A request whose reply is `T`, where a 404 means "no such thing".
    async fn optional<B, T>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<Option<T>, Error>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let request = self.request(method, url, body, REQUEST_TIMEOUT)?;
        self.answer(request).await
    }

    /// A request whose reply is `T`, where a 404 is not an answer the route gives.
    async fn required<B, T>(&self, method: Method, url: Url, body: Option<&B>) -> Result<T, Error>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let route = format!("{method} {}", url.path());
        self.optional(method, url, body)
            .await?
            .ok_or_else(|| self.failed(format!("{route} was answered 404")))
    }

    /// Sends the request and decodes a success as `T`; `None` for a 404 `not_found`.
    async fn answer<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<Option<T>, Error> {
        match self.answer_bytes(request).await? {
            Some(body) => self.decode(&body).map(Some),
            None => Ok(None),
        }
    }

    /// Sends the request: the body of a success, `None` for a 404 `not_found`, or the error
    /// the status and body say.
    async fn answer_bytes(&self, request: RequestBuilder) -> Result<Option<Vec<u8>>, Error> {
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // An error's body is best effort: the status alone still says what happened.
        let body = match self.body(response).await {
            Ok(body) => body,
            Err(error) if status.is_success() => return Err(error),
            Err(_) => Vec::new(),
        };
        if status.is_success() {
            return Ok(Some(body));
        }
        match error_of(status, retry_after, &body, &self.inner.shown) {
            Some(error) => Err(error),
            None => Ok(None),
        }
    }

    /// Reads a reply's body, refusing more than [`MAX_REPLY_BYTES`].
    async fn body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, Error> {
        let too_large = || self.failed(format!("a reply was over {MAX_REPLY_BYTES} bytes"));
        let expected = response.content_length().unwrap_or(0);
        if expected > MAX_REPLY_BYTES as u64 {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(expected as usize);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| self.unreachable(&error))?
        {
            if body.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(body).map_err(|error| {
            self.failed(format!(
                "unreadable reply ({error}); is this a wtq service of the same version?"
            ))
        })
    }

    fn failed(&self, message: String) -> Error {
        Error::Service {
            url: self.inner.shown.clone(),
            message,
        }
    }

    /// A request that got no HTTP answer: refused, reset, timed out, TLS failed.
    fn unreachable(&self, error: &reqwest::Error) -> Error {
        let message = if error.is_timeout() {
            "no answer in time".to_string()
        } else {
            // reqwest's own text is "error sending request for url (…)"; the cause at the
            // bottom of the chain says what went wrong ("Connection refused", a bad
            // certificate).
            let mut cause: &dyn std::error::Error = error;
            while let Some(source) = cause.source() {
                cause = source;
            }
            cause.to_string()
        };
        Error::ServiceUnreachable {
            url: self.inner.shown.clone(),
            message,
        }
    }
}

/// The end of the first server-sent event in `bytes`: (its length, the length with the blank
/// line that ends it).
fn sse_boundary(bytes: &[u8]) -> Option<(usize, usize)> {
    let lf = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|at| (at, at + 2));
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, at + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The [`Event`] in one server-sent event's lines (its `data:` lines joined), if it has one;
/// comments (keep-alives) and unreadable data give none.
fn sse_event(block: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(block).ok()?;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data)
        .inspect_err(|error| tracing::warn!(%error, "ignoring an unreadable event"))
        .ok()
}

/// The error a non-success status says, or `None` for the API's 404 `not_found` (an unknown
/// id, which callers answer as a broker does).
fn error_of(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    url: &str,
) -> Option<Error> {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let kind = parsed.as_ref().map(|body| body.error.kind.as_str());
    let message = match &parsed {
        Some(body) => shorten(&body.error.message),
        // Not the API's error body (a proxy's page, another server): the status says most.
        None => {
            let text = String::from_utf8_lossy(body);
            let first = text.lines().next().unwrap_or_default().trim();
            if first.is_empty() {
                format!("answered {status}")
            } else {
                format!("answered {status}: {}", shorten(first))
            }
        }
    };
    let url = url.to_string();
    Some(match status {
        StatusCode::NOT_FOUND if kind == Some("not_found") => return None,
        StatusCode::NOT_FOUND => Error::Service {
            url,
            message: format!("{message}; is this a wtq service of the same version?"),
        },
        StatusCode::UNAUTHORIZED => Error::Denied { url, message },
        StatusCode::FORBIDDEN if kind.is_none_or(|kind| kind == "forbidden") => {
            Error::Denied { url, message }
        }
        StatusCode::TOO_MANY_REQUESTS => Error::RateLimited {
            retry_after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            message,
        },
        StatusCode::SERVICE_UNAVAILABLE => Error::ServiceUnreachable { url, message },
        status if status.is_client_error() => Error::Rejected {
            kind: kind.map_or_else(|| kind_of(status), str::to_string),
            message,
        },
        _ => Error::Service { url, message },
    })
}

/// The API's kind for a status, for a refusal whose body is not the API's.
fn kind_of(status: StatusCode) -> String {
    match status {
        StatusCode::BAD_REQUEST => "bad_request".into(),
        StatusCode::FORBIDDEN => "forbidden".into(),
        StatusCode::CONFLICT => "conflict".into(),
        StatusCode::PAYLOAD_TOO_LARGE => "too_large".into(),
        other => format!("http_{}", other.as_u16()),
    }
}

/// `text` on one line and at most [`MAX_MESSAGE_CHARS`] long.
fn shorten(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

/// Waits in rounds: asks `round(d)` for the record after waiting at most `d` (≤ [`MAX_WAIT`])
/// until the record is final, the task is unknown, or `timeout` has passed.
async fn wait_in_rounds<F, Fut>(
    timeout: Duration,
    mut round: F,
) -> Result<Option<TaskRecord>, Error>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<Option<TaskRecord>, Error>>,
{
    // No deadline when `timeout` is too far away to represent: wait until final.
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    loop {
        let started = tokio::time::Instant::now();
        let left = deadline.map_or(Duration::MAX, |deadline| {
            deadline.saturating_duration_since(started)
        });
        let this = left.min(MAX_WAIT);
        match round(this).await? {
            None => return Ok(None),
            Some(record) if record.state.is_final() || this == left => return Ok(Some(record)),
            Some(_) => tokio::time::sleep_until(started + MIN_ROUND).await,
        }
    }
}

/// The rustls configuration: ring, the system's roots for `https` (none are needed, or loaded,
/// for plain `http`), HTTP/1.1.
fn tls_config(https: bool) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        // The same source as `rediss://`: the system's store plus SSL_CERT_FILE / SSL_CERT_DIR.
        let loaded = rustls_native_certs::load_native_certs();
        let (added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let why = loaded
                .errors
                .first()
                .map_or("none found".to_string(), ToString::to_string);
            return Err(format!(
                "no trusted root certificates to check the server with ({why}); install the \
                 system's CA certificates or set SSL_CERT_FILE"
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS setup: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 2),
        flate2::Compression::default(),
    );
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// A deploy's body: the compressed component in [`UPLOAD_CHUNK`] pieces, reporting after each
/// how much has been handed to the connection (hyper asks for the next piece once it has
/// taken the last, so the reports follow the socket, give or take its buffers).
struct Upload {
    data: bytes::Bytes,
    sent: usize,
    on_progress: Box<dyn Fn(u64, u64) + Send + Sync>,
}

impl http_body::Body for Upload {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let upload = self.get_mut();
        let total = upload.data.len();
        if upload.sent == total {
            return std::task::Poll::Ready(None);
        }
        let end = (upload.sent + UPLOAD_CHUNK).min(total);
        let piece = upload.data.slice(upload.sent..end);
        upload.sent = end;
        (upload.on_progress)(end as u64, total as u64);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.data.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact((self.data.len() - self.sent) as u64)
    }
}

// As for the brokers: `async move` bodies so each future is checked `Send`.
#[allow(clippy::manual_async_fn)]
impl Producer for HttpApi {
    fn enqueue_calls(
        &self,
        mut calls: Vec<EnqueueRequest>,
        _components: &ComponentCache,
    ) -> impl Future<Output = Result<Vec<Enqueued>, ClientError>> + Send {
        async move {
            // One call takes the single route, which the service serves without a batch's
            // bookkeeping; the service checks calls against its own registry either way.
            Ok(match calls.len() {
                0 => Vec::new(),
                1 => match calls.pop() {
                    Some(call) => vec![HttpApi::enqueue(self, &call).await?],
                    None => Vec::new(),
                },
                _ => HttpApi::enqueue_batch(self, calls).await?,
            })
        }
    }

    fn record(&self, id: &str) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send {
        HttpApi::record(self, id)
    }

    fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send {
        HttpApi::wait(self, id, timeout)
    }

    fn revoke(
        &self,
        id: &str,
        terminate: bool,
    ) -> impl Future<Output = Result<Revoked, Error>> + Send {
        HttpApi::revoke(self, id, terminate)
    }

    fn purge(&self, queue: &str) -> impl Future<Output = Result<usize, Error>> + Send {
        HttpApi::purge(self, queue)
    }

    fn dead(&self, limit: usize) -> impl Future<Output = Result<Vec<TaskRecord>, Error>> + Send {
        HttpApi::dead(self, limit)
    }

    fn retry_dead(&self, id: Option<&str>) -> impl Future<Output = Result<usize, Error>> + Send {
        HttpApi::retry_dead(self, id)
    }

    fn purge_dead(&self) -> impl Future<Output = Result<usize, Error>> + Send {
        HttpApi::purge_dead(self)
    }

    fn components(&self) -> impl Future<Output = Result<Vec<ComponentRecord>, Error>> + Send {
        HttpApi::components(self)
    }

    fn component(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ComponentRecord>, Error>> + Send {
        HttpApi::component(self, name)
    }

    fn submit_workflow(
        &self,
        workflow: &Node,
        id: Option<String>,
        _components: &ComponentCache,
    ) -> impl Future<Output = Result<WorkflowResponse, ClientError>> + Send {
        async move { Ok(HttpApi::submit_workflow(self, workflow, id.as_deref()).await?) }
    }

    fn workflow(&self, id: &str) -> impl Future<Output = Result<Option<Tree>, Error>> + Send {
        HttpApi::workflow(self, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::State;

    fn check(status: u16, body: &str, retry_after: Option<u64>, expected: &str) {
        let status = StatusCode::from_u16(status).expect("a status");
        let error = error_of(
            status,
            retry_after.map(Duration::from_secs),
            body.as_bytes(),
            "http://h:1",
        );
        assert_eq!(format!("{error:?}"), expected, "{status} {body}");
    }

    fn api_error(kind: &str, message: &str) -> String {
        format!(r#"{{"error":{{"kind":"{kind}","message":"{message}"}}}}"#)
    }

    #[test]
    fn statuses_and_bodies_map_to_errors() {
        check(404, &api_error("not_found", "no task x"), None, "None");
        check(
            404,
            "<html>nope</html>",
            None,
            r#"Some(Service { url: "http://h:1", message: "answered 404 Not Found: <html>nope</html>; is this a wtq service of the same version?" })"#,
        );
        check(
            401,
            &api_error("unauthorized", "missing token"),
            None,
            r#"Some(Denied { url: "http://h:1", message: "missing token" })"#,
        );
        check(
            403,
            &api_error("forbidden", "an admin token"),
            None,
            r#"Some(Denied { url: "http://h:1", message: "an admin token" })"#,
        );
        check(
            403,
            &api_error("limit_above_cap", "fuel 10 is above the cap 5"),
            None,
            r#"Some(Rejected { kind: "limit_above_cap", message: "fuel 10 is above the cap 5" })"#,
        );
        check(
            403,
            "",
            None,
            r#"Some(Denied { url: "http://h:1", message: "answered 403 Forbidden" })"#,
        );
        check(
            429,
            &api_error("rate_limited", "over 10/s"),
            Some(3),
            r#"Some(RateLimited { retry_after: 3s, message: "over 10/s" })"#,
        );
        check(
            429,
            "",
            None,
            r#"Some(RateLimited { retry_after: 1s, message: "answered 429 Too Many Requests" })"#,
        );
        check(
            400,
            &api_error("invalid_args", "math.add takes x, y"),
            None,
            r#"Some(Rejected { kind: "invalid_args", message: "math.add takes x, y" })"#,
        );
        check(
            409,
            &api_error("conflict", "task id `a` is already in use"),
            None,
            r#"Some(Rejected { kind: "conflict", message: "task id `a` is already in use" })"#,
        );
        check(
            413,
            "too big\nsecond line",
            None,
            r#"Some(Rejected { kind: "too_large", message: "answered 413 Payload Too Large: too big" })"#,
        );
        check(
            503,
            &api_error("unavailable", "the broker did not answer"),
            None,
            r#"Some(ServiceUnreachable { url: "http://h:1", message: "the broker did not answer" })"#,
        );
        check(
            500,
            "",
            None,
            r#"Some(Service { url: "http://h:1", message: "answered 500 Internal Server Error" })"#,
        );
    }

    #[test]
    fn server_messages_are_one_short_line() {
        let long = "x ".repeat(1000);
        let error = error_of(
            StatusCode::BAD_REQUEST,
            None,
            api_error("bad_request", &long).as_bytes(),
            "http://h:1",
        )
        .expect("an error")
        .to_string();
        assert!(error.chars().count() <= MAX_MESSAGE_CHARS + 1, "{error}");
        assert!(!error.contains('\n'));
    }

    fn record(state: State) -> TaskRecord {
        serde_json::from_value(serde_json::json!({
            "id": "t",
            "state": state,
            "deliveries": 0,
            "message": {
                "id": "t", "component": "math", "task": "add", "args": "[]", "queue": "default",
                "created_ms": 0
            }
        }))
        .expect("a record")
    }

    /// Runs the wait loop against a fake service that waits each round out and answers with
    /// `answers` in turn; returns the rounds asked for and the result.
    async fn rounds(
        timeout: Duration,
        answers: Vec<Option<State>>,
    ) -> (Vec<Duration>, Option<State>) {
        let mut asked = Vec::new();
        let mut answers = answers.into_iter();
        let result = wait_in_rounds(timeout, |round| {
            asked.push(round);
            let answer = answers.next().expect("the loop asked once too often");
            async move {
                tokio::time::sleep(round).await;
                Ok(answer.map(record))
            }
        })
        .await
        .expect("no error");
        (asked, result.map(|record| record.state))
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_does_not_hold_the_poll_is_not_asked_in_a_busy_loop() {
        let started = tokio::time::Instant::now();
        let mut asked = 0;
        let result = wait_in_rounds(Duration::from_secs(120), |_| {
            asked += 1;
            async { Ok(Some(record(State::Started))) }
        })
        .await
        .expect("no error");
        assert_eq!(result.map(|record| record.state), Some(State::Started));
        // Ten a second until only one round is left (60 s), then that round.
        assert!(asked <= 601, "asked {asked} times in 60 s");
        assert!(started.elapsed() >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_split_into_rounds_of_at_most_a_minute() {
        let minute = Duration::from_secs(60);
        let pending = Some(State::Pending);
        assert_eq!(
            rounds(Duration::from_secs(150), vec![pending; 3]).await,
            (vec![minute, minute, Duration::from_secs(30)], pending)
        );
        assert_eq!(
            rounds(Duration::from_secs(5), vec![pending]).await,
            (vec![Duration::from_secs(5)], pending)
        );
        assert_eq!(
            rounds(Duration::ZERO, vec![pending]).await,
            (vec![Duration::ZERO], pending)
        );
        // Final or unknown ends the wait early.
        assert_eq!(
            rounds(
                Duration::from_secs(600),
                vec![pending, Some(State::Success)]
            )
            .await,
            (vec![minute, minute], Some(State::Success))
        );
        assert_eq!(
            rounds(Duration::from_secs(600), vec![None]).await,
            (vec![minute], None)
        );
        // "Forever" is too far for the clock: rounds go on until the task is final.
        assert_eq!(
            rounds(Duration::MAX, vec![pending, Some(State::Failure)]).await,
            (vec![minute, minute], Some(State::Failure))
        );
    }

    #[test]
    fn urls_are_checked_and_routes_encoded() {
        let api = HttpApi::new("http://127.0.0.1:7878/", Some("tok")).expect("valid");
        assert_eq!(api.url(), "http://127.0.0.1:7878");
        let route = api
            .route(&["v1", "tasks", "a/b?c#d%", "wait"])
            .expect("route");
        assert_eq!(
            route.as_str(),
            "http://127.0.0.1:7878/v1/tasks/a%2Fb%3Fc%23d%25/wait"
        );
        let prefixed = HttpApi::new("https://h.example/wtq", None).expect("valid");
        assert_eq!(
            prefixed.route(&["v1", "usage"]).expect("route").as_str(),
            "https://h.example/wtq/v1/usage"
        );
        for bad in [
            "http://",
            "ftp://h",
            "http://user:pw@h:1",
            "http://h:1/?x=1",
            "http://h:1/#f",
        ] {
            let error = HttpApi::new(bad, None).expect_err(bad);
            assert!(matches!(error, Error::Url { .. }), "{bad}: {error}");
            assert!(!error.to_string().contains("pw"), "{error}");
        }
        let error = HttpApi::new("http://h:1", Some("bad\ntoken")).expect_err("refused");
        assert!(!error.to_string().contains("token\n"), "{error}");
    }

    #[test]
    fn the_token_never_shows() {
        let api = HttpApi::new("http://h:1", Some("s3cret")).expect("valid");
        let shown = format!("{api:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("***"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_service_is_one_line_naming_it() {
        // Port 9 (discard) on loopback: nothing listens there in a test environment.
        let api = HttpApi::new("http://127.0.0.1:9", Some("s3cret")).expect("valid");
        let error = api.record("t").await.expect_err("unreachable");
        assert!(
            matches!(error, Error::ServiceUnreachable { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains("http://127.0.0.1:9") && !text.contains("s3cret"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    /// A stand-in for the service on a free port: answers requests with `replies` in turn
    /// (status line, extra headers, body) and returns each request's head and body.
    async fn stub(
        replies: Vec<(&'static str, &'static str, String)>,
    ) -> (String, tokio::task::JoinHandle<Vec<(String, Vec<u8>)>>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let served = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut socket = BufReader::new(socket);
            let mut seen = Vec::new();
            for (status, headers, body) in replies {
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    socket.read_line(&mut line).await.expect("read");
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse::<usize>().expect("length"));
                let mut request_body = vec![0; length];
                socket.read_exact(&mut request_body).await.expect("body");
                seen.push((head, request_body));
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: \
                     application/json\r\n{headers}\r\n{body}",
                    body.len()
                );
                socket.write_all(reply.as_bytes()).await.expect("write");
            }
            seen
        });
        (url, served)
    }

    #[tokio::test]
    async fn requests_carry_the_token_and_replies_map_over_one_connection() {
        let record_json = serde_json::to_string(&record(State::Success)).expect("json");
        let (url, served) = stub(vec![
            ("404 Not Found", "", api_error("not_found", "no task")),
            (
                "201 Created",
                "",
                r#"{"tasks":[{"id":"a","created":true},{"id":"b","created":false}]}"#.into(),
            ),
            ("200 OK", "", record_json),
            (
                "429 Too Many Requests",
                "retry-after: 7\r\n",
                api_error("rate_limited", "slow down"),
            ),
            (
                "400 Bad Request",
                "",
                api_error("invalid_component", "not a component"),
            ),
            ("204 No Content", "", String::new()),
        ])
        .await;
        let api = HttpApi::new(&url, Some("tok")).expect("valid");
        assert_eq!(api.record("a/b").await.expect("answered"), None);
        let calls = vec![EnqueueRequest::default(), EnqueueRequest::default()];
        let enqueued = Producer::enqueue_calls(&api, calls, &ComponentCache::default())
            .await
            .expect("enqueued");
        assert_eq!(
            enqueued,
            [
                Enqueued {
                    id: "a".into(),
                    created: true
                },
                Enqueued {
                    id: "b".into(),
                    created: false
                }
            ]
        );
        let waited = api.wait("t", Duration::ZERO).await.expect("waited");
        assert_eq!(waited.map(|record| record.state), Some(State::Success));
        match api.revoke("t", true).await {
            Err(Error::RateLimited {
                retry_after,
                message,
            }) => {
                assert_eq!(
                    (retry_after, message.as_str()),
                    (Duration::from_secs(7), "slow down")
                );
            }
            other => panic!("expected rate limiting: {other:?}"),
        }
        match api.deploy("math", b"\0asm".to_vec()).await {
            Err(Error::Rejected { kind, .. }) => assert_eq!(kind, "invalid_component"),
            other => panic!("expected a refusal: {other:?}"),
        }
        assert!(api.revoke_token("tok_1").await.expect("revoked"));

        let seen = served.await.expect("served");
        let heads: Vec<&str> = seen
            .iter()
            .map(|(head, _)| head.lines().next().unwrap_or_default())
            .collect();
        assert_eq!(
            heads,
            [
                "get /v1/tasks/a%2fb http/1.1",
                "post /v1/tasks/batch http/1.1",
                "get /v1/tasks/t/wait?timeout_ms=0 http/1.1",
                "post /v1/tasks/t/revoke http/1.1",
                "post /v1/components/math http/1.1",
                "delete /v1/admin/tokens/tok_1 http/1.1",
            ]
        );
        for (head, _) in &seen {
            assert!(head.contains("authorization: bearer tok\r\n"), "{head}");
        }
        let (deploy_head, deploy_body) = &seen[4];
        assert!(
            deploy_head.contains("content-encoding: gzip"),
            "{deploy_head}"
        );
        assert!(
            deploy_head.contains("content-type: application/wasm"),
            "{deploy_head}"
        );
        assert_eq!(&deploy_body[..2], &[0x1f, 0x8b], "a gzip stream");
        let revoke: RevokeRequest = serde_json::from_slice(&seen[3].1).expect("revoke body");
        assert!(revoke.terminate);
    }

    #[tokio::test]
    async fn a_deploy_reports_its_upload_and_declares_its_length() {
        let (url, served) = stub(vec![(
            "400 Bad Request",
            "",
            api_error("invalid_component", "not a component"),
        )])
        .await;
        let api = HttpApi::new(&url, None).expect("valid");
        // Bytes gzip cannot shrink, so the body is several pieces long.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let wasm: Vec<u8> = (0..300_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = reports.clone();
        let on_progress = move |sent, total| seen.lock().expect("not poisoned").push((sent, total));
        match api.deploy_with_progress("big", wasm, on_progress).await {
            Err(Error::Rejected { kind, .. }) => assert_eq!(kind, "invalid_component"),
            other => panic!("expected a refusal: {other:?}"),
        }
        let requests = served.await.expect("served");
        let (head, body) = &requests[0];
        assert!(!head.contains("transfer-encoding"), "{head}");
        let total = body.len() as u64;
        assert!(total > 3 * UPLOAD_CHUNK as u64, "{total}");
        let reports = reports.lock().expect("not poisoned").clone();
        assert_eq!(reports.len(), (total as usize).div_ceil(UPLOAD_CHUNK));
        assert!(reports.iter().all(|&(_, of)| of == total));
        assert!(reports.windows(2).all(|pair| pair[0].0 < pair[1].0));
        assert_eq!(reports.last(), Some(&(total, total)));
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let bytes = b"\0asm component bytes".repeat(100);
        let packed = gzip(&bytes).expect("gzip");
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(packed.as_slice())
            .read_to_end(&mut unpacked)
            .expect("gunzip");
        assert_eq!(unpacked, bytes);
    }
}
