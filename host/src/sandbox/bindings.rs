//! The one `bindgen!` of the host, against the single top-level `wit/`. Everything else imports
//! the generated types from here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task",
    // Host imports are cheap and synchronous; the export is async so that calls yield to the
    // executor at every epoch tick and can be cancelled by a timeout.
    exports: { default: async },
});

pub use self::exports::wtq::task::tasks::TaskError;
pub use self::wtq::task::host::{LogLevel, TaskContext};
