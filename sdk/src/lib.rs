//! Write wtq tasks in Rust: plain functions compiled to a WebAssembly component.
//!
//! A task is an ordinary function whose parameters deserialize from JSON and whose return value
//! serializes to JSON. Mark each one with [`#[task]`](task) and export them all with one
//! [`export!`] line; the crate (`crate-type = ["cdylib"]`) then builds for `wasm32-wasip2` into a
//! component implementing the `wtq:task/task` world of `wit/wtq.wit`.
//!
//! ```
//! use wtq_sdk::{task, TaskError};
//!
//! /// Adds two numbers.
//! #[task]
//! fn add(x: i64, y: i64) -> i64 {
//!     x + y
//! }
//!
//! /// Divides x by y.
//! #[task]
//! fn div(x: f64, y: f64) -> Result<f64, TaskError> {
//!     if y == 0.0 {
//!         return Err(TaskError::fail("division by zero"));
//!     }
//!     wtq_sdk::log::debug(format!("dividing {x} by {y}"));
//!     Ok(x / y)
//! }
//!
//! /// Greets someone; `greeting` may be left out.
//! #[task(name = "hello")]
//! fn greet(name: String, greeting: Option<String>) -> String {
//!     format!("{}, {name}!", greeting.as_deref().unwrap_or("Hello"))
//! }
//!
//! wtq_sdk::export!(add, div, greet);
//!
//! // Tasks stay plain functions, so they unit-test as usual.
//! assert_eq!(add(2, 3), 5);
//! assert_eq!(div(1.0, 0.0), Err(TaskError::fail("division by zero")));
//! ```
//!
//! The host calls a task with JSON arguments: an array is positional (`[2, 3]`), an object is by
//! keyword (`{"x": 2, "y": 3}`). A missing argument is read as `null`, so `Option` parameters are
//! optional. Arguments that do not fit are reported as [`TaskError::InvalidArgs`] naming the
//! parameter, before the function runs.
//!
//! # Layout
//! - [`task`] and [`export!`]: the macros (crate `wtq-sdk-macros`).
//! - [`TaskError`]: how a task fails or asks to be retried.
//! - [`log`], [`progress`], [`context`]: what the host offers a running task.
//! - `args`: the argument decoding every generated dispatcher shares.

// Lets the wit-bindgen output and the macros name this crate `wtq_sdk` from inside it too.
extern crate self as wtq_sdk;

mod args;
mod error;
mod host;

pub use error::TaskError;
pub use host::{Context, context, log, progress};

/// Makes a function a task, keeping it callable as ordinary Rust.
///
/// Parameters may be any owned `T: DeserializeOwned` and are named plainly (`x: T`); the return
/// type any `T: Serialize` (`()` is `null`), or `Result<T, E>` with `E: Into<TaskError>` (a
/// `String` or `&str` error is a [`TaskError::Fail`]). The task is called by the function's name
/// unless `#[task(name = "other")]` says otherwise, and the `///` doc becomes its listed doc.
/// `self`, generic, `async` and `unsafe` functions and pattern parameters are rejected.
///
/// ```compile_fail
/// #[wtq_sdk::task]
/// fn shout(text: &str) -> String { text.to_uppercase() } // must be `String`
/// ```
///
/// ```compile_fail
/// #[wtq_sdk::task]
/// fn largest<T: Ord>(items: Vec<T>) -> Option<T> { items.into_iter().max() } // generic
/// ```
#[doc(inline)]
pub use wtq_sdk_macros::task;

/// Exports `#[task]` functions (by name or path, e.g. `export!(add, geometry::area)`) as the
/// component's tasks, listed in this order.
///
/// Invoke it exactly once per component crate: it defines the component's entry points. A call
/// naming no exported task fails with [`TaskError::InvalidArgs`] listing the ones offered; two
/// tasks with the same name fail the build.
///
/// ```compile_fail
/// #[wtq_sdk::task]
/// fn one() {}
/// #[wtq_sdk::task(name = "one")]
/// fn two() {}
/// wtq_sdk::export!(one, two); // two tasks called `one`
/// ```
#[doc(inline)]
pub use wtq_sdk_macros::export;

/// What the macros expand to; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::args::{Args, output};
    pub use wit_bindgen;

    use crate::TaskError;
    use bindings::exports::wtq::task::tasks;

    /// The bindings of `wit/wtq.wit`, generated once here and used through the macros.
    // The generated glue is the only unsafe code in the SDK.
    #[allow(unsafe_code)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "task",
            pub_export_macro: true,
            default_bindings_module: "wtq_sdk::__private::bindings",
            runtime_path: "wtq_sdk::__private::wit_bindgen::rt",
        });
    }

    pub use bindings::export;
    pub use tasks::{Guest, TaskError as WitTaskError};

    /// One `#[task]` function as `export!` sees it.
    #[derive(Debug, Clone, Copy)]
    pub struct TaskDef {
        /// The name used to call it.
        pub name: &'static str,
        /// Its `///` doc comment, trimmed.
        pub doc: &'static str,
        /// Its parameter names in positional order.
        pub params: &'static [&'static str],
        /// Decodes the JSON arguments, runs the function and encodes its output.
        pub call: fn(&str) -> Result<String, TaskError>,
    }

    /// `tasks.list`: the exported tasks in `export!` order, as the JSON array the WIT
    /// describes.
    pub fn list(tasks: &[TaskDef]) -> String {
        let entries: Vec<serde_json::Value> = tasks
            .iter()
            .map(|task| {
                serde_json::json!({ "name": task.name, "doc": task.doc, "params": task.params })
            })
            .collect();
        serde_json::Value::Array(entries).to_string()
    }

    /// `tasks.call`: runs task `name` with JSON `args`.
    pub fn call(tasks: &[TaskDef], name: &str, args: &str) -> Result<String, TaskError> {
        match tasks.iter().find(|task| task.name == name) {
            Some(task) => (task.call)(args),
            None => {
                let offered: Vec<&str> = tasks.iter().map(|task| task.name).collect();
                Err(TaskError::invalid_args(format!(
                    "unknown task `{name}`; this component offers: {}",
                    offered.join(", ")
                )))
            }
        }
    }

    /// Fails the build when two exported tasks share a name (`call` could reach only the first).
    pub const fn assert_unique_names(tasks: &[TaskDef]) {
        let mut i = 0;
        while i < tasks.len() {
            let mut j = i + 1;
            while j < tasks.len() {
                if str_eq(tasks[i].name, tasks[j].name) {
                    panic!("wtq_sdk::export!: two tasks have the same name");
                }
                j += 1;
            }
            i += 1;
        }
    }

    // `==` on `str` is not `const` yet.
    const fn str_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    impl From<TaskError> for tasks::TaskError {
        fn from(error: TaskError) -> Self {
            match error {
                TaskError::Fail(message) => Self::Fail(message),
                TaskError::InvalidArgs(message) => Self::InvalidArgs(message),
                TaskError::Retry { message, countdown } => Self::Retry(tasks::RetryRequest {
                    message,
                    // A countdown beyond u64 milliseconds (584 million years) means "never".
                    countdown_ms: countdown
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                }),
            }
        }
    }
}
