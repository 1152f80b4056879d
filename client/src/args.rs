//! Turns a caller's positional and keyword arguments into the one JSON text a task receives.
//!
//! A task receives a JSON array (positional) or object (keyword). When a caller gives both, as
//! Celery's `apply_async(args, kwargs)` allows, the positional values are named after the
//! task's parameters and merged into one object. Pure functions, no I/O.

use serde_json::{Map, Value};

use crate::registry::TaskInfo;

/// Arguments that cannot be given to a task; the message names the task and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(String);

impl ArgsError {
    pub(crate) fn new(message: String) -> ArgsError {
        ArgsError(message)
    }

    /// The same error with `before` in front of its message and `after` behind it.
    pub(crate) fn around(self, before: &str, after: &str) -> ArgsError {
        ArgsError(format!("{before}{}{after}", self.0))
    }
}

/// Encodes `args` (a JSON array, if any) and `kwargs` (a JSON object, if any) for `task`.
pub fn encode(
    task: &TaskInfo,
    args: Option<Value>,
    kwargs: Option<Value>,
) -> Result<String, ArgsError> {
    let name = &task.name;
    let positional = match args {
        None => None,
        Some(Value::Array(values)) => Some(values),
        Some(other) => {
            return Err(ArgsError(format!(
                "arguments to `{name}` must be a JSON array of positional values, got {}; pass keyword arguments with --kwargs",
                kind(&other)
            )));
        }
    };
    let keywords = match kwargs {
        None => None,
        Some(Value::Object(map)) => Some(map),
        Some(other) => {
            return Err(ArgsError(format!(
                "keyword arguments to `{name}` must be a JSON object, got {}",
                kind(&other)
            )));
        }
    };
    if let Some(values) = &positional
        && values.len() > task.params.len()
    {
        return Err(ArgsError(format!(
            "task `{name}` takes {} arguments but {} were given",
            task.params.len(),
            values.len()
        )));
    }
    if let Some(map) = &keywords
        && let Some(unknown) = map.keys().find(|key| !task.params.contains(key))
    {
        return Err(ArgsError(format!(
            "task `{name}` got an unexpected keyword argument `{unknown}` (its parameters: {})",
            task.params.join(", ")
        )));
    }
    let value = match (positional, keywords) {
        (None, None) => Value::Array(Vec::new()),
        (Some(values), None) => Value::Array(values),
        (None, Some(map)) => Value::Object(map),
        (Some(values), Some(mut map)) => {
            let mut merged = Map::new();
            for (param, value) in task.params.iter().zip(values) {
                if map.contains_key(param) {
                    return Err(ArgsError(format!(
                        "task `{name}` got multiple values for argument `{param}`"
                    )));
                }
                merged.insert(param.clone(), value);
            }
            merged.append(&mut map);
            Value::Object(merged)
        }
    };
    Ok(value.to_string())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn add() -> TaskInfo {
        TaskInfo {
            name: "add".into(),
            doc: String::new(),
            params: vec!["x".into(), "y".into()],
        }
    }

    fn check(args: Option<Value>, kwargs: Option<Value>, expected: Result<&str, &str>) {
        let got = encode(&add(), args, kwargs);
        match expected {
            Ok(json) => assert_eq!(got.as_deref(), Ok(json)),
            Err(fragment) => {
                let message = got.expect_err("should be refused").to_string();
                assert!(message.contains(fragment), "`{message}` lacks `{fragment}`");
            }
        }
    }

    #[test]
    fn encodings() {
        check(None, None, Ok("[]"));
        check(
            Some(json!([1, 2, 3])),
            None,
            Err("takes 2 arguments but 3 were given"),
        );
        check(
            None,
            Some(json!({"x": 1, "z": 2})),
            Err("unexpected keyword argument `z`"),
        );

        check(Some(json!([2, 3])), None, Ok("[2,3]"));
        check(None, Some(json!({"y": 3, "x": 2})), Ok(r#"{"x":2,"y":3}"#));
        check(
            Some(json!([2])),
            Some(json!({"y": 3})),
            Ok(r#"{"x":2,"y":3}"#),
        );
        check(
            Some(json!([2])),
            Some(json!({"x": 3})),
            Err("multiple values for argument `x`"),
        );
        check(
            Some(json!([1, 2, 3])),
            Some(json!({})),
            Err("takes 2 arguments but 3"),
        );
        check(
            Some(json!(5)),
            None,
            Err("must be a JSON array of positional values, got a number"),
        );
        check(
            None,
            Some(json!([1])),
            Err("must be a JSON object, got an array"),
        );
    }
}
