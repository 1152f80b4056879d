//! The hosted service end to end: `wtq serve` and `wtq up` as real processes, driven over
//! HTTP (raw requests and the `wtq` CLI with `--url http://…`), against a private Redis.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::support::{Run, Wtq, guest, guest_bytes};

/// A `wtq serve` or `wtq up` process and the address it printed.
pub struct Service {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: std::path::PathBuf,
    /// How long it took from spawn to listening.
    pub startup: Duration,
}

impl Service {
    /// `wtq serve` on a free loopback port against the cluster's Redis.
    pub fn serve(cluster: &Cluster) -> Service {
        Service::spawn(
            &cluster.wtq,
            &["serve", "--url", &cluster.url(), "--listen", "127.0.0.1:0"],
            "serve",
        )
    }

    /// `wtq up` with extra flags (on a free loopback port unless they say otherwise).
    pub fn up(wtq: &Wtq, flags: &[&str]) -> Service {
        let mut args = vec!["up"];
        if !flags.contains(&"--listen") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        args.extend(flags);
        Service::spawn(wtq, &args, "up")
    }

    fn spawn(wtq: &Wtq, args: &[&str], name: &str) -> Service {
        let log = wtq.cache_dir().join(format!("{name}.log"));
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wtq"))
            .args(args)
            .env("WTQ_CACHE_DIR", wtq.cache_dir())
            .env("WTQ_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("service log file"))
            .spawn()
            .expect("wtq starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    panic!(
                        "wtq {name} exited before listening: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                })
                .expect("stdout is text");
            if let Some(url) = line.strip_prefix("listening on ") {
                break url.trim().to_string();
            }
        };
        let startup = started.elapsed();
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Service {
            child,
            url,
            log,
            startup,
        }
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a client command through the service with `token`.
    pub fn cmd(&self, wtq: &Wtq, token: Option<&str>, args: &[&str]) -> Run {
        let mut all: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        all.extend(["--url".to_string(), self.url.clone()]);
        match token {
            Some(token) => wtq.command_with_env(all, &[("WTQ_TOKEN", token)]),
            None => wtq.command(all),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for raw requests (reqwest is built without a default crypto provider).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// One HTTP exchange: status, `Retry-After` if any, body as JSON (or a string).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
}

pub async fn request(
    http: &reqwest::Client,
    service: &Service,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut builder = http.request(method, format!("{}{path}", service.url));
    if let Some(token) = token {
        builder = builder.bearer_auth(token);
    }
    if let Some(body) = body {
        builder = builder
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = builder.send().await.expect("the service answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        retry_after,
        body,
    }
}

/// An admin token made straight in Redis (the operator's bootstrap), and tenants with tokens
/// made through the service with it.
fn tenants(
    cluster: &Cluster,
    service: &Service,
    specs: &[(&str, &[&str])],
) -> (String, Vec<String>) {
    let run = cluster.cmd(&["token", "create", "--admin"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let admin = run.stdout.trim().to_string();
    let mut tokens = Vec::new();
    for (name, quotas) in specs {
        let mut args = vec!["tenant", "create", name];
        args.extend_from_slice(quotas);
        let run = service.cmd(&cluster.wtq, Some(&admin), &args);
        assert_eq!(run.code, 0, "tenant create {name}: {}", run.stderr);
        let run = service.cmd(&cluster.wtq, Some(&admin), &["token", "create", name]);
        assert_eq!(run.code, 0, "token create {name}: {}", run.stderr);
        tokens.push(run.stdout.trim().to_string());
    }
    (admin, tokens)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_deploys_and_calls_over_http_with_the_same_output_as_redis() {
    let mut cluster = Cluster::start();
    let service = Service::serve(&cluster);
    let (_, tokens) = tenants(&cluster, &service, &[("acme", &[])]);
    let token = tokens[0].as_str();
    let math = guest("math");
    let run = service.cmd(
        &cluster.wtq,
        Some(token),
        &["deploy", math.to_str().expect("utf-8")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("deployed math "), "{}", run.stdout);
    assert!(run.stdout.contains("math.add(x, y)"), "{}", run.stdout);
    cluster.worker("w", &["--tenants", "-c", "2"]);

    let run = service.cmd(
        &cluster.wtq,
        Some(token),
        &["call", "math.add", "[2,3]", "--wait", "--timeout", "30s"],
    );
    assert_eq!((run.code, run.stdout.trim()), (0, "5"), "{}", run.stderr);

    // The same commands through the service and straight against the tenant's namespace
    // print the same.
    let direct = format!("{}?namespace=t-acme", cluster.url());
    let id = service.cmd(&cluster.wtq, Some(token), &["call", "math.mul", "[6,7]"]);
    assert_eq!(id.code, 0, "{}", id.stderr);
    let id = id.stdout.trim().to_string();
    let over_http = service.cmd(
        &cluster.wtq,
        Some(token),
        &["result", &id, "--wait", "--timeout", "30s"],
    );
    assert_eq!(
        (over_http.code, over_http.stdout.trim()),
        (0, "42"),
        "{}",
        over_http.stderr
    );
    for args in [
        vec!["components"],
        vec!["status", id.as_str()],
        vec!["result", id.as_str()],
        vec!["status", id.as_str(), "--json"],
        vec!["dead", "list"],
    ] {
        let over_http = service.cmd(&cluster.wtq, Some(token), &args);
        let mut direct_args: Vec<&str> = args.clone();
        direct_args.extend(["--url", &direct]);
        let over_redis = cluster.wtq.command(&direct_args);
        assert_eq!(
            (over_http.code, &over_http.stdout),
            (over_redis.code, &over_redis.stdout),
            "wtq {args:?}: {} / {}",
            over_http.stderr,
            over_redis.stderr
        );
    }

    // Revoke a delayed task; an unknown id fails the same way as over Redis.
    let later = service.cmd(
        &cluster.wtq,
        Some(token),
        &["call", "math.add", "[1,1]", "--countdown", "1h"],
    );
    let later = later.stdout.trim().to_string();
    let run = service.cmd(&cluster.wtq, Some(token), &["revoke", &later]);
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, format!("revoked {later}").as_str()),
        "{}",
        run.stderr
    );
    let run = service.cmd(&cluster.wtq, Some(token), &["result", "no-such-task"]);
    run.fails_with(19, "no task no-such-task");

    // Without a token, or with a revoked one, the service refuses.
    let run = service.cmd(&cluster.wtq, None, &["components"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("token"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_cannot_read_list_cancel_or_detect_each_other() {
    let mut cluster = Cluster::start();
    let service = Service::serve(&cluster);
    let (admin, tokens) = tenants(&cluster, &service, &[("alpha", &[]), ("bravo", &[])]);
    let (a, b) = (tokens[0].as_str(), tokens[1].as_str());
    let http = http_client();
    let math = guest_bytes("math");
    let deployed = http
        .post(format!("{}/v1/components/math", service.url))
        .bearer_auth(b)
        .header("content-type", "application/wasm")
        .body(math)
        .send()
        .await
        .expect("upload");
    assert_eq!(deployed.status().as_u16(), 201);
    cluster.worker("w", &["--tenants"]);

    // Bravo's objects: a finished task, a waiting one, a component.
    let done = request(
        &http,
        &service,
        "POST",
        "/v1/tasks",
        Some(b),
        Some(json!({"task": "math.add", "args": [1, 2]})),
    )
    .await;
    assert_eq!(done.status, 201, "{:?}", done.body);
    let done = done.body["id"].as_str().expect("id").to_string();
    let waited = request(
        &http,
        &service,
        "GET",
        &format!("/v1/tasks/{done}/wait?timeout_ms=30000"),
        Some(b),
        None,
    )
    .await;
    assert_eq!(waited.body["state"], "SUCCESS", "{:?}", waited.body);
    let waiting = request(
        &http,
        &service,
        "POST",
        "/v1/tasks",
        Some(b),
        Some(json!({"task": "math.add", "args": [1, 2], "countdown_ms": 3_600_000})),
    )
    .await;
    let waiting = waiting.body["id"].as_str().expect("id").to_string();

    // For every route that takes an id or a name, Alpha using Bravo's gets exactly what a
    // made-up one gets.
    let missing = "0b9c7a4e-no-such-task";
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/tasks/{id}".into(), None),
        ("GET", "/v1/tasks/{id}/wait?timeout_ms=10".into(), None),
        (
            "POST",
            "/v1/tasks/{id}/revoke".into(),
            Some(json!({"terminate": true})),
        ),
        ("POST", "/v1/dead/retry".into(), Some(json!({"id": "{id}"}))),
    ];
    for id in [&done, &waiting] {
        for (method, path, body) in &routes {
            let theirs = request(
                &http,
                &service,
                method,
                &path.replace("{id}", id),
                Some(a),
                body.as_ref().map(|b| {
                    serde_json::from_str(&b.to_string().replace("{id}", id)).expect("json")
                }),
            )
            .await;
            let made_up = request(
                &http,
                &service,
                method,
                &path.replace("{id}", missing),
                Some(a),
                body.as_ref().map(|b| {
                    serde_json::from_str(&b.to_string().replace("{id}", missing)).expect("json")
                }),
            )
            .await;
            assert_eq!(
                theirs.status, 404,
                "{method} {path} with bravo's id: {:?}",
                theirs.body
            );
            let normalise = |reply: &Reply, id: &str| reply.body.to_string().replace(id, "ID");
            assert_eq!(
                (theirs.status, normalise(&theirs, id)),
                (made_up.status, normalise(&made_up, missing)),
                "{method} {path}"
            );
        }
    }
    for name in ["math", "nosuch"] {
        let reply = request(
            &http,
            &service,
            "GET",
            &format!("/v1/components/{name}"),
            Some(a),
            None,
        )
        .await;
        assert_eq!(reply.status, 404, "{name}: {:?}", reply.body);
        let call = request(
            &http,
            &service,
            "POST",
            "/v1/tasks",
            Some(a),
            Some(json!({"task": format!("{name}.add"), "args": [1, 2]})),
        )
        .await;
        assert_eq!(call.status, 400, "{:?}", call.body);
        assert_eq!(
            call.body["error"]["kind"], "unknown_task",
            "{:?}",
            call.body
        );
    }
    // Lists show only one's own; Alpha may reuse Bravo's task id without learning of it.
    for path in ["/v1/components", "/v1/dead"] {
        let reply = request(&http, &service, "GET", path, Some(a), None).await;
        assert_eq!((reply.status, &reply.body), (200, &json!([])), "{path}");
    }
    let reused = request(
        &http,
        &service,
        "POST",
        "/v1/tasks/batch",
        Some(a),
        Some(json!({"tasks": []})),
    )
    .await;
    assert_eq!(reused.status, 201, "{:?}", reused.body);
    let purge = request(
        &http,
        &service,
        "POST",
        "/v1/queues/default/purge",
        Some(a),
        None,
    )
    .await;
    assert_eq!(purge.body["count"], 0, "{:?}", purge.body);
    let still = request(
        &http,
        &service,
        "GET",
        &format!("/v1/tasks/{waiting}"),
        Some(b),
        None,
    )
    .await;
    assert_eq!(
        still.body["state"], "PENDING",
        "alpha's purge left bravo's task alone"
    );
    let usage = request(&http, &service, "GET", "/v1/usage", Some(a), None).await;
    assert_eq!(usage.body["tasks"], 0, "{:?}", usage.body);

    // Admin and tenant tokens keep to their own routes.
    let reply = request(&http, &service, "GET", "/v1/admin/tenants", Some(a), None).await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    let reply = request(&http, &service, "GET", "/v1/components", Some(&admin), None).await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);

    // Every key is in a tenant's namespace, or one of the two global registries.
    let allowed = ["wtq:tenants", "wtq:tokens"];
    for key in cluster.redis.keys() {
        assert!(
            key.starts_with("wtq:{t-alpha}:")
                || key.starts_with("wtq:{t-bravo}:")
                || allowed.contains(&key.as_str()),
            "key outside every tenant namespace: {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_stored_hashed_and_never_logged() {
    let mut cluster = Cluster::start();
    let service = Service::serve(&cluster);
    let (admin, tokens) = tenants(&cluster, &service, &[("acme", &[])]);
    let token = tokens[0].clone();
    cluster.worker("w", &["--tenants"]);
    let http = http_client();
    let math = guest("math");
    let run = service.cmd(
        &cluster.wtq,
        Some(&token),
        &["deploy", math.to_str().expect("utf-8")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = service.cmd(
        &cluster.wtq,
        Some(&token),
        &["call", "math.add", "[2,3]", "--wait", "--timeout", "30s"],
    );
    assert_eq!(run.stdout.trim(), "5", "{}", run.stderr);
    let wrong = format!("{}0", &token[..token.len() - 1]);
    let reply = request(&http, &service, "GET", "/v1/components", Some(&wrong), None).await;
    assert_eq!(reply.status, 401, "{:?}", reply.body);

    // Revoked: refused from then on.
    let list = service.cmd(&cluster.wtq, Some(&admin), &["token", "list", "--json"]);
    let records: Value = serde_json::from_str(&list.stdout).expect("token list JSON");
    let id = records
        .as_array()
        .expect("array")
        .iter()
        .find(|record| record["tenant"] == "acme")
        .and_then(|record| record["id"].as_str())
        .expect("acme's token")
        .to_string();
    let run = service.cmd(&cluster.wtq, Some(&admin), &["token", "revoke", &id]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = request(&http, &service, "GET", "/v1/components", Some(&token), None).await;
    assert_eq!(reply.status, 401, "a revoked token: {:?}", reply.body);

    // A dump of Redis (uncompressed) holds the hashes, never a token.
    cluster
        .redis
        .command(&["CONFIG", "SET", "rdbcompression", "no"]);
    cluster.redis.command(&["SAVE"]);
    let mut dump = Vec::new();
    std::fs::File::open(cluster.redis.dir().join("dump.rdb"))
        .expect("dump.rdb")
        .read_to_end(&mut dump)
        .expect("read dump");
    let dump = String::from_utf8_lossy(&dump);
    // The admin token is still live: its hash is there (so the grep can find what it seeks).
    let hash = wtq::service::token::hash(&admin);
    assert!(
        dump.contains(&hash),
        "the dump holds the admin token's hash"
    );
    for secret in [&token, &admin] {
        let body = &secret[wtq::service::token::PREFIX.len()..];
        assert!(!dump.contains(body), "a token in plaintext in Redis");
        let logs = service.log()
            + &std::fs::read_to_string(cluster.wtq.cache_dir().join("worker-w.log"))
                .unwrap_or_default();
        assert!(!logs.is_empty(), "the service logged at debug level");
        assert!(!logs.contains(body), "a token in the logs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_json_errors() {
    let cluster = Cluster::start();
    let service = Service::serve(&cluster);
    let (_, tokens) = tenants(
        &cluster,
        &service,
        &[("acme", &["--max-time", "10s", "--max-upload", "1MiB"])],
    );
    let token = tokens[0].as_str();
    let http = http_client();

    let reply = request(&http, &service, "GET", "/v1/components", None, None).await;
    assert_eq!(
        (reply.status, &reply.body["error"]["kind"]),
        (401, &json!("unauthorized")),
        "{:?}",
        reply.body
    );
    let reply = request(
        &http,
        &service,
        "POST",
        "/v1/tasks",
        Some(token),
        Some(json!({"task": "math.add", "prority": 1})),
    )
    .await;
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("prority"),
        "{:?}",
        reply.body
    );
    let malformed = http
        .post(format!("{}/v1/tasks", service.url))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{\"task\": ")
        .send()
        .await
        .expect("answer");
    assert_eq!(malformed.status().as_u16(), 400);

    // Not a component: refused before anything is stored.
    let reply = http
        .post(format!("{}/v1/components/junk", service.url))
        .bearer_auth(token)
        .body(b"\0asm this is not a component".to_vec())
        .send()
        .await
        .expect("answer");
    assert_eq!(reply.status().as_u16(), 400);
    let reply = request(&http, &service, "GET", "/v1/components", Some(token), None).await;
    assert_eq!(reply.body, json!([]));

    // Over the upload cap: 413 from the declared length alone, with no body sent.
    let address = service.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "POST /v1/components/big HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Length: 10000000000\r\n\r\n"
    )
    .expect("send headers");
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .expect("an answer before any body");
    assert_eq!(&head, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&head));

    // Above the tenant's time cap: refused, naming the cap.
    let math = guest("math");
    let run = service.cmd(
        &cluster.wtq,
        Some(token),
        &["deploy", math.to_str().expect("utf-8")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reply = request(
        &http,
        &service,
        "POST",
        "/v1/tasks",
        Some(token),
        Some(json!({"task": "math.add", "args": [1, 2], "time_limit_ms": 60_000})),
    )
    .await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    assert_eq!(reply.body["error"]["kind"], "limit_above_cap");
    let run = service.cmd(
        &cluster.wtq,
        Some(token),
        &["call", "math.add", "[1,2]", "--time-limit", "1m"],
    );
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("10s") || run.stderr.contains("10000"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_answers_503_within_a_second() {
    let mut cluster = Cluster::start();
    let service = Service::serve(&cluster);
    let (_, tokens) = tenants(&cluster, &service, &[("acme", &[])]);
    let token = tokens[0].as_str();
    let http = http_client();
    let reply = request(&http, &service, "GET", "/v1/components", Some(token), None).await;
    assert_eq!(reply.status, 200);
    let math = guest_bytes("math");
    let upload = |http: reqwest::Client, url: String, math: Vec<u8>| async move {
        http.post(format!("{url}/v1/components/math"))
            .bearer_auth(token)
            .body(math)
            .send()
            .await
            .expect("the service answers")
            .status()
            .as_u16()
    };
    assert_eq!(
        upload(http.clone(), service.url.clone(), math.clone()).await,
        201
    );
    cluster.redis.kill();
    // A deploy validates (from the compile cache by now), then meets the broker's deadline.
    let started = Instant::now();
    let status = upload(http.clone(), service.url.clone(), math).await;
    assert_eq!(status, 503, "deploy with Redis down");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "deploy took {:?}",
        started.elapsed()
    );
    for (method, path, body) in [
        (
            "POST",
            "/v1/tasks",
            Some(json!({"task": "math.add", "args": [1, 2]})),
        ),
        ("GET", "/v1/tasks/x", None),
        ("GET", "/v1/components", None),
    ] {
        let started = Instant::now();
        let reply = request(&http, &service, method, path, Some(token), body).await;
        let elapsed = started.elapsed();
        assert_eq!(reply.status, 503, "{method} {path}: {:?}", reply.body);
        assert_eq!(reply.body["error"]["kind"], "unavailable");
        assert!(
            elapsed < Duration::from_millis(1500),
            "{method} {path} took {elapsed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wtq_up_serves_one_local_tenant_without_tokens() {
    let wtq = Wtq::new();
    let service = Service::up(&wtq, &["-c", "2"]);
    eprintln!("wtq up listening after {:?}", service.startup);
    let math = guest("math");
    let run = service.cmd(&wtq, None, &["deploy", math.to_str().expect("utf-8")]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    // Watch the events while a task runs.
    let http = http_client();
    let mut events = http
        .get(format!("{}/v1/events", service.url))
        .send()
        .await
        .expect("events stream");
    assert_eq!(events.status().as_u16(), 200);
    let run = service.cmd(
        &wtq,
        None,
        &["call", "math.add", "[2,3]", "--wait", "--timeout", "30s"],
    );
    assert_eq!((run.code, run.stdout.trim()), (0, "5"), "{}", run.stderr);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("SUCCESS") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no SUCCESS event ({other:?}); saw: {seen}"),
        }
    }
    assert!(seen.contains("PENDING"), "{seen}");

    let usage = request(&http, &service, "GET", "/v1/usage", None, None).await;
    assert_eq!(usage.body["tasks"], 1, "{:?}", usage.body);
    assert!(
        usage.body["fuel"].as_u64().unwrap_or(0) > 0,
        "{:?}",
        usage.body
    );
    let openapi = request(&http, &service, "GET", "/openapi.json", None, None).await;
    assert!(
        openapi.body["openapi"]
            .as_str()
            .unwrap_or("")
            .starts_with("3."),
        "{:?}",
        openapi.body
    );
    assert!(openapi.body["paths"]["/v1/tasks"].is_object());
}

#[tokio::test(flavor = "multi_thread")]
async fn workflows_run_over_http_on_the_embedded_broker() {
    let wtq = Wtq::new();
    let service = Service::up(&wtq, &["-c", "2"]);
    for name in ["math", "chaos"] {
        let path = guest(name);
        let run = service.cmd(&wtq, None, &["deploy", path.to_str().expect("utf-8")]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let document = wtq.cache_dir().join("chord.json");
    let header: Vec<Value> = (0..10)
        .map(|i| json!({"task": "math.add", "args": [i, i]}))
        .collect();
    let chord = json!({"chord": {"header": header, "body": {"task": "math.xsum"}}});
    std::fs::write(&document, chord.to_string()).expect("document");
    let path = document.to_str().expect("utf-8");
    let run = service.cmd(
        &wtq,
        None,
        &["workflow", "submit", path, "--wait", "--id", "wf1"],
    );
    assert_eq!((run.code, run.stdout.trim()), (0, "90"), "{}", run.stderr);
    let shown = service.cmd(&wtq, None, &["result", "wf1"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown.stdout.contains("header of 10: 10 SUCCESS"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.ends_with("result: 90\n"), "{}", shown.stdout);

    // The routes themselves: 201 with the tree, 404 for an unknown id, 400 naming the node.
    let http = http_client();
    let chain = json!({"chain": [
        {"task": "math.add", "args": [4, 9]},
        {"task": "math.mul", "args": [2]},
        {"task": "chaos.fail", "args": ["late"], "immutable": true},
        {"task": "math.add", "args": [8]}
    ], "link_error": [{"task": "chaos.echo", "task_id": "errback"}]});
    let submitted = request(
        &http,
        &service,
        "POST",
        "/v1/workflows?id=wf2",
        None,
        Some(chain),
    )
    .await;
    assert_eq!(submitted.status, 201, "{:?}", submitted.body);
    assert_eq!(submitted.body["id"], "wf2");
    assert_eq!(
        submitted.body["tree"]["linked"]["node"]["chain"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    let run = service.cmd(
        &wtq,
        None,
        &["result", "errback", "--wait", "--timeout", "30s"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let failure: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(
        (failure["task"].as_str(), failure["message"].as_str()),
        (Some("chaos.fail"), Some("late"))
    );
    let last = submitted.body["tree"]["linked"]["node"]["chain"][3]["task"]["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let run = service.cmd(&wtq, None, &["result", &last]);
    run.fails_with(1, "upstream_failed");
    let tree = request(&http, &service, "GET", "/v1/workflows/wf2", None, None).await;
    assert_eq!(tree.body, submitted.body);
    let missing = request(&http, &service, "GET", "/v1/workflows/nope", None, None).await;
    assert_eq!(missing.status, 404);
    let bad = json!({"chain": [{"task": "math.add", "args": [1, 2]}, {"task": "math.add", "args": [3, 4]}]});
    let refused = request(&http, &service, "POST", "/v1/workflows", None, Some(bad)).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body["error"]["kind"], "invalid_args");
    let message = refused.body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(".chain[1]") && message.contains("immutable"),
        "{message}"
    );
    let typo = json!({"chain": [], "qeue": "x"});
    let refused = request(&http, &service, "POST", "/v1/workflows", None, Some(typo)).await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("`qeue`"),
        "{:?}",
        refused.body
    );
}

/// Median of the queue waits (enqueued → started) of tasks, in ms.
async fn median_wait(
    http: &reqwest::Client,
    service: &Service,
    token: &str,
    ids: &[String],
) -> f64 {
    let mut waits = Vec::new();
    for id in ids {
        let reply = request(
            http,
            service,
            "GET",
            &format!("/v1/tasks/{id}/wait?timeout_ms=60000"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(reply.body["state"], "SUCCESS", "{:?}", reply.body);
        let created = reply.body["message"]["created_ms"]
            .as_f64()
            .expect("created_ms");
        let started = reply.body["attempts"][0]["started_ms"]
            .as_f64()
            .expect("started_ms");
        waits.push(started - created);
    }
    waits.sort_by(f64::total_cmp);
    waits[waits.len() / 2]
}

/// The quiet tenant's trickle: one quick task every 50 ms.
async fn trickle(
    http: &reqwest::Client,
    service: &Service,
    token: &str,
    count: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let reply = request(
            http,
            service,
            "POST",
            "/v1/tasks",
            Some(token),
            Some(json!({"task": "chaos.echo", "args": [i]})),
        )
        .await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        ids.push(reply.body["id"].as_str().expect("id").to_string());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "timing: run alone by `cargo xtask test` (cargo test -p wtq --test e2e -- --ignored)"]
async fn a_noisy_tenant_is_held_to_its_quota_and_does_not_slow_a_quiet_one() {
    let mut cluster = Cluster::start();
    let service = Service::serve(&cluster);
    let (_, tokens) = tenants(
        &cluster,
        &service,
        &[
            ("noisy", &["--concurrency", "1", "--rate", "100/s"]),
            ("quiet", &[]),
        ],
    );
    let (noisy, quiet) = (tokens[0].clone(), tokens[1].clone());
    let chaos = guest("chaos");
    for token in [&noisy, &quiet] {
        let run = service.cmd(
            &cluster.wtq,
            Some(token),
            &["deploy", chaos.to_str().expect("utf-8")],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    cluster.worker("w", &["--tenants", "-c", "4"]);
    let http = http_client();
    // Warm up (compile cache, first instance), then the quiet tenant's wait alone.
    median_wait(
        &http,
        &service,
        &quiet,
        &trickle(&http, &service, &quiet, 3).await,
    )
    .await;
    let idle = median_wait(
        &http,
        &service,
        &quiet,
        &trickle(&http, &service, &quiet, 40).await,
    )
    .await;

    // The flood: CPU-bound tasks (each spins until its 200 ms limit), far past the rate.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (http, url, noisy, stop) = (
            http.clone(),
            service.url.clone(),
            noisy.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let (mut accepted, mut limited) = (0u64, 0u64);
            let task = json!({"task": "chaos.spin", "time_limit_ms": 200});
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = http
                    .post(format!("{url}/v1/tasks/batch"))
                    .bearer_auth(&noisy)
                    .json(&json!({"tasks": vec![task.clone(); 50]}))
                    .send()
                    .await
                    .expect("the service answers");
                match response.status().as_u16() {
                    201 => accepted += 50,
                    429 => {
                        assert!(response.headers().contains_key("retry-after"));
                        limited += 1;
                        // Still 25 times its rate, without the test's own client taking
                        // the CPUs whose sharing it measures.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("flood got {other}"),
                }
            }
            (accepted, limited)
        })
    };
    let sampler = {
        let port = cluster.redis.port();
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let mut most = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = crate::redis_server::RedisServer::command_on(
                    port,
                    &["ZCARD", "wtq:{t-noisy}:leases"],
                );
                most = most.max(reply.text().parse().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(10));
            }
            most
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = median_wait(
        &http,
        &service,
        &quiet,
        &trickle(&http, &service, &quiet, 40).await,
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (accepted, limited) = flood.await.expect("flood");
    let most_running = sampler.await.expect("sampler");
    eprintln!(
        "noisy neighbour: quiet median wait {idle:.1} ms idle, {loaded:.1} ms under the flood; noisy: {accepted} accepted, {limited} batches refused (429), at most {most_running} running"
    );
    assert!(limited > 0, "the flood went past its rate and was refused");
    assert!(
        most_running <= 1,
        "noisy ran {most_running} at once over its cap of 1"
    );
    assert!(
        loaded <= 2.0 * idle.max(1.0),
        "quiet's median wait went from {idle:.1} ms to {loaded:.1} ms"
    );
}

/// `bytes` with a custom section of `size` bytes appended that gzip cannot shrink: a valid
/// component as large as a test needs (custom sections are legal anywhere in a component).
fn padded(bytes: &[u8], size: usize) -> Vec<u8> {
    fn leb128(mut value: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"wtq-test-padding";
    let mut payload = Vec::with_capacity(size + 32);
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    payload.extend((0..size).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    let mut out = bytes.to_vec();
    out.push(0);
    leb128(payload.len(), &mut out);
    out.extend(payload);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn deploying_a_large_component_over_http_shows_the_upload_on_stderr() {
    use sha2::{Digest as _, Sha256};
    let wtq = Wtq::new();
    let service = Service::up(&wtq, &["-c", "1"]);
    let wasm = padded(&guest_bytes("math"), 3 << 19);
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("bigmath.wasm");
    std::fs::write(&file, &wasm).expect("component written");
    let file = file.to_str().expect("utf-8");

    let run = service.cmd(&wtq, None, &["deploy", file, "--progress"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let digest: String = Sha256::digest(&wasm)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert!(
        run.stdout
            .starts_with(&format!("deployed bigmath {digest}\n  bigmath.add(")),
        "{}",
        run.stdout
    );
    // Redrawn in place as the pieces go out, ending full, on a line of its own.
    let draws: Vec<&str> = run
        .stderr
        .split('\r')
        .filter(|draw| !draw.is_empty())
        .map(|draw| draw.trim_end_matches('\n').trim_end_matches("\x1b[K"))
        .collect();
    assert!(draws.len() > 3, "{:?}", run.stderr);
    assert!(run.stderr.ends_with("\x1b[K\n"), "{:?}", run.stderr);
    let last = draws.last().expect("drawn");
    let bar = format!("[{}]", "#".repeat(30));
    assert!(last.starts_with(&bar), "{last}");
    let sizes = &last[bar.len() + 1..];
    let (sent, total) = sizes.split_once(" / ").expect("sent / total");
    assert_eq!(sent, total, "{last}");
    // The 1.5 MiB of padding does not compress: the whole of it went over the wire.
    let mib: f64 = total
        .strip_suffix(" MiB")
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("a size in MiB: {last}"));
    assert!(mib >= 1.5, "{last}");
    assert!(!draws[0].starts_with(&bar), "{draws:?}");

    // Without --progress and a terminal, stderr stays quiet and stdout is the same.
    let quiet = service.cmd(&wtq, None, &["deploy", file]);
    assert_eq!(
        (quiet.code, quiet.stderr.as_str(), quiet.stdout.as_str()),
        (0, "", run.stdout.as_str())
    );
    // The padded component is a working one.
    let call = service.cmd(
        &wtq,
        None,
        &["call", "bigmath.add", "[2,3]", "--wait", "--timeout", "30s"],
    );
    assert_eq!((call.code, call.stdout.trim()), (0, "5"), "{}", call.stderr);
}
