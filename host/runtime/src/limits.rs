//! Resource limits, each with why it has the value it has.

use std::time::Duration;

/// Linear memory a step may use. The built-in steps stay under 8 MiB; 256 MiB leaves
/// room for a plugin that buffers a large file while still stopping a runaway loop long
/// before it hurts a laptop or a worker running many flows.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;

/// Wall-clock time a step may take, host calls and child processes included. Prefect
/// has no limit; an hour covers a large `docker build` or `pip install` while still
/// ending a hung step on an unattended worker.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// How often the epoch advances. A step that spins without calling the host is checked
/// this often; 10 ms costs little (a counter increment) and bounds overrun.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of one process stream kept for the step (stdout or stderr). Beyond this the
/// rest is still streamed to the log but not returned, so a chatty process cannot
/// exhaust the host's memory.
pub const MAX_CAPTURED_OUTPUT: usize = 16 << 20;

/// Bytes of the guest's own stderr kept to explain a crash (a panic message and its
/// location fit in far less).
pub const GUEST_STDERR_TAIL: usize = 8 << 10;

/// Step instances alive at once in one process; more wait for a slot. The pooling
/// allocator reserves address space for this many up front.
pub const MAX_INSTANCES: u32 = 1024;

/// Bytes of a component Hoist will compile. The built-in steps are 150–450 KiB and a
/// Python step built with componentize-py ~18 MiB (most of it data); compiling costs
/// time and memory before any other limit applies, so size is bounded first.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// Functions (across a component's core modules) Hoist will compile. Compilation cost
/// grows with the number of functions more than with their size (a 684 KiB component
/// of 100,000 empty functions took 10.7 s and 571 MiB); the built-in steps have fewer
/// than 3,000 and CPython far fewer than this, so this bounds a hostile component to a
/// few seconds and a few hundred MiB.
pub const MAX_FUNCTIONS: u64 = 60_000;

/// Bytes of a step's outputs (JSON). Outputs are small mappings (paths, ids, digests);
/// a plugin returning hundreds of MiB would make the host parse, redact, print and
/// store them (64 MiB once took 2.4 GiB).
pub const MAX_OUTPUT_BYTES: usize = 4 << 20;

/// Bytes of the input schema a plugin's `describe()` returns, and of its name,
/// version and summary.
pub const MAX_SCHEMA_BYTES: usize = 1 << 20;
/// See [`MAX_SCHEMA_BYTES`].
pub const MAX_NAME_BYTES: usize = 128;
/// See [`MAX_SCHEMA_BYTES`].
pub const MAX_SUMMARY_BYTES: usize = 1024;
