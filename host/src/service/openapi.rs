//! The OpenAPI 3.1 document served at `/openapi.json`, written by hand from
//! `docs/http-api.md` and the bodies in `wtq_client::api`. A test checks its operations are
//! exactly the router's routes ([`super::routes::routes`]) and that every `$ref` resolves.

use serde_json::{Map, Value, json};

use super::routes::Method;

/// One operation of the document.
struct Operation {
    method: Method,
    path: &'static str,
    body: Value,
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for operation in operations() {
        let item = paths.entry(operation.path).or_insert_with(|| json!({}));
        if let Value::Object(item) = item {
            item.insert(operation.method.as_str().to_string(), operation.body);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "wtq",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A distributed task queue whose tasks are WebAssembly components. Every /v1/ route needs `Authorization: Bearer <token>` (none for `wtq up` on loopback). Another tenant's object answers exactly like a missing one."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    })
}

/// The (method, path) of every operation the document describes.
#[cfg(test)]
pub fn described() -> Vec<(Method, &'static str)> {
    operations()
        .into_iter()
        .map(|operation| (operation.method, operation.path))
        .collect()
}

fn operations() -> Vec<Operation> {
    use Method::{Delete, Get, Post, Put};
    let tenant =
        |method, path, summary: &str, params: Value, body: Value, ok: Value, errors: &[u16]| {
            let mut errors = errors.to_vec();
            errors.extend([401, 403, 503]);
            operation(method, path, summary, params, body, ok, &errors, true)
        };
    let admin = tenant;
    let open = |path, summary: &str, ok: Value, errors: &[u16]| {
        operation(
            Get,
            path,
            summary,
            json!([]),
            Value::Null,
            ok,
            errors,
            false,
        )
    };
    vec![
        tenant(
            Post,
            "/v1/components/{name}",
            "Deploy a component: validated in the sandbox, stored by digest, made the current version of `name`.",
            json!([path_param(
                "name",
                "Component name: 1 to 128 ASCII letters, digits, `_` or `-`."
            )]),
            json!({
                "required": true,
                "description": "The component's bytes; `Content-Encoding: gzip` allowed. Its size (decompressed) is capped by the tenant's `max_upload` and the service's body limit.",
                "content": {"application/wasm": {"schema": {"type": "string", "contentMediaType": "application/wasm"}}}
            }),
            reply(201, "The component's record.", schema("ComponentRecord")),
            &[400, 413],
        ),
        tenant(
            Get,
            "/v1/components",
            "Every deployed component, sorted by name.",
            json!([]),
            Value::Null,
            reply(200, "Components.", array("ComponentRecord")),
            &[],
        ),
        tenant(
            Get,
            "/v1/components/{name}",
            "One component and its versions, newest first.",
            json!([path_param("name", "Component name.")]),
            Value::Null,
            reply(200, "The component.", schema("ComponentRecord")),
            &[404],
        ),
        tenant(
            Post,
            "/v1/tasks",
            "Enqueue one call. Limits above the tenant's caps are refused (403 limit_above_cap); missing ones get the cap.",
            json!([]),
            json_body("EnqueueRequest"),
            reply(201, "The task's id.", schema("EnqueueResponse")),
            &[400, 409, 413, 429],
        ),
        tenant(
            Post,
            "/v1/tasks/batch",
            "Enqueue up to 10,000 calls; all are checked before any is stored. A batch larger than the tenant's rate count is refused (400).",
            json!([]),
            json_body("BatchRequest"),
            reply(201, "Ids in request order.", schema("BatchResponse")),
            &[400, 409, 413, 429],
        ),
        tenant(
            Post,
            "/v1/workflows",
            "Submit a workflow document (chain, group, chord, chunks, map, starmap of task calls, with call options on any node). Every task is checked and counts against the rate; the workflow is stored whole.",
            json!([{
                "name": "id", "in": "query", "required": false,
                "description": "The workflow's id (default: a new UUID).",
                "schema": {"type": "string"}
            }]),
            json_body("WorkflowNode"),
            reply(
                201,
                "The workflow's id and tree.",
                schema("WorkflowResponse"),
            ),
            &[400, 403, 409, 413, 429],
        ),
        tenant(
            Get,
            "/v1/workflows/{id}",
            "A workflow's tree with every task id; read each task's state with `GET /v1/tasks/{id}`.",
            json!([path_param("id", "Workflow id.")]),
            Value::Null,
            reply(
                200,
                "The workflow's id and tree.",
                schema("WorkflowResponse"),
            ),
            &[404],
        ),
        tenant(
            Get,
            "/v1/tasks/{id}",
            "A task's record.",
            json!([path_param("id", "Task id.")]),
            Value::Null,
            reply(200, "The record.", schema("TaskRecord")),
            &[404],
        ),
        tenant(
            Get,
            "/v1/tasks/{id}/wait",
            "Long-poll: the record once the task is final, or after `timeout_ms`.",
            json!([
                path_param("id", "Task id."),
                {
                    "name": "timeout_ms", "in": "query", "required": false,
                    "description": "How long to wait (default 30,000; at most 60,000).",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 60000}
                }
            ]),
            Value::Null,
            reply(
                200,
                "The record (final, or as it is after the timeout).",
                schema("TaskRecord"),
            ),
            &[400, 404],
        ),
        tenant(
            Post,
            "/v1/tasks/{id}/revoke",
            "Revoke a task; with `terminate`, a running call is stopped. An empty body is `{}`.",
            json!([path_param("id", "Task id.")]),
            json!({"required": false, "content": {"application/json": {"schema": schema("RevokeRequest")}}}),
            reply(200, "What the revoke did.", schema("RevokeResponse")),
            &[400, 404],
        ),
        tenant(
            Post,
            "/v1/queues/{queue}/purge",
            "Remove every waiting message of a queue (their tasks become REVOKED).",
            json!([path_param("queue", "Queue name.")]),
            Value::Null,
            reply(200, "How many were removed.", schema("CountResponse")),
            &[400],
        ),
        tenant(
            Get,
            "/v1/dead",
            "Dead-lettered tasks, most recent first.",
            json!([{
                "name": "limit", "in": "query", "required": false,
                "description": "Most records to return (default 100, at most 10,000).",
                "schema": {"type": "integer", "minimum": 0, "maximum": 10000}
            }]),
            Value::Null,
            reply(200, "Records.", array("TaskRecord")),
            &[400],
        ),
        tenant(
            Post,
            "/v1/dead/retry",
            "Queue one dead-lettered task again (404 if there is none with that id), or all when `id` is absent.",
            json!([]),
            json!({"required": false, "content": {"application/json": {"schema": schema("RetryDeadRequest")}}}),
            reply(200, "How many were queued again.", schema("CountResponse")),
            &[400, 404],
        ),
        tenant(
            Delete,
            "/v1/dead",
            "Delete every dead-lettered task and its record.",
            json!([]),
            Value::Null,
            reply(200, "How many were deleted.", schema("CountResponse")),
            &[],
        ),
        tenant(
            Get,
            "/v1/schedules",
            "The tenant's periodic task entries, by name, each with its last handled tick.",
            json!([]),
            Value::Null,
            reply(200, "Entries.", array("ScheduleStatus")),
            &[],
        ),
        tenant(
            Post,
            "/v1/schedules",
            "Store a periodic task entry (replacing one of the same name); the tenant's beat fires it.",
            json!([]),
            json_body("ScheduleEntry"),
            reply(201, "The stored entry.", schema("ScheduleEntry")),
            &[400],
        ),
        tenant(
            Delete,
            "/v1/schedules/{name}",
            "Remove a periodic task entry and its state.",
            json!([path_param("name", "Entry name.")]),
            Value::Null,
            reply(200, "1: the entry was removed.", schema("CountResponse")),
            &[404],
        ),
        tenant(
            Get,
            "/v1/events",
            "The tenant's event log as server-sent events: `event: task` or `event: worker`, `data: Event` JSON; comments keep the connection alive. Reading turns the log on for the tenant.",
            json!([{
                "name": "task", "in": "query", "required": false,
                "description": "Only this task's events.",
                "schema": {"type": "string"}
            }, {
                "name": "after", "in": "query", "required": false,
                "description": "Start after this event's `cursor` (`0`: the whole log); default: live events only. A `Last-Event-ID` header works the same.",
                "schema": {"type": "string"}
            }]),
            Value::Null,
            json!({"200": {
                "description": "An endless event stream; each `data` is an Event.",
                "content": {"text/event-stream": {"schema": {"type": "string"}, "itemSchema": schema("Event")}}
            }}),
            &[400],
        ),
        tenant(
            Get,
            "/v1/usage",
            "The tenant's metered usage.",
            json!([]),
            Value::Null,
            reply(200, "Usage counters.", schema("Usage")),
            &[],
        ),
        tenant(
            Get,
            "/v1/tenant",
            "The caller's own tenant and quotas.",
            json!([]),
            Value::Null,
            reply(200, "The tenant.", schema("Tenant")),
            &[],
        ),
        admin(
            Post,
            "/v1/admin/tenants",
            "Create a tenant (admin token).",
            json!([]),
            json_body("TenantRequest"),
            reply(201, "The tenant.", schema("Tenant")),
            &[400, 409],
        ),
        admin(
            Put,
            "/v1/admin/tenants/{name}",
            "Replace a tenant's quotas (admin token).",
            json!([path_param("name", "Tenant name.")]),
            json_body("Quotas"),
            reply(200, "The tenant.", schema("Tenant")),
            &[400, 404],
        ),
        admin(
            Get,
            "/v1/admin/tenants",
            "Every tenant, sorted by name (admin token).",
            json!([]),
            Value::Null,
            reply(200, "Tenants.", array("Tenant")),
            &[],
        ),
        admin(
            Post,
            "/v1/admin/tokens",
            "Create a token for a tenant, or an admin token when `tenant` is absent (admin token). The token is in this reply only.",
            json!([]),
            json_body("TokenRequest"),
            reply(201, "The token, shown once.", schema("TokenResponse")),
            &[400, 404],
        ),
        admin(
            Get,
            "/v1/admin/tokens",
            "Every token's record, never the token itself (admin token).",
            json!([]),
            Value::Null,
            reply(200, "Token records.", array("TokenRecord")),
            &[],
        ),
        admin(
            Delete,
            "/v1/admin/tokens/{id}",
            "Revoke a token (admin token). Other service processes stop accepting it within a second.",
            json!([path_param("id", "Token id (`tok_…`).")]),
            Value::Null,
            json!({"204": {"description": "Revoked."}}),
            &[404],
        ),
        open(
            "/openapi.json",
            "This document.",
            json!({"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}}}),
            &[],
        ),
        open(
            "/healthz",
            "200 when the broker answers within the broker timeout.",
            json!({"200": {"description": "Healthy.", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]
            }}}}}),
            &[503],
        ),
        open(
            "/metrics",
            "Prometheus metrics (text format 0.0.4): requests by route and status class, tasks and workflows enqueued, rate-limit refusals. Names no tenant.",
            json!({"200": {"description": "The metrics.", "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}}}),
            &[],
        ),
    ]
}

#[allow(clippy::too_many_arguments)]
fn operation(
    method: Method,
    path: &'static str,
    summary: &str,
    parameters: Value,
    body: Value,
    ok: Value,
    errors: &[u16],
    secured: bool,
) -> Operation {
    let mut responses = match ok {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for status in errors {
        responses.insert(status.to_string(), error_response(*status));
    }
    let mut operation = json!({
        "summary": summary,
        "parameters": parameters,
        "responses": responses,
    });
    if let Value::Object(map) = &mut operation {
        if !body.is_null() {
            map.insert("requestBody".into(), body);
        }
        let security = if secured {
            json!([{"bearer": []}])
        } else {
            json!([])
        };
        map.insert("security".into(), security);
    }
    Operation {
        method,
        path,
        body: operation,
    }
}

fn error_response(status: u16) -> Value {
    let description = match status {
        400 => {
            "bad_request, invalid_json (naming the field), invalid_component, invalid_args, unknown_task or invalid_option."
        }
        401 => "unauthorized: missing, unknown or revoked token.",
        403 => {
            "forbidden (wrong kind of token), limit_above_cap (naming the cap) or storage_quota_exceeded."
        }
        404 => "not_found: no such object (another tenant's answers the same).",
        409 => "conflict: the task id is in use, or the tenant exists.",
        413 => "too_large: the body or upload is over its limit (refused without reading it all).",
        429 => "rate_limited: the tenant's enqueue rate is used up; see Retry-After.",
        503 => "unavailable: the broker did not answer in time; the reply claims nothing was done.",
        _ => "An error.",
    };
    let mut response = json!({
        "description": description,
        "content": {"application/json": {"schema": schema("Error")}},
    });
    if status == 429
        && let Value::Object(map) = &mut response
    {
        map.insert(
            "headers".into(),
            json!({"Retry-After": {
                "description": "Whole seconds until enough of the rate frees up.",
                "schema": {"type": "integer", "minimum": 1}
            }}),
        );
    }
    response
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn array(name: &str) -> Value {
    json!({"type": "array", "items": schema(name)})
}

fn reply(status: u16, description: &str, schema: Value) -> Value {
    json!({status.to_string(): {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }})
}

fn json_body(name: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema(name)}}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn schemas() -> Value {
    let int = json!({"type": "integer", "minimum": 0});
    let opt_int = json!({"type": "integer", "minimum": 0});
    let mut schemas = json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["kind", "message"],
                "properties": {
                    "kind": {"type": "string", "description": "Stable, snake_case."},
                    "message": {"type": "string", "description": "One line: what was wrong and what to do."}
                }
            }}
        },
        "State": {
            "type": "string",
            "enum": ["PENDING", "RECEIVED", "STARTED", "PROGRESS", "SUCCESS", "FAILURE", "RETRY", "REVOKED"]
        },
        "Backoff": {
            "type": "object",
            "required": ["base_ms", "max_ms"],
            "properties": {"base_ms": int, "max_ms": int, "jitter": {"type": "boolean", "default": true}}
        },
        "EnqueueRequest": {
            "type": "object",
            "additionalProperties": false,
            "required": ["task"],
            "properties": {
                "task": {"type": "string", "description": "NAME.TASK or NAME@DIGEST.TASK."},
                "args": {"description": "Positional arguments (array), or keyword arguments as a lone object."},
                "kwargs": {"type": "object"},
                "queue": {"type": "string", "default": "default"},
                "priority": {"type": "integer", "minimum": 0, "maximum": 9},
                "countdown_ms": opt_int,
                "eta_ms": {"type": "integer", "description": "Not before this Unix time (ms)."},
                "expires_ms": opt_int,
                "max_retries": opt_int,
                "retry_backoff": schema("Backoff"),
                "time_limit_ms": {"type": "integer", "minimum": 0, "description": "At most the tenant's max_time_ms; defaults to it."},
                "fuel": {"type": "integer", "minimum": 0, "description": "At most the tenant's max_fuel; defaults to it."},
                "memory": {"type": "integer", "minimum": 0, "description": "Bytes; at most the tenant's max_memory; defaults to it."},
                "task_id": {"type": "string"},
                "idempotency_key": {"type": "string"},
                "max_deliveries": opt_int,
                "result_expires_ms": opt_int
            }
        },
        "ScheduleEntry": {
            "type": "object",
            "additionalProperties": false,
            "required": ["name", "call", "trigger"],
            "properties": {
                "name": {"type": "string", "description": "1 to 128 ASCII letters, digits, `_`, `-` or `.`."},
                "call": {"allOf": [schema("EnqueueRequest")], "description": "The call made at each tick; not `task_id`, `idempotency_key`, `eta_ms` or `countdown_ms` (the beat sets the key and ETA per tick)."},
                "trigger": {
                    "description": "Exactly one of: `{\"cron\": {\"expr\", \"tz\"}}` (5 crontab fields, or 6-7 with seconds; IANA zone, default UTC), `{\"every_ms\": N}` (N ≥ 1000, ticks at multiples of N since the epoch), `{\"at_ms\": UNIX_MS}` (once).",
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "properties": {
                        "cron": {"type": "object", "required": ["expr"], "properties": {"expr": {"type": "string"}, "tz": {"type": "string"}}},
                        "every_ms": {"type": "integer", "minimum": 1000},
                        "at_ms": {"type": "integer", "minimum": 0}
                    }
                },
                "missed": {"type": "string", "enum": ["skip", "catch_up"], "default": "skip", "description": "Missed ticks: fire the latest only, or every one within the catch-up window."},
                "catch_up_window_ms": {"type": "integer", "minimum": 0, "default": 3600000},
                "overlap": {"type": "string", "enum": ["allow", "skip"], "default": "allow", "description": "skip: no run while the entry's previous run is not final."}
            }
        },
        "ScheduleStatus": {
            "description": "A ScheduleEntry's fields, plus `fired` once a beat has handled it.",
            "allOf": [schema("ScheduleEntry")],
            "properties": {"fired": {
                "type": "object",
                "required": ["tick_ms"],
                "properties": {
                    "tick_ms": {"type": "integer", "description": "The last handled tick (Unix ms)."},
                    "task": {"type": "string", "description": "The task of the latest fired tick."}
                }
            }}
        },
        "EnqueueResponse": {
            "type": "object",
            "required": ["id", "created"],
            "properties": {
                "id": {"type": "string"},
                "created": {"type": "boolean", "description": "False when an idempotency key matched an earlier task."}
            }
        },
        "BatchRequest": {
            "type": "object",
            "additionalProperties": false,
            "required": ["tasks"],
            "properties": {"tasks": {"type": "array", "maxItems": 10000, "items": schema("EnqueueRequest")}}
        },
        "WorkflowNode": {
            "type": "object",
            "description": "One of `task` (with `args`, `kwargs`, `immutable`, `task_id`), `chain` (array), `group` (array), `chord` ({header, body}), `chunks` ({task, items, n}), `map` or `starmap` ({task, items}); beside it the call options (`queue`, `priority`, `countdown_ms`, `expires_ms`, `max_retries`, `retry_backoff`, `time_limit_ms`, `fuel`, `memory`, `max_deliveries`, `result_expires_ms`), `link`, `link_error` (arrays of nodes) and `allow_failures`.",
            "additionalProperties": true
        },
        "WorkflowResponse": {
            "type": "object",
            "required": ["id", "tree"],
            "properties": {
                "id": {"type": "string"},
                "tree": {"type": "object", "description": "`{\"task\": {id, task, batch?, link?, link_error?}}`, `{\"chain\": [...]}`, `{\"group\": [...]}`, `{\"chunks\": [...]}`, `{\"chord\": {header, body}}` or `{\"linked\": {node, link, link_error}}`."}
            }
        },
        "BatchResponse": {
            "type": "object",
            "required": ["tasks"],
            "properties": {"tasks": array("EnqueueResponse")}
        },
        "RevokeRequest": {
            "type": "object",
            "additionalProperties": false,
            "properties": {"terminate": {"type": "boolean", "default": false}}
        },
        "RevokeResponse": {
            "type": "object",
            "required": ["outcome"],
            "properties": {
                "outcome": {"type": "string", "enum": ["revoked", "running", "already_final"]},
                "terminating": {"type": "boolean", "description": "For `running`."},
                "state": schema("State")
            }
        },
        "RetryDeadRequest": {
            "type": "object",
            "additionalProperties": false,
            "properties": {"id": {"type": "string"}}
        },
        "CountResponse": {
            "type": "object",
            "required": ["count"],
            "properties": {"count": int}
        },
        "TaskFailure": {
            "type": "object",
            "required": ["kind", "message"],
            "properties": {"kind": {"type": "string"}, "message": {"type": "string"}}
        },
        "Progress": {
            "type": "object",
            "required": ["done", "total"],
            "properties": {"done": int, "total": int, "note": {"type": "string"}}
        },
        "TaskMessage": {
            "type": "object",
            "required": ["id", "component", "task", "args", "queue", "created_ms"],
            "properties": {
                "id": {"type": "string"},
                "component": {"type": "string"},
                "digest": {"type": "string"},
                "task": {"type": "string"},
                "args": {"type": "string", "description": "The JSON arguments, as text."},
                "queue": {"type": "string"},
                "priority": int,
                "eta_ms": int,
                "expires_ms": int,
                "max_retries": int,
                "retry_backoff": schema("Backoff"),
                "limits": {
                    "type": "object",
                    "properties": {"time_ms": int, "fuel": int, "memory": int}
                },
                "max_deliveries": int,
                "result_expires_ms": int,
                "created_ms": int
            }
        },
        "Attempt": {
            "type": "object",
            "required": ["attempt", "worker", "received_ms", "finished_ms", "state"],
            "properties": {
                "attempt": int,
                "worker": {"type": "string"},
                "digest": {"type": "string"},
                "received_ms": int,
                "started_ms": int,
                "finished_ms": int,
                "state": schema("State"),
                "output": {"type": "string", "description": "The output JSON, as text."},
                "error": schema("TaskFailure"),
                "duration_ms": {"type": "number"},
                "cpu_ms": {"type": "number"},
                "fuel": int,
                "peak_memory": int,
                "log": {"type": "string"}
            }
        },
        "TaskRecord": {
            "type": "object",
            "required": ["id", "state", "message", "deliveries"],
            "properties": {
                "id": {"type": "string"},
                "state": schema("State"),
                "message": schema("TaskMessage"),
                "deliveries": int,
                "worker": {"type": "string"},
                "progress": schema("Progress"),
                "error": schema("TaskFailure"),
                "attempts": array("Attempt"),
                "finished_ms": int
            }
        },
        "TaskInfo": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "doc": {"type": "string"},
                "params": {"type": "array", "items": {"type": "string"}}
            }
        },
        "Version": {
            "type": "object",
            "required": ["digest", "deployed_ms", "tasks", "size"],
            "properties": {
                "digest": {"type": "string", "description": "sha-256 of the component, hex."},
                "deployed_ms": int,
                "tasks": array("TaskInfo"),
                "size": {"type": "integer", "minimum": 0, "description": "Bytes, uncompressed."}
            }
        },
        "ComponentRecord": {
            "type": "object",
            "required": ["name", "versions"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": schema("Version"), "description": "Newest (current) first."}
            }
        },
        "Rate": {
            "type": "object",
            "required": ["count", "per_ms"],
            "properties": {"count": {"type": "integer", "minimum": 1}, "per_ms": {"type": "integer", "minimum": 1}}
        },
        "Quotas": {
            "type": "object",
            "additionalProperties": false,
            "description": "Absent means unlimited.",
            "properties": {
                "concurrency": int,
                "rate": schema("Rate"),
                "max_time_ms": int,
                "max_fuel": int,
                "max_memory": int,
                "storage": {"type": "integer", "minimum": 0, "description": "Bytes of stored component versions."},
                "max_upload": {"type": "integer", "minimum": 0, "description": "Bytes of one upload, uncompressed."}
            }
        },
        "Tenant": {
            "type": "object",
            "required": ["name", "created_ms"],
            "properties": {"name": {"type": "string"}, "created_ms": int, "quotas": schema("Quotas")}
        },
        "TenantRequest": {
            "type": "object",
            "additionalProperties": false,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,39}$"},
                "quotas": schema("Quotas")
            }
        },
        "TokenRequest": {
            "type": "object",
            "additionalProperties": false,
            "properties": {"tenant": {"type": "string", "description": "Absent: an admin token."}}
        },
        "TokenResponse": {
            "type": "object",
            "required": ["id", "token"],
            "properties": {"id": {"type": "string"}, "token": {"type": "string"}, "tenant": {"type": "string"}}
        },
        "TokenRecord": {
            "type": "object",
            "required": ["id", "created_ms"],
            "properties": {"id": {"type": "string"}, "tenant": {"type": "string"}, "created_ms": int}
        },
        "Usage": {
            "type": "object",
            "required": ["tasks", "attempts", "fuel", "cpu_us", "memory_kib_ms"],
            "properties": {
                "tasks": int, "attempts": int, "fuel": int, "cpu_us": int, "memory_kib_ms": int
            }
        }
    });
    // Apart: one json! of every schema is past the macro's recursion limit.
    schemas["Event"] = event_schema();
    schemas
}

/// The event log's entry (`wtq_client::tenancy::Event`).
fn event_schema() -> Value {
    let int = json!({"type": "integer", "minimum": 0});
    json!({
            "type": "object",
            "required": ["type", "at_ms"],
            "properties": {
                "type": {"type": "string", "description": "task-sent, task-received, task-started, task-progress, task-succeeded, task-failed, task-retried, task-revoked, worker-online, worker-heartbeat, worker-offline"},
                "cursor": {"type": "string"},
                "id": {"type": "string", "description": "The task (task events)."},
                "state": schema("State"),
                "at_ms": int,
                "task": {"type": "string"},
                "worker": {"type": "string"},
                "attempt": int,
                "runtime_ms": {"type": "number"},
                "fuel": int,
                "peak_memory": int,
                "digest": {"type": "string"},
                "error": {"type": "object"},
                "progress": schema("Progress")
            }
    })
}
