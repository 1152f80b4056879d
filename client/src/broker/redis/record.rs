//! Decoding what the scripts store: a task hash back into a [`TaskRecord`], and the values a
//! script returns into Rust types. Pure functions, tested without Redis.

use redis::Value;

use super::keys::field;
use crate::broker::Error;
use crate::message::{Attempt, State, TaskMessage, TaskRecord};

/// Rebuilds a task's record from its hash (`HGETALL`); `None` when the hash is empty (no such
/// task, or its record expired).
pub(super) fn decode(
    id: &str,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<Option<TaskRecord>, Error> {
    if fields.is_empty() {
        return Ok(None);
    }
    let corrupt = |what: &str, why: &dyn std::fmt::Display| {
        Error::Corrupt(format!("task {id}: {what}: {why}"))
    };
    let mut state = None;
    let mut message = None;
    let mut deliveries = 0;
    let mut worker = None;
    let mut progress = None;
    let mut error = None;
    let mut finished_ms = None;
    let mut attempts: Vec<(u32, Attempt)> = Vec::new();
    for (name, value) in fields {
        let name = String::from_utf8_lossy(&name);
        match name.as_ref() {
            field::STATE => {
                let text = String::from_utf8_lossy(&value);
                state = Some(State::parse(&text).ok_or_else(|| corrupt("state", &text))?);
            }
            // A body that does not decode (a message written by hand, by a broken producer)
            // still has a record, so that it can be seen where it was dead-lettered.
            field::MESSAGE => {
                message = Some(
                    serde_json::from_slice::<TaskMessage>(&value)
                        .unwrap_or_else(|_| undecodable(id, &value)),
                );
            }
            field::DELIVERIES => deliveries = number(&value).map_err(|why| corrupt(&name, &why))?,
            field::WORKER => worker = Some(String::from_utf8_lossy(&value).into_owned()),
            // Empty means none: see `field::PROGRESS`.
            field::PROGRESS | field::ERROR if value.is_empty() => {}
            field::PROGRESS => {
                progress =
                    Some(serde_json::from_slice(&value).map_err(|why| corrupt(&name, &why))?);
            }
            field::ERROR => {
                error = Some(serde_json::from_slice(&value).map_err(|why| corrupt(&name, &why))?);
            }
            field::FINISHED => {
                finished_ms = Some(number(&value).map_err(|why| corrupt(&name, &why))?);
            }
            other => {
                if let Some(number) = other.strip_prefix(field::ATTEMPT_PREFIX) {
                    let number: u32 = number.parse().map_err(|why| corrupt(other, &why))?;
                    let attempt =
                        serde_json::from_slice(&value).map_err(|why| corrupt(other, &why))?;
                    attempts.push((number, attempt));
                }
            }
        }
    }
    let state = state.ok_or_else(|| corrupt("state", &"missing"))?;
    let message = message.ok_or_else(|| corrupt("message", &"missing"))?;
    attempts.sort_by_key(|(number, _)| *number);
    Ok(Some(TaskRecord {
        id: id.to_string(),
        state,
        message,
        deliveries,
        worker,
        progress,
        error,
        attempts: attempts.into_iter().map(|(_, attempt)| attempt).collect(),
        finished_ms,
    }))
}

/// A decimal number stored by a script.
pub(super) fn number<T: std::str::FromStr>(bytes: &[u8]) -> Result<T, String> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("`{}` is not a number", String::from_utf8_lossy(bytes)))
}

/// A script's reply value as bytes (bulk or simple strings; integers in decimal).
pub(super) fn bytes(value: Value) -> Result<Vec<u8>, Error> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        Value::Int(number) => Ok(number.to_string().into_bytes()),
        other => Err(unexpected(&other)),
    }
}

/// A script's reply value as text.
pub(super) fn text(value: Value) -> Result<String, Error> {
    String::from_utf8(bytes(value)?).map_err(|why| Error::Redis(format!("script reply: {why}")))
}

/// A script's reply value as an integer (an integer reply, or a decimal string).
pub(super) fn integer<T: std::str::FromStr>(value: Value) -> Result<T, Error> {
    let bytes = bytes(value)?;
    number(&bytes).map_err(|why| Error::Redis(format!("script reply: {why}")))
}

