//! The one `wasmtime::Engine` of the process and its epoch ticker.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::limits::EPOCH_TICK;

/// How instance memories, tables and stacks are allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocator {
    /// Slots reserved once at start-up and reused (copy-on-write images reset cheaply).
    Pooling,
    /// mmap per instance.
    OnDemand,
}

impl std::str::FromStr for Allocator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pooling" => Ok(Self::Pooling),
            "on-demand" => Ok(Self::OnDemand),
            _ => Err(format!(
                "unknown allocator `{s}`: use `pooling` or `on-demand`"
            )),
        }
    }
}

impl std::fmt::Display for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pooling => "pooling",
            Self::OnDemand => "on-demand",
        })
    }
}

fn config(allocator: Allocator, max_instances: u32) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    config.parallel_compilation(true);
    if allocator == Allocator::Pooling {
        let n = max_instances;
        let mut pool = PoolingAllocationConfig::default();
        // A Rust wasip2 component is a handful of core instances (the program plus the
        // adapter shims) with one memory and a few tables.
        pool.total_component_instances(n)
            .total_core_instances(n * 4)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .total_stacks(n)
            .table_keep_resident(64 << 10);
        // Where the kernel can say which pages an instance wrote (Linux's PAGEMAP_SCAN,
        // 6.7+), a memory slot used again resets just those in place, up to 4 MiB,
        // instead of dropping them to fault them in again: a Python step (an 18 MB
        // component whose interpreter dirties ~1 MiB per call) instantiates ~12% faster,
        // a trivial Rust step ~40%. At most 4 MiB stays resident per used slot. Elsewhere
        // the reset would copy the lowest 4 MiB by hand at every reuse, which costs more
        // than the faults it saves (README, "Benchmarks"): memory is dropped as before.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.linear_memory_keep_resident(4 << 20)
                .pagemap_scan(wasmtime::Enabled::Auto);
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Create the engine with the wanted allocator. Pooling reserves a large amount of
/// virtual address space up front; where that fails (a `ulimit -v`, a 32-bit address
/// space) this falls back to on-demand and says so in the returned allocator.
pub fn new_engine(
    allocator: Allocator,
    max_instances: u32,
) -> wasmtime::Result<(Engine, Allocator)> {
    let engine = match Engine::new(&config(allocator, max_instances)) {
        Ok(engine) => (engine, allocator),
        Err(_) if allocator == Allocator::Pooling => (
            Engine::new(&config(Allocator::OnDemand, max_instances))?,
            Allocator::OnDemand,
        ),
        Err(e) => return Err(e),
    };
    start_epoch_ticker(&engine.0, EPOCH_TICK);
    Ok(engine)
}

/// Advance the engine's epoch every `tick` until the engine is dropped.
fn start_epoch_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("hoist-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(tick);
            }
        })
        .expect("spawn the epoch ticker thread");
}
