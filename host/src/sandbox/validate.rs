//! Checks that bytes are a wtq task component before and after compiling them, so that a bad
//! upload gets an error naming what is wrong instead of a wasmtime link error.

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::Error;

/// The interface every task component exports.
pub const TASKS_EXPORT: &str = "wtq:task/tasks@0.1.0";
/// Prefix of the host interface a component may import (any 0.1.x).
const HOST_IMPORT_PREFIX: &str = "wtq:task/host@0.1.";
/// WASI p2 interfaces the host links. They are linked with nothing granted: no preopened
/// directories, no network, no environment, no arguments; stdout and stderr go to the log.
const WASI_IMPORT_PREFIXES: [&str; 6] = [
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
];

/// Rejects bytes that are not a component at all, before spending time compiling them.
pub(crate) fn header(wasm: &[u8]) -> Result<(), Error> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: &[u8] = &[0x01, 0x00, 0x00, 0x00];
    const COMPONENT_LAYER: &[u8] = &[0x01, 0x00];
    if wasm.len() < 8 || &wasm[..4] != MAGIC {
        return Err(Error::NotWasm);
    }
    if &wasm[4..8] == CORE_VERSION {
        return Err(Error::CoreModule);
    }
    if &wasm[6..8] != COMPONENT_LAYER {
        return Err(Error::Invalid(format!(
            "unknown WebAssembly binary version {:02x?}",
            &wasm[4..8]
        )));
    }
    Ok(())
}

/// Checks the compiled component's imports and exports against what the host offers.
pub(crate) fn interface(engine: &Engine, component: &Component) -> Result<(), Error> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        let granted = name.starts_with(HOST_IMPORT_PREFIX)
            || WASI_IMPORT_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix));
        if !granted {
            return Err(Error::DisallowedImport(name.to_string()));
        }
    }
    let Some(export) = ty.get_export(engine, TASKS_EXPORT) else {
        let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
        return Err(Error::MissingExport {
            what: TASKS_EXPORT.to_string(),
            found: exports.join(", "),
        });
    };
    let ComponentItem::ComponentInstance(instance) = export.ty else {
        return Err(Error::MissingExport {
            what: format!("{TASKS_EXPORT} as an interface"),
            found: "an item of another kind".to_string(),
        });
    };
    for function in ["list", "call"] {
        if !matches!(
            instance.get_export(engine, function).map(|item| item.ty),
            Some(ComponentItem::ComponentFunc(_))
        ) {
            return Err(Error::MissingExport {
                what: format!("function `{function}` in {TASKS_EXPORT}"),
                found: instance
                    .exports(engine)
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(())
}