/// A script's reply value as an array.
pub(super) fn array(value: Value) -> Result<Vec<Value>, Error> {
    match value {
        Value::Array(items) => Ok(items),
        // An empty Lua table is an empty array.
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(value: &Value) -> Error {
    Error::Redis(format!("unexpected script reply {value:?}"))
}

/// Longest part of an undecodable body kept in its record.
const UNDECODABLE_SHOWN: usize = 1 << 10;

/// A stand-in for a message body that does not decode: no component or task, and the start of
/// the raw body as its arguments, so `wtq status` and `wtq dead list` can show it.
fn undecodable(id: &str, body: &[u8]) -> TaskMessage {
    let shown = &body[..body.len().min(UNDECODABLE_SHOWN)];
    TaskMessage {
        id: id.to_string(),
        component: String::new(),
        digest: None,
        task: String::new(),
        args: String::from_utf8_lossy(shown).into_owned(),
        queue: String::new(),
        priority: 0,
        eta_ms: None,
        expires_ms: None,
        max_retries: None,
        retry_backoff: None,
        limits: Default::default(),
        max_deliveries: crate::message::DEFAULT_MAX_DELIVERIES,
        result_expires_ms: crate::message::DEFAULT_RESULT_EXPIRES_MS,
        created_ms: 0,
        batch: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{LimitOverrides, Progress, TaskFailure};

    fn message() -> TaskMessage {
        TaskMessage {
            id: "a".into(),
            component: "math".into(),
            digest: None,
            task: "add".into(),
            args: "[1, 2]".into(),
            queue: "default".into(),
            priority: 0,
            eta_ms: None,
            expires_ms: None,
            max_retries: None,
            retry_backoff: None,
            limits: LimitOverrides::default(),
            max_deliveries: 3,
            result_expires_ms: 1000,
            created_ms: 5,
            batch: false,
        }
    }

    fn attempt(number: u32) -> Attempt {
        Attempt {
            attempt: number,
            worker: "w".into(),
            digest: None,
            received_ms: 1,
            started_ms: None,
            finished_ms: 2,
            state: State::Retry,
            output: None,
            error: None,
            duration_ms: None,
            fuel: None,
            cpu_ms: None,
            peak_memory: None,
            log: String::new(),
        }
    }

    fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).expect("serialisable")
    }

    fn hash(fields: &[(&str, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .iter()
            .map(|(name, value)| (name.as_bytes().to_vec(), value.clone()))
            .collect()
    }

    #[test]
    fn a_full_hash_decodes_with_attempts_in_order() {
        let failure = TaskFailure {
            kind: "failed".into(),
            message: "boom".into(),
        };
        let progress = Progress {
            done: 1,
            total: 2,
            note: String::new(),
        };
        let fields = hash(&[
            ("msg", json(&message())),
            ("state", b"RETRY".to_vec()),
            ("queue", b"default".to_vec()),
            ("score", b"158329674399745".to_vec()),
            ("deliveries", b"2".to_vec()),
            ("attempt", b"11".to_vec()),
            ("worker", b"w".to_vec()),
            ("progress", json(&progress)),
            ("error", json(&failure)),
            ("a:10", json(&attempt(10))),
            ("a:2", json(&attempt(2))),
            ("a:1", json(&attempt(1))),
        ]);
        let record = decode("a", fields).expect("decodes").expect("exists");
        assert_eq!(record.state, State::Retry);
        assert_eq!(record.message, message());
        assert_eq!(record.deliveries, 2);
        assert_eq!(record.worker.as_deref(), Some("w"));
        assert_eq!(record.progress, Some(progress));
        assert_eq!(record.error, Some(failure));
        assert_eq!(record.finished_ms, None);
        let numbers: Vec<u32> = record.attempts.iter().map(|a| a.attempt).collect();
        assert_eq!(numbers, [1, 2, 10], "numeric, not lexicographic, order");

        let cleared = hash(&[
            ("msg", json(&message())),
            ("state", b"PENDING".to_vec()),
            ("token", Vec::new()),
            ("error", Vec::new()),
            ("progress", Vec::new()),
        ]);
        let record = decode("a", cleared).expect("decodes").expect("exists");
        assert_eq!(
            (record.error, record.progress),
            (None, None),
            "empty means none"
        );
    }

    #[test]
    fn an_undecodable_body_still_has_a_record() {
        let record = decode(
            "junk",
            hash(&[
                ("msg", b"{not json".to_vec()),
                ("state", b"FAILURE".to_vec()),
            ]),
        )
        .expect("decodes")
        .expect("a record");
        assert_eq!(
            (record.message.task.as_str(), record.message.args.as_str()),
            ("", "{not json")
        );
    }

    #[test]
    fn an_empty_hash_is_no_record_and_garbage_is_corrupt() {
        assert_eq!(decode("a", Vec::new()).expect("decodes"), None);
        let check = |fields: &[(&str, Vec<u8>)], what: &str| match decode("a", hash(fields)) {
            Err(Error::Corrupt(why)) => assert!(why.contains(what), "{why}"),
            other => panic!("expected Corrupt about {what}, got {other:?}"),
        };
        let good = json(&message());
        check(
            &[("msg", good.clone()), ("state", b"DONE".to_vec())],
            "state",
        );
        check(&[("state", b"PENDING".to_vec())], "message");
        check(&[("msg", good.clone())], "state");
        check(
            &[
                ("msg", good),
                ("state", b"PENDING".to_vec()),
                ("deliveries", b"x".to_vec()),
            ],
            "deliveries",
        );
    }

    #[test]
    fn reply_values() {
        assert_eq!(integer::<u64>(Value::Int(7)).ok(), Some(7));
        assert_eq!(
            integer::<u64>(Value::BulkString(b"8".to_vec())).ok(),
            Some(8)
        );
        assert!(integer::<u64>(Value::BulkString(b"x".to_vec())).is_err());
        assert_eq!(
            text(Value::BulkString(b"id".to_vec())).ok().as_deref(),
            Some("id")
        );
        assert_eq!(array(Value::Nil).ok(), Some(Vec::new()));
        assert!(array(Value::Int(1)).is_err());
    }
}
