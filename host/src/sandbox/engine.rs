//! Builds the wasmtime engines: one per metering mode, each with the pooling allocator (probed,
//! falling back to on-demand) and an epoch ticker on a dedicated OS thread.
//!
//! The configuration and its measured costs are in `shared/research/sandbox.md` §2 and §7.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of time limits, time slicing and terminate.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Largest number of core instances one component may contain: Rust guests have a handful,
/// componentize-py guests 38, so 64 leaves room for both.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Most tables one component may contain. Even a small Rust component has several: the
/// adapter shims that wire its imports each carry one. Table slots cost only address space.
const MAX_TABLES_PER_COMPONENT: u32 = 8;
/// Largest table a component may declare or grow to, in elements.
const MAX_TABLE_ELEMENTS: usize = 20_000;

/// What an engine meters. Compiled artifacts are specific to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metering {
    /// Epoch interruption only: time limits and slicing, no fuel accounting.
    Epoch,
    /// Epoch interruption plus fuel: deterministic budgets, ~80% slower on call-heavy code.
    Fuel,
    /// Neither (benchmarks only: the baseline the other two are compared with).
    None,
}

impl Metering {
    /// A dense index, for per-mode tables.
    pub(crate) fn index(self) -> usize {
        match self {
            Metering::Epoch => 0,
            Metering::Fuel => 1,
            Metering::None => 2,
        }
    }

    /// A short name used in cache keys and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Metering::Epoch => "epoch",
            Metering::Fuel => "fuel",
            Metering::None => "none",
        }
    }
}

/// Which instance allocator an engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    Pooling,
    OnDemand,
}

/// Settings that shape an engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    pub metering: Metering,
    /// Instances that may be alive at once (running plus kept warm): the pool size.
    pub instance_slots: u32,
    /// Wasm stack size in bytes; deeper recursion fails as `stack_overflow`.
    pub max_wasm_stack: usize,
}

/// Creates an engine, trying the pooling allocator first. The pool reserves address space for
/// every slot (4 GiB each on x86_64); where that fails (39-bit address spaces, `ulimit -v`),
/// on-demand allocation still works, only slower.
pub fn build(settings: EngineSettings) -> Result<(Engine, Allocator), wasmtime::Error> {
    let pooled = Engine::new(&config(settings, Some(pool(settings.instance_slots))));
    match pooled {
        Ok(engine) => {
            start_epoch_ticker(&engine, settings.metering);
            Ok((engine, Allocator::Pooling))
        }
        Err(error) => {
            tracing::warn!(
                %error,
                slots = settings.instance_slots,
                "pooling allocator unavailable; falling back to on-demand instance allocation"
            );
            let engine = Engine::new(&config(settings, None))?;
            start_epoch_ticker(&engine, settings.metering);
            Ok((engine, Allocator::OnDemand))
        }
    }
}

fn config(settings: EngineSettings, pool: Option<PoolingAllocationConfig>) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        // On by default since wasmtime 43; it costs 7-10 µs per call and we use no
        // component-model async.
        .concurrency_support(false)
        .epoch_interruption(settings.metering != Metering::None)
        .consume_fuel(settings.metering == Metering::Fuel)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(settings.max_wasm_stack)
        // The async stack hosts the wasm stack plus host frames; it must be larger.
        .async_stack_size(settings.max_wasm_stack + (1 << 20));
    if let Some(pool) = pool {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

fn pool(slots: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        // Enough for every slot to hold a component with the most core instances allowed
        // (a componentize-py guest has 38): core-instance slots are only address space.
        .total_core_instances(slots.saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(MAX_TABLES_PER_COMPONENT))
        .total_stacks(slots)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(8)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        .table_elements(MAX_TABLE_ELEMENTS)
        // Small keep-resident sizes and batched decommits. The first 128 KiB of each memory
        // slot stays resident and is reset with a memset: a guest built with a small shadow
        // stack (guest-examples/.cargo/config.toml) does all of a short call's work in there,
        // so a fresh instance + `math.add` costs ~9.5 µs instead of ~17 µs of page faults.
        // Much more makes every drop slow: 1 MiB resident cost 18 µs per drop.
        .linear_memory_keep_resident(128 << 10)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10)
        .decommit_batch_size(16);
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK`] from an OS thread (never an executor
/// task: when every executor thread runs wasm, a ticker task would never run). The thread
/// ends when the engine is dropped.
fn start_epoch_ticker(engine: &Engine, metering: Metering) {
    if metering == Metering::None {
        return;
    }
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name(format!("wtq-epoch-{}", metering.as_str()))
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(error) = spawned {
        // Without a ticker time limits cannot fire; calls still end at the tokio timeout.
        tracing::error!(%error, "could not start the epoch ticker thread");
    }
}
