//! The service driven in process: its router over the in-memory broker, requests sent with
//! `tower::ServiceExt::oneshot` as a client would send them. Deploys use the `math` guest
//! example (built once from `guest-examples/`, as the end-to-end suite does).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;
use wtq_client::AnyBroker;
use wtq_client::broker::memory::MemoryBroker;
use wtq_client::broker::{Broker, Tenancy};
use wtq_client::message::now_ms;
use wtq_client::tenancy::namespace_of;

use super::routes::{self, Method};
use super::state::Shared;
use super::{Auth, ServiceConfig, app, openapi, token};
use crate::sandbox::{Sandbox, SandboxConfig};

/// The request body limit of the harness: small, so limits are cheap to cross.
const MAX_BODY: u64 = 4 << 20;

/// The bytes of the `math` guest example, built once.
fn math() -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let path = BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-examples");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet", "-p", "math"])
            .current_dir(&root)
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the math guest failed");
        root.join("target/wasm32-wasip2/release/math.wasm")
    });
    std::fs::read(path).expect("the math guest is built")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("writes to memory");
    encoder.finish().expect("writes to memory")
}

/// A reply, its body parsed as JSON (`Null` when empty).
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Reply {
    fn kind(&self) -> &str {
        self.body["error"]["kind"].as_str().unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }

    #[track_caller]
    fn expect(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "{}", self.text);
        &self.body
    }

    #[track_caller]
    fn refused(&self, status: StatusCode, kind: &str) {
        assert_eq!((self.status, self.kind()), (status, kind), "{}", self.text);
        assert!(!self.message().is_empty() && !self.message().contains('\n'));
    }
}

/// A service over a fresh in-memory broker, with an admin token.
struct Harness {
    router: Router,
    broker: AnyBroker,
    admin: String,
    _stop: watch::Sender<bool>,
}

impl Harness {
    async fn new(auth: Auth) -> Harness {
        let broker = AnyBroker::Memory(MemoryBroker::new());
        let config = ServiceConfig {
            max_body: MAX_BODY,
            ..ServiceConfig::new(([127, 0, 0, 1], 0).into(), auth)
        };
        let sandbox = Sandbox::new(SandboxConfig {
            cache_dir: None,
            ..SandboxConfig::default()
        })
        .expect("sandbox");
        let (router, stop) = app(&config, broker.clone(), sandbox).expect("app");
        let (admin, hash, record) = token::mint(None).expect("random");
        broker.put_token(&hash, &record).await.expect("stored");
        Harness {
            router,
            broker,
            admin,
            _stop: stop,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).expect("request")).await
    }

    /// Creates tenant `name` with `quotas`; returns a token for it.
    async fn tenant(&self, name: &str, quotas: Value) -> String {
        let admin = Some(self.admin.as_str());
        self.call(
            "POST",
            "/v1/admin/tenants",
            admin,
            Some(json!({"name": name, "quotas": quotas})),
        )
        .await
        .expect(StatusCode::CREATED);
        let reply = self
            .call(
                "POST",
                "/v1/admin/tokens",
                admin,
                Some(json!({"tenant": name})),
            )
            .await;
        let body = reply.expect(StatusCode::CREATED);
        body["token"].as_str().expect("a token").to_string()
    }

    async fn deploy(&self, token: &str, name: &str, body: Vec<u8>, gzipped: bool) -> Reply {
        let mut request = Request::builder()
            .method("POST")
            .uri(format!("/v1/components/{name}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/wasm")
            .header(header::CONTENT_LENGTH, body.len());
        if gzipped {
            request = request.header(header::CONTENT_ENCODING, "gzip");
        }
        self.send(request.body(Body::from(body)).expect("request"))
            .await
    }

    /// The broker of tenant `name`'s namespace, as a worker would see it.
    fn namespace(&self, name: &str) -> AnyBroker {
        self.broker
            .namespaced(&namespace_of(name))
            .expect("valid namespace")
    }
}

