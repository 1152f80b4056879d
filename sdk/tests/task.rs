//! The `#[task]` and `export!` expansions, driven through the runtime the component export uses.

use serde::{Deserialize, Serialize};
use wtq_sdk::__private::{self, TaskDef};
use wtq_sdk::{TaskError, task};

/// Adds two numbers.
#[task]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// Divides x by y.
///
/// Fails on a zero divisor.
#[task]
fn div(x: f64, y: f64) -> Result<f64, TaskError> {
    if y == 0.0 {
        return Err(TaskError::fail("division by zero"));
    }
    Ok(x / y)
}

#[task(name = "hello")]
fn greet(name: String, greeting: Option<String>) -> String {
    format!("{}, {name}!", greeting.as_deref().unwrap_or("Hello"))
}

#[task]
fn nothing() {}

#[task]
fn parse(text: String) -> std::result::Result<u8, String> {
    text.parse().map_err(|e| format!("not a u8: {e}"))
}

#[task]
fn r#type(mut r#in: Vec<u32>) -> Vec<u32> {
    r#in.sort();
    r#in
}

#[derive(Debug, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
}

// Names the expansion itself uses inside its hidden constant.
#[task]
fn call(json: String) -> String {
    json
}

#[task]
fn json(call: u8) -> u8 {
    call
}

mod geometry {
    use super::Point;

    /// Swaps the coordinates.
    #[wtq_sdk::task]
    pub(crate) fn swap(p: Point) -> Point {
        Point { x: p.y, y: p.x }
    }
}

const TASKS: &[TaskDef] = &[
    __wtq_task_add,
    __wtq_task_div,
    __wtq_task_greet,
    __wtq_task_nothing,
    __wtq_task_parse,
    __wtq_task_type,
    geometry::__wtq_task_swap,
    __wtq_task_call,
    __wtq_task_json,
];

// The component export over the same tasks must compile (its entry points are wasm-only).
wtq_sdk::export!(
    add,
    div,
    greet,
    nothing,
    parse,
    r#type,
    geometry::swap,
    call,
    json
);

/// Calls `name` with `args` and renders the outcome as `ok <json>` or the error's Debug.
fn check(name: &str, args: &str, expected: &str) {
    let actual = match __private::call(TASKS, name, args) {
        Ok(json) => format!("ok {json}"),
        Err(error) => format!("{error:?}"),
    };
    assert_eq!(actual, expected, "{name}({args})");
}

#[test]
fn calls() {
    check("add", "[2, 3]", "ok 5");
    check("add", r#"{"y": 3, "x": 2}"#, "ok 5");
    check(
        "add",
        "[2]",
        r#"InvalidArgs("task `add` is missing argument `y`")"#,
    );
    check("div", "[1, 4]", "ok 0.25");
    check("div", "[1, 0]", r#"Fail("division by zero")"#);
    check("hello", r#"["Ada"]"#, r#"ok "Hello, Ada!""#);
    check(
        "hello",
        r#"{"name": "Ada", "greeting": "Hi"}"#,
        r#"ok "Hi, Ada!""#,
    );
    check("nothing", "[]", "ok null");
    check("nothing", "{}", "ok null");
    check(
        "nothing",
        "[1]",
        r#"InvalidArgs("task `nothing` takes 0 arguments but 1 was given")"#,
    );
    check("parse", r#"["7"]"#, "ok 7");
    check(
        "parse",
        r#"["x"]"#,
        r#"Fail("not a u8: invalid digit found in string")"#,
    );
    check("type", r#"{"in": [3, 1, 2]}"#, "ok [1,2,3]");
    check("swap", r#"[{"x": 1, "y": 2}]"#, r#"ok {"x":2,"y":1}"#);
    check(
        "swap",
        r#"[{"x": 1}]"#,
        r#"InvalidArgs("task `swap`: argument `p`: missing field `y`")"#,
    );
    check("call", r#"["x"]"#, r#"ok "x""#);
    check("json", r#"{"call": 7}"#, "ok 7");
    check(
        "sub",
        "[]",
        r#"InvalidArgs("unknown task `sub`; this component offers: add, div, hello, nothing, parse, type, swap, call, json")"#,
    );
}

#[test]
fn listing() {
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&__private::list(TASKS)).expect("the list is JSON");
    let text = |value: &serde_json::Value| value.as_str().expect("a string").to_string();
    let tasks: Vec<(String, String, Vec<String>)> = listed
        .iter()
        .map(|info| {
            let params = info["params"]
                .as_array()
                .expect("params")
                .iter()
                .map(text)
                .collect();
            (text(&info["name"]), text(&info["doc"]), params)
        })
        .collect();
    let expected = [
        ("add", "Adds two numbers.", &["x", "y"][..]),
        (
            "div",
            "Divides x by y.\n\nFails on a zero divisor.",
            &["x", "y"],
        ),
        ("hello", "", &["name", "greeting"]),
        ("nothing", "", &[]),
        ("parse", "", &["text"]),
        ("type", "", &["in"]),
        ("swap", "Swaps the coordinates.", &["p"]),
        ("call", "", &["json"]),
        ("json", "", &["call"]),
    ];
    assert_eq!(tasks.len(), expected.len());
    for ((name, doc, params), (want_name, want_doc, want_params)) in tasks.iter().zip(expected) {
        assert_eq!((name.as_str(), doc.as_str()), (want_name, want_doc));
        assert_eq!(params, want_params);
    }
}

#[test]
fn tasks_stay_plain_functions() {
    assert_eq!(add(2, 3), 5);
    assert_eq!(div(1.0, 0.0), Err(TaskError::fail("division by zero")));
    assert_eq!(greet("Ada".into(), None), "Hello, Ada!");
}

#[test]
fn errors() {
    use std::time::Duration;
    use wtq_sdk::__private::WitTaskError;

    assert_eq!(TaskError::from("boom"), TaskError::Fail("boom".into()));
    assert_eq!(TaskError::from(String::from("boom")).to_string(), "boom");
    assert_eq!(
        TaskError::retry("busy").to_string(),
        "retry requested: busy"
    );
    let later = TaskError::retry_in("busy", Duration::from_millis(1500));
    assert_eq!(later.to_string(), "retry requested in 1500 ms: busy");
    match WitTaskError::from(later) {
        WitTaskError::Retry(request) => {
            assert_eq!(
                (request.message.as_str(), request.countdown_ms),
                ("busy", Some(1500))
            );
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    assert!(
        matches!(WitTaskError::from(TaskError::retry("x")), WitTaskError::Retry(r) if r.countdown_ms.is_none())
    );
    assert!(matches!(
        WitTaskError::from(TaskError::invalid_args("x")),
        WitTaskError::InvalidArgs(_)
    ));
}
