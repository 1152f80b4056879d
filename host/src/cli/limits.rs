//! The limit flags shared by every command that runs tasks (`run` today, `worker` next).

use std::path::PathBuf;

use clap::Args;

use crate::sandbox::{self, Limits, SandboxConfig};
use crate::units;

/// Per-call limits and sandbox settings, with the sandbox's defaults.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Wall-clock time limit per call, e.g. 500ms, 2s, 5m (time blocked in host calls counts).
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    pub time_limit: Option<std::time::Duration>,
    /// Fuel budget per call (deterministic CPU budget), or `off` to run unmetered.
    #[arg(long, value_name = "N|off", value_parser = parse_fuel)]
    pub fuel: Option<Fuel>,
    /// Linear memory plus tables per call, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes)]
    pub memory: Option<u64>,
    /// Largest JSON output per call.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes)]
    pub max_output: Option<u64>,
    /// Largest task log per call; the rest is dropped.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes)]
    pub max_log: Option<u64>,
    /// Largest JSON arguments per call.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes)]
    pub max_args: Option<u64>,
    /// Wasm stack size (process-wide); deeper recursion fails as stack_overflow.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes)]
    pub stack: Option<u64>,
    /// Calls one instance may serve before a fresh one is made (1 = fresh per call).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tasks_per_instance: u32,
    /// An instance holding more memory than this after a call is not reused.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes)]
    pub recycle_memory: Option<u64>,
    /// Where compiled components are cached (default: ~/.cache/wtq).
    #[arg(long, value_name = "DIR", env = "WTQ_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile every time instead of using the on-disk cache.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

/// A fuel setting: a budget or unmetered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fuel {
    Budget(u64),
    Off,
}

fn parse_fuel(text: &str) -> Result<Fuel, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "off" | "none" | "unlimited" => Ok(Fuel::Off),
        _ => match units::parse_count(text) {
            Ok(0) => Err(
                "a fuel budget of 0 could not run anything; use a positive number or `off`".into(),
            ),
            Ok(budget) => Ok(Fuel::Budget(budget)),
            Err(error) => Err(format!("{error}, or `off`")),
        },
    }
}

/// The largest memory limit the sandbox can enforce: one pool slot's address space.
const MAX_MEMORY: u64 = 4 << 30;
/// Smallest and largest sensible wasm stacks.
const STACK_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(256 << 20);

impl LimitArgs {
    /// The per-call limits these flags ask for.
    pub fn limits(&self) -> Result<Limits, String> {
        let defaults = Limits::default();
        let memory = self.memory.unwrap_or(defaults.memory);
        if memory == 0 || memory > MAX_MEMORY {
            return Err(format!(
                "--memory {} is out of range: use more than 0 and at most {}",
                units::format_bytes(memory),
                units::format_bytes(MAX_MEMORY)
            ));
        }
        if let Some(time) = self.time_limit
            && (time.is_zero() || time > sandbox::MAX_TIME_LIMIT)
        {
            return Err(format!(
                "--time-limit {} is out of range: use more than 0 and at most {}",
                units::format_duration(time),
                units::format_duration(sandbox::MAX_TIME_LIMIT)
            ));
        }
        Ok(Limits {
            time: self.time_limit.unwrap_or(defaults.time),
            fuel: match self.fuel {
                None => defaults.fuel,
                Some(Fuel::Budget(budget)) => Some(budget),
                Some(Fuel::Off) => None,
            },
            memory,
            output: self.max_output.unwrap_or(defaults.output),
            log: self.max_log.unwrap_or(defaults.log),
            args: self.max_args.unwrap_or(defaults.args),
        })
    }

    /// The sandbox settings these flags ask for, for `concurrency` calls at once.
    pub fn sandbox_config(&self, concurrency: u32) -> Result<SandboxConfig, String> {
        let stack = self.stack.unwrap_or(sandbox::DEFAULT_MAX_WASM_STACK as u64);
        if !STACK_RANGE.contains(&stack) {
            return Err(format!(
                "--stack {} is out of range: use {} to {}",
                units::format_bytes(stack),
                units::format_bytes(*STACK_RANGE.start()),
                units::format_bytes(*STACK_RANGE.end())
            ));
        }
        let defaults = SandboxConfig::default();
        Ok(SandboxConfig {
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir.clone().or(defaults.cache_dir)
            },
            concurrency,
            max_wasm_stack: stack as usize,
            max_tasks_per_instance: self.max_tasks_per_instance,
            recycle_memory: self.recycle_memory.unwrap_or(defaults.recycle_memory),
        })
    }
}