/// A body of `chunks` chunks of `size` bytes that counts how many were read.
fn counted_body(chunks: usize, size: usize) -> (Body, Arc<AtomicUsize>) {
    let read = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&read);
    let stream = futures_util::stream::iter(0..chunks).map(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(Bytes::from(vec![0u8; size]))
    });
    (Body::from_stream(stream), read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_may_do_what() {
    let service = Harness::new(Auth::Tokens).await;
    let acme = service.tenant("acme", json!({})).await;

    service
        .call("GET", "/v1/tenant", None, None)
        .await
        .refused(StatusCode::UNAUTHORIZED, "unauthorized");
    service
        .call("GET", "/v1/tenant", Some("wtq_not-a-token"), None)
        .await
        .refused(StatusCode::UNAUTHORIZED, "unauthorized");
    let mut basic = Request::builder().uri("/v1/tenant");
    basic = basic.header(header::AUTHORIZATION, format!("Basic {acme}"));
    service
        .send(basic.body(Body::empty()).expect("request"))
        .await
        .refused(StatusCode::UNAUTHORIZED, "unauthorized");

    let tenant = service.call("GET", "/v1/tenant", Some(&acme), None).await;
    assert_eq!(tenant.expect(StatusCode::OK)["name"], "acme");
    service
        .call("GET", "/v1/admin/tenants", Some(&acme), None)
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden");
    service
        .call("GET", "/v1/tenant", Some(&service.admin), None)
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden");

    // Listing tokens shows records, never a token or its hash.
    let tokens = service
        .call("GET", "/v1/admin/tokens", Some(&service.admin), None)
        .await;
    let listed = tokens.expect(StatusCode::OK).to_string();
    assert!(
        !listed.contains(&acme) && !listed.contains(&token::hash(&acme)),
        "{listed}"
    );
    let id = tokens
        .body
        .as_array()
        .expect("array")
        .iter()
        .find(|record| record["tenant"] == "acme")
        .and_then(|record| record["id"].as_str())
        .expect("acme's token is listed")
        .to_string();

    // Revoked here: refused at once by this process (others within a second).
    let path = format!("/v1/admin/tokens/{id}");
    service
        .call("DELETE", &path, Some(&service.admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    service
        .call("DELETE", &path, Some(&service.admin), None)
        .await
        .refused(StatusCode::NOT_FOUND, "not_found");
    service
        .call("GET", "/v1/tenant", Some(&acme), None)
        .await
        .refused(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_manage_tenants() {
    let service = Harness::new(Auth::Tokens).await;
    let admin = Some(service.admin.as_str());
    service.tenant("acme", json!({"concurrency": 2})).await;
    service
        .call(
            "POST",
            "/v1/admin/tenants",
            admin,
            Some(json!({"name": "acme"})),
        )
        .await
        .refused(StatusCode::CONFLICT, "conflict");
    service
        .call(
            "POST",
            "/v1/admin/tenants",
            admin,
            Some(json!({"name": "Not Valid"})),
        )
        .await
        .refused(StatusCode::BAD_REQUEST, "bad_request");
    service
        .call(
            "POST",
            "/v1/admin/tokens",
            admin,
            Some(json!({"tenant": "nobody"})),
        )
        .await
        .refused(StatusCode::NOT_FOUND, "not_found");
    let updated = service
        .call(
            "PUT",
            "/v1/admin/tenants/acme",
            admin,
            Some(json!({"max_fuel": 5})),
        )
        .await;
    assert_eq!(
        updated.expect(StatusCode::OK)["quotas"],
        json!({"max_fuel": 5})
    );
    service
        .call("PUT", "/v1/admin/tenants/nobody", admin, Some(json!({})))
        .await
        .refused(StatusCode::NOT_FOUND, "not_found");
    let listed = service.call("GET", "/v1/admin/tenants", admin, None).await;
    assert_eq!(listed.expect(StatusCode::OK)[0]["name"], "acme");
    // A new admin token works as one.
    let minted = service
        .call("POST", "/v1/admin/tokens", admin, Some(json!({})))
        .await;
    let second = minted.expect(StatusCode::CREATED)["token"]
        .as_str()
        .expect("token")
        .to_string();
    service
        .call("GET", "/v1/admin/tenants", Some(&second), None)
        .await
        .expect(StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_objects_answer_like_missing_ones() {
    let service = Harness::new(Auth::Tokens).await;
    let a = service.tenant("a", json!({})).await;
    let b = service.tenant("b", json!({})).await;

    // What B sees of ids and names that exist nowhere...
    let probes = [
        ("GET", "/v1/tasks/t-1", None),
        ("GET", "/v1/tasks/t-1/wait?timeout_ms=10", None),
        (
            "POST",
            "/v1/tasks/t-1/revoke",
            Some(json!({"terminate": true})),
        ),
        ("GET", "/v1/components/math", None),
        ("POST", "/v1/dead/retry", Some(json!({"id": "t-dead"}))),
    ];
    let mut before = Vec::new();
    for (method, path, body) in &probes {
        let reply = service.call(method, path, Some(&b), body.clone()).await;
        reply.refused(StatusCode::NOT_FOUND, "not_found");
        before.push(reply.text);
    }

    // ...then A creates them: a component, a task, a dead letter.
    service
        .deploy(&a, "math", math(), false)
        .await
        .expect(StatusCode::CREATED);
    for id in ["t-1", "t-dead"] {
        let call = json!({"task": "math.add", "args": [1, 2], "task_id": id, "max_deliveries": 1});
        service
            .call("POST", "/v1/tasks", Some(&a), Some(call))
            .await
            .expect(StatusCode::CREATED);
    }
    let worker = service.namespace("a");
    let now = now_ms();
    let queues = ["default".to_string()];
    let leased = worker
        .reserve("w", &queues, 2, 1, now)
        .await
        .expect("reserve");
    assert_eq!(leased.len(), 2);
    // One lease back to the queue by hand; the other expires into the dead letters.
    let keep = leased.iter().find(|d| d.id == "t-1").expect("t-1 leased");
    worker
        .settle(
            vec![wtq_client::broker::Settle {
                lease: wtq_client::broker::Lease {
                    id: keep.id.clone(),
                    token: keep.token,
                },
                settlement: wtq_client::broker::Settlement::Release,
            }],
            now,
        )
        .await
        .expect("released");
    worker.reap(now + 1000, 10).await.expect("reaped");
    let dead = service.call("GET", "/v1/dead", Some(&a), None).await;
    assert_eq!(dead.expect(StatusCode::OK)[0]["id"], "t-dead");

    // B's view has not changed by a byte.
    for ((method, path, body), before) in probes.iter().zip(&before) {
        let reply = service.call(method, path, Some(&b), body.clone()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(&reply.text, before, "{method} {path}");
    }
    let listed = service.call("GET", "/v1/components", Some(&b), None).await;
    assert_eq!(listed.expect(StatusCode::OK), &json!([]));
    let dead = service.call("GET", "/v1/dead", Some(&b), None).await;
    assert_eq!(dead.expect(StatusCode::OK), &json!([]));

    // A's view is all there.
    service
        .call("GET", "/v1/tasks/t-1", Some(&a), None)
        .await
        .expect(StatusCode::OK);
    service
        .call("GET", "/v1/components/math", Some(&a), None)
        .await
        .expect(StatusCode::OK);
    let retried = service
        .call(
            "POST",
            "/v1/dead/retry",
            Some(&a),
            Some(json!({"id": "t-dead"})),
        )
        .await;
    assert_eq!(retried.expect(StatusCode::OK)["count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_enqueued_read_waited_for_and_revoked() {
    let service = Harness::new(Auth::Tokens).await;
    let token = service.tenant("a", json!({})).await;
    let a = Some(token.as_str());
    service
        .deploy(&token, "math", math(), false)
        .await
        .expect(StatusCode::CREATED);

    let one = service
        .call(
            "POST",
            "/v1/tasks",
            a,
            Some(json!({"task": "math.add", "args": [1, 2], "task_id": "x"})),
        )
        .await;
    assert_eq!(
        one.expect(StatusCode::CREATED),
        &json!({"id": "x", "created": true})
    );
    service
        .call(
            "POST",
            "/v1/tasks",
            a,
            Some(json!({"task": "math.add", "args": [1, 2], "task_id": "x"})),
        )
        .await
        .refused(StatusCode::CONFLICT, "conflict");
    let record = service.call("GET", "/v1/tasks/x", a, None).await;
    assert_eq!(record.expect(StatusCode::OK)["state"], "PENDING");
    let waited = service
        .call("GET", "/v1/tasks/x/wait?timeout_ms=20", a, None)
        .await;
    assert_eq!(waited.expect(StatusCode::OK)["state"], "PENDING");
    service
        .call("GET", "/v1/tasks/x/wait?timeout_ms=60001", a, None)
        .await
        .refused(StatusCode::BAD_REQUEST, "bad_request");
    service
        .call("GET", "/v1/tasks/x/wait?timeout_ms=soon", a, None)
        .await
        .refused(StatusCode::BAD_REQUEST, "bad_request");
    let revoked = service.call("POST", "/v1/tasks/x/revoke", a, None).await;
    assert_eq!(revoked.expect(StatusCode::OK)["outcome"], "revoked");
    let waited = service
        .call("GET", "/v1/tasks/x/wait?timeout_ms=60000", a, None)
        .await;
    assert_eq!(waited.expect(StatusCode::OK)["state"], "REVOKED");

    // Batches: all checked first (the failing index is named), then stored at once.
    let good = json!({"task": "math.add", "args": [1, 2]});
    let bad = json!({"task": "math.nope"});
    let refused = service
        .call(
            "POST",
            "/v1/tasks/batch",
            a,
            Some(json!({"tasks": [good, bad]})),
        )
        .await;
    refused.refused(StatusCode::BAD_REQUEST, "unknown_task");
    assert!(
        refused.message().starts_with("tasks[1]: "),
        "{}",
        refused.text
    );
    let args = json!({"task": "math.add", "args": [1, 2, 3]});
    let refused = service
        .call(
            "POST",
            "/v1/tasks/batch",
            a,
            Some(json!({"tasks": [good, args]})),
        )
        .await;
    refused.refused(StatusCode::BAD_REQUEST, "invalid_args");
    let option = json!({"task": "math.add", "args": [1, 2], "priority": 10});
    service
        .call("POST", "/v1/tasks", a, Some(option))
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_option");
    assert_eq!(
        service
            .namespace("a")
            .depth("default")
            .await
            .expect("depth"),
        0
    );
    let batch = service
        .call(
            "POST",
            "/v1/tasks/batch",
            a,
            Some(json!({"tasks": [good, good, good]})),
        )
        .await;
    assert_eq!(
        batch.expect(StatusCode::CREATED)["tasks"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    let purged = service
        .call("POST", "/v1/queues/default/purge", a, None)
        .await;
    assert_eq!(purged.expect(StatusCode::OK)["count"], 3);
    let usage = service.call("GET", "/v1/usage", a, None).await;
    assert!(
        usage.expect(StatusCode::OK)["tasks"].is_u64(),
        "{}",
        usage.text
    );
    let emptied = service.call("DELETE", "/v1/dead", a, None).await;
    assert_eq!(emptied.expect(StatusCode::OK)["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_is_named_in_the_error_shape() {
    let service = Harness::new(Auth::Tokens).await;
    let a = service.tenant("a", json!({})).await;
    let typo = service
        .call(
            "POST",
            "/v1/tasks",
            Some(&a),
            Some(json!({"task": "a.b", "prority": 1})),
        )
        .await;
    typo.refused(StatusCode::BAD_REQUEST, "invalid_json");
    assert!(typo.message().contains("prority"), "{}", typo.text);
    let request = Request::post("/v1/tasks")
        .header(header::AUTHORIZATION, format!("Bearer {a}"))
        .body(Body::from("{not json"))
        .expect("request");
    service
        .send(request)
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_json");
    service
        .call("GET", "/v1/nowhere", Some(&a), None)
        .await
        .refused(StatusCode::NOT_FOUND, "not_found");
    let wrong = service.call("PATCH", "/v1/tasks", Some(&a), None).await;
    assert_eq!(
        wrong.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "{}",
        wrong.text
    );
    assert!(!wrong.kind().is_empty(), "{}", wrong.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_without_being_read() {
    let service = Harness::new(Auth::Tokens).await;
    let a = service.tenant("a", json!({"max_upload": 1000})).await;
    let huge = |path: &str, encoding: Option<&str>| {
        let (body, read) = counted_body(1 << 20, 1 << 10);
        let mut request = Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {a}"))
            .header(header::CONTENT_LENGTH, 1u64 << 30);
        if let Some(encoding) = encoding {
            request = request.header(header::CONTENT_ENCODING, encoding);
        }
        (request.body(body).expect("request"), read)
    };
    for (path, encoding) in [
        ("/v1/components/math", None),
        ("/v1/components/math", Some("gzip")),
        ("/v1/tasks/batch", None),
        ("/v1/admin/tenants", None),
    ] {
        let (request, read) = huge(path, encoding);
        let reply = service.send(request).await;
        let expected = if path.starts_with("/v1/admin") {
            (StatusCode::FORBIDDEN, "forbidden")
        } else {
            (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        };
        reply.refused(expected.0, expected.1);
        assert_eq!(
            read.load(Ordering::SeqCst),
            0,
            "{path}: nothing of the body is read"
        );
    }

    // Without a Content-Length: read up to the limit, then refused.
    let (body, read) = counted_body(1 << 20, 1 << 10);
    let request = Request::post("/v1/components/math")
        .header(header::AUTHORIZATION, format!("Bearer {a}"))
        .body(body)
        .expect("request");
    service
        .send(request)
        .await
        .refused(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert!(
        read.load(Ordering::SeqCst) <= 2,
        "{} chunks read",
        read.load(Ordering::SeqCst)
    );
    let (body, read) = counted_body(1 << 20, 1 << 10);
    let request = Request::post("/v1/tasks/batch")
        .header(header::AUTHORIZATION, format!("Bearer {a}"))
        .body(body)
        .expect("request");
    service
        .send(request)
        .await
        .refused(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let most = (MAX_BODY >> 10) as usize + 2;
    assert!(
        read.load(Ordering::SeqCst) <= most,
        "{} chunks read",
        read.load(Ordering::SeqCst)
    );

    // A gzip bomb: a few KiB that inflate past the limit.
    let bomb = gzip(&vec![0u8; 1 << 20]);
    service
        .deploy(&a, "math", bomb, true)
        .await
        .refused(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let listed = service.call("GET", "/v1/components", Some(&a), None).await;
    assert_eq!(listed.expect(StatusCode::OK), &json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_validated_before_they_are_stored() {
    let service = Harness::new(Auth::Tokens).await;
    let a = service.tenant("a", json!({})).await;
    for bytes in [&b"hello"[..], b"\0asm\x01\0\0\0"] {
        service
            .deploy(&a, "math", bytes.to_vec(), false)
            .await
            .refused(StatusCode::BAD_REQUEST, "invalid_component");
    }
    service
        .deploy(&a, "math", b"not gzip".to_vec(), true)
        .await
        .refused(StatusCode::BAD_REQUEST, "bad_request");
    service
        .deploy(&a, "no.dots", math(), false)
        .await
        .refused(StatusCode::BAD_REQUEST, "bad_request");
    let listed = service.call("GET", "/v1/components", Some(&a), None).await;
    assert_eq!(listed.expect(StatusCode::OK), &json!([]));

    let wasm = math();
    let deployed = service.deploy(&a, "math", gzip(&wasm), true).await;
    let record = deployed.expect(StatusCode::CREATED);
    assert_eq!(record["name"], "math");
    assert_eq!(record["versions"][0]["size"], wasm.len());
    let tasks: Vec<&str> = record["versions"][0]["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|task| task["name"].as_str())
        .collect();
    assert!(tasks.contains(&"add"), "{tasks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_cap_limits_storage_and_rate() {
    let service = Harness::new(Auth::Tokens).await;
    let wasm = math();
    let size = wasm.len() as u64;
    let quotas = json!({
        "max_fuel": 1_000_000,
        "max_time_ms": 5_000,
        "storage": size + size / 2,
        "rate": {"count": 3, "per_ms": 60_000},
    });
    let token = service.tenant("a", quotas).await;
    let a = Some(token.as_str());
    service
        .deploy(&token, "math", wasm.clone(), false)
        .await
        .expect(StatusCode::CREATED);
    // The same version again stores nothing and is allowed; another name is not.
    service
        .deploy(&token, "math", wasm.clone(), false)
        .await
        .expect(StatusCode::CREATED);
    let over = service.deploy(&token, "math2", wasm, false).await;
    over.refused(StatusCode::FORBIDDEN, "storage_quota_exceeded");
    service
        .call("GET", "/v1/components/math2", a, None)
        .await
        .refused(StatusCode::NOT_FOUND, "not_found");

    let above = service
        .call(
            "POST",
            "/v1/tasks",
            a,
            Some(json!({"task": "math.add", "args": [1, 2], "fuel": 2_000_000})),
        )
        .await;
    above.refused(StatusCode::FORBIDDEN, "limit_above_cap");
    assert!(
        above.message().contains("max_fuel") && above.message().contains("2000000"),
        "{}",
        above.text
    );

    let filled = service
        .call(
            "POST",
            "/v1/tasks",
            a,
            Some(json!({"task": "math.add", "args": [1, 2], "time_limit_ms": 10})),
        )
        .await;
    let id = filled.expect(StatusCode::CREATED)["id"]
        .as_str()
        .expect("id")
        .to_string();
    let record = service
        .call("GET", &format!("/v1/tasks/{id}"), a, None)
        .await;
    let limits = &record.expect(StatusCode::OK)["message"]["limits"];
    assert_eq!(limits, &json!({"time_ms": 10, "fuel": 1_000_000}));

    // The rate: 3 per minute. One is used; a batch of 4 can never pass; 2 more fit; then 429.
    let call = json!({"task": "math.add", "args": [1, 2]});
    let four = json!({"tasks": [call, call, call, call]});
    service
        .call("POST", "/v1/tasks/batch", a, Some(four))
        .await
        .refused(StatusCode::BAD_REQUEST, "bad_request");
    let two = json!({"tasks": [call, call]});
    service
        .call("POST", "/v1/tasks/batch", a, Some(two))
        .await
        .expect(StatusCode::CREATED);
    let limited = service.call("POST", "/v1/tasks", a, Some(call)).await;
    limited.refused(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after: u64 = limited.headers[header::RETRY_AFTER]
        .to_str()
        .ok()
        .and_then(|value| value.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_the_tenants_task_changes() {
    let service = Harness::new(Auth::Tokens).await;
    let a = service.tenant("a", json!({})).await;
    service
        .deploy(&a, "math", math(), false)
        .await
        .expect(StatusCode::CREATED);
    let request = Request::get("/v1/events?task=watched")
        .header(header::AUTHORIZATION, format!("Bearer {a}"))
        .body(Body::empty())
        .expect("request");
    let response = service
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut stream = response.into_body().into_data_stream();

    for id in ["other", "watched"] {
        let call = json!({"task": "math.add", "args": [1, 2], "task_id": id});
        service
            .call("POST", "/v1/tasks", Some(&a), Some(call))
            .await
            .expect(StatusCode::CREATED);
    }
    let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
        .expect("a chunk");
    let text = String::from_utf8_lossy(&chunk);
    assert!(text.starts_with("event: task\ndata: "), "{text}");
    let data: Value = serde_json::from_str(text.trim_start_matches("event: task\ndata: ").trim())
        .expect("JSON data");
    assert_eq!(
        (data["id"].as_str(), data["state"].as_str()),
        (Some("watched"), Some("PENDING"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_needs_no_token_and_has_no_admin() {
    let service = Harness::new(Auth::Local {
        namespace: "default".into(),
    })
    .await;
    let tenant = service.call("GET", "/v1/tenant", None, None).await;
    assert_eq!(tenant.expect(StatusCode::OK)["name"], "default");
    service
        .call("GET", "/v1/admin/tenants", Some(&service.admin), None)
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden");
    service
        .deploy("ignored", "math", math(), false)
        .await
        .expect(StatusCode::CREATED);
    // The local tenant's keys are the namespace's own: a worker on it sees the component.
    let stored = service.broker.component("math").await.expect("broker");
    assert!(stored.is_some());
}

#[tokio::test]
async fn a_broker_that_does_not_answer_is_a_503_not_a_hang() {
    let (_stop, stopping) = watch::channel(false);
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: None,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let timeout = Duration::from_millis(50);
    let shared = Shared::new(
        AnyBroker::Memory(MemoryBroker::new()),
        sandbox,
        timeout,
        MAX_BODY,
        None,
        stopping,
    );
    let started = std::time::Instant::now();
    let hung = std::future::pending::<Result<(), wtq_client::broker::Error>>();
    let error = shared.call(hung).await.expect_err("timed out");
    assert_eq!(
        (error.status(), error.kind()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout && elapsed < Duration::from_secs(1),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_exactly_the_routes_served() {
    let served: BTreeSet<(Method, &str)> = routes::routes()
        .iter()
        .map(|route| (route.method, route.path))
        .collect();
    let described: BTreeSet<(Method, &str)> = openapi::described().into_iter().collect();
    assert_eq!(served, described);
    assert_eq!(
        served.len(),
        routes::routes().len(),
        "no route is listed twice"
    );

    let service = Harness::new(Auth::Tokens).await;
    let document = service.call("GET", "/openapi.json", None, None).await;
    let document = document.expect(StatusCode::OK).clone();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().expect("paths");
    let in_document: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|item| item.keys())
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = served
        .iter()
        .map(|(method, path)| (method.as_str().to_string(), path.to_string()))
        .collect();
    assert_eq!(in_document, expected);

    // Every reference resolves, and every path parameter is declared.
    let text = document.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap_or_default();
        assert!(
            document["components"]["schemas"][name].is_object(),
            "schema {name}"
        );
    }
    for (path, item) in paths {
        for operation in item.as_object().into_iter().flat_map(|item| item.values()) {
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                let declared = operation["parameters"].as_array().is_some_and(|params| {
                    params
                        .iter()
                        .any(|p| p["name"] == name && p["in"] == "path")
                });
                assert!(declared, "{path}: parameter {name}");
            }
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()),
                "{path}"
            );
        }
    }

    // The router serves every listed route (the fallback answers anything else).
    for (method, path) in &served {
        let uri = path.replace(['{', '}'], "");
        let method = method.as_str().to_ascii_uppercase();
        let reply = service.call(&method, &uri, None, None).await;
        let fallback = reply.status == StatusCode::METHOD_NOT_ALLOWED
            || reply.message().starts_with("no route");
        assert!(!fallback, "{method} {path}: {}", reply.text);
    }
    service
        .call("GET", "/healthz", None, None)
        .await
        .expect(StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_service_serves_and_shuts_down_with_a_stream_open() {
    let config = ServiceConfig::new(
        ([127, 0, 0, 1], 0).into(),
        Auth::Local {
            namespace: "default".into(),
        },
    );
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: None,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let broker = AnyBroker::Memory(MemoryBroker::new());
    let service = super::Service::bind(config, broker, sandbox)
        .await
        .expect("binds");
    let base = service.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(service.run(async move {
        let _ = stopped.await;
    }));

    let addr = base;
    let health = tokio::task::spawn_blocking(move || http_get(addr, "/healthz"))
        .await
        .expect("joined");
    assert!(health.0.starts_with("HTTP/1.1 200"), "{health:?}");
    let events = tokio::task::spawn_blocking(move || http_get(addr, "/v1/events"))
        .await
        .expect("joined");
    assert!(events.0.starts_with("HTTP/1.1 200"), "{events:?}");

    let _ = stop.send(());
    let finished = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("an open event stream does not hold the shutdown");
    finished.expect("joined").expect("served");
    drop(events);
}

/// Sends `GET path` over a plain TCP connection; returns the response head and the
/// connection, left open (an event stream goes on after its head).
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, std::net::TcpStream) {
    use std::io::Read;
    let mut connection = std::net::TcpStream::connect(addr).expect("connects");
    connection
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(connection, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("sends");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        connection.read_exact(&mut byte).expect("reads the head");
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), connection)
}
