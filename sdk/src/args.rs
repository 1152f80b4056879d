//! Decoding a call's JSON arguments into a task's parameters, and encoding its output.
//!
//! Every dispatcher that `#[task]` generates is `Args::parse`, one `Args::take` per parameter,
//! then `output`; the rules live here once: an array is positional, an object is by keyword, a
//! missing parameter is read as `null` (so `Option` parameters are optional). Every mismatch is
//! a `TaskError::InvalidArgs` that names the task and the parameter.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::TaskError;

/// A call's arguments, sorted into one slot per parameter.
#[derive(Debug)]
pub struct Args {
    task: &'static str,
    params: &'static [&'static str],
    values: Vec<Option<Value>>,
}

impl Args {
    /// Parses `json` and assigns each argument to its parameter of task `task`.
    pub fn parse(
        task: &'static str,
        params: &'static [&'static str],
        json: &str,
    ) -> Result<Self, TaskError> {
        let invalid = |message: String| Err(TaskError::InvalidArgs(message));
        let mut values = vec![None; params.len()];
        match serde_json::from_str(json) {
            Ok(Value::Array(items)) => {
                if items.len() > params.len() {
                    let takes = plural(params.len(), "argument", "arguments");
                    let given = plural(items.len(), "was", "were");
                    return invalid(format!(
                        "task `{task}` takes {} {takes} but {} {given} given",
                        params.len(),
                        items.len(),
                    ));
                }
                for (slot, item) in values.iter_mut().zip(items) {
                    *slot = Some(item);
                }
            }
            Ok(Value::Object(map)) => {
                for (key, item) in map {
                    let Some(index) = params.iter().position(|param| *param == key) else {
                        return invalid(format!(
                            "task `{task}` got an unexpected keyword argument `{key}`"
                        ));
                    };
                    values[index] = Some(item);
                }
            }
            Ok(_) => {
                return invalid(
                    "arguments must be a JSON array (positional) or object (keyword)".to_owned(),
                );
            }
            Err(error) => {
                return invalid(format!("task `{task}`: arguments are not JSON: {error}"));
            }
        }
        Ok(Self {
            task,
            params,
            values,
        })
    }

    /// Deserializes the argument of parameter `index` (`null` when it was not given).
    pub fn take<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, TaskError> {
        let (task, param) = (self.task, self.params[index]);
        match self.values[index].take() {
            Some(value) => serde_json::from_value(value).map_err(|error| {
                TaskError::InvalidArgs(format!("task `{task}`: argument `{param}`: {error}"))
            }),
            None => serde_json::from_value(Value::Null).map_err(|_| {
                TaskError::InvalidArgs(format!("task `{task}` is missing argument `{param}`"))
            }),
        }
    }
}

/// Encodes a task's return value as JSON text.
pub fn output<T: Serialize>(value: T) -> Result<String, TaskError> {
    serde_json::to_string(&value)
        .map_err(|error| TaskError::fail(format!("cannot encode the output as JSON: {error}")))
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `json` for a task `add(x: i64, y: Option<i64>)` and renders the outcome.
    fn check(json: &str, expected: &str) {
        let decode = || -> Result<(i64, Option<i64>), TaskError> {
            let mut args = Args::parse("add", &["x", "y"], json)?;
            Ok((args.take(0)?, args.take(1)?))
        };
        let actual = match decode() {
            Ok(values) => format!("{values:?}"),
            Err(TaskError::InvalidArgs(message)) => message,
            Err(other) => panic!("not an InvalidArgs error: {other:?}"),
        };
        assert_eq!(actual, expected, "input: {json}");
    }

    #[test]
    fn decoding() {
        check("[1, 2]", "(1, Some(2))");
        check("[1]", "(1, None)");
        check("[1, null]", "(1, None)");
        check(r#"{"x": 1, "y": 2}"#, "(1, Some(2))");
        check(r#"{"y": 2, "x": 1}"#, "(1, Some(2))");
        check(r#"{"x": 1}"#, "(1, None)");
        check("[1, 2, 3]", "task `add` takes 2 arguments but 3 were given");
        check(
            r#"{"x": 1, "z": 3}"#,
            "task `add` got an unexpected keyword argument `z`",
        );
        check("[]", "task `add` is missing argument `x`");
        check(r#"{"y": 2}"#, "task `add` is missing argument `x`");
        check(
            r#"["a"]"#,
            r#"task `add`: argument `x`: invalid type: string "a", expected i64"#,
        );
        check(
            "[null]",
            "task `add`: argument `x`: invalid type: null, expected i64",
        );
        check(
            r#"[1, "b"]"#,
            r#"task `add`: argument `y`: invalid type: string "b", expected i64"#,
        );
        check(
            "[1.5]",
            "task `add`: argument `x`: invalid type: floating point `1.5`, expected i64",
        );
        check(
            "1",
            "arguments must be a JSON array (positional) or object (keyword)",
        );
        check(
            r#""x""#,
            "arguments must be a JSON array (positional) or object (keyword)",
        );
        check(
            "null",
            "arguments must be a JSON array (positional) or object (keyword)",
        );
        check(
            "[1",
            "task `add`: arguments are not JSON: EOF while parsing a list at line 1 column 2",
        );
    }

    #[test]
    fn arity_message_grammar() {
        let message = |params: &'static [&'static str], json| match Args::parse("t", params, json) {
            Err(TaskError::InvalidArgs(message)) => message,
            other => panic!("expected InvalidArgs, got {other:?}"),
        };
        assert_eq!(
            message(&[], "[1]"),
            "task `t` takes 0 arguments but 1 was given"
        );
        assert_eq!(
            message(&["a"], "[1, 2]"),
            "task `t` takes 1 argument but 2 were given"
        );
    }

    #[test]
    fn output_encoding() {
        assert_eq!(output(()), Ok("null".to_owned()));
        assert_eq!(output(vec![1, 2]), Ok("[1,2]".to_owned()));
        let map: std::collections::BTreeMap<(i32, i32), i32> = [((1, 2), 3)].into();
        assert!(matches!(output(map), Err(TaskError::Fail(_))));
    }
}
