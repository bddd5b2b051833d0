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
