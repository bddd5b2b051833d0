//! Runtime benchmark: prints figures, each beside a baseline measured in the same run.
//!
//! Run with `cargo bench --bench runtime` (release profile). Figures:
//! 1. instantiate + call of a trivial step, warm cache, both allocators, against the
//!    bare wasmtime floor (`Store::new` + `instantiate_async` of the same component);
//! 2. loading a cached component against compiling it;
//! 3. 1,000 steps in flight at once: peak RSS, and throughput of 1,000 trivial steps;
//! 4. a step spawning `true` through the process capability against spawning `true`
//!    directly from Rust.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist_runtime::{
    Allocator, Capability, ComponentCache, Grants, HostEnv, Runtime, RuntimeConfig, StepRequest,
};
use serde_json::json;
use wasmtime::component::Component;

use hoist_builtins::test_plugins as plugins;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn runtime(allocator: Allocator, cache: &Path) -> Runtime {
    let rt = Runtime::new(RuntimeConfig {
        cache: ComponentCache::at(cache),
        allocator,
        max_instances: 1024,
        protected: Vec::new(),
        env: HostEnv::from_process(),
    })
    .unwrap();
    assert_eq!(rt.allocator(), allocator, "allocator fell back");
    rt
}

async fn instantiate_and_call(
    allocator: Allocator,
    cache: &Path,
    iters: usize,
) -> (Duration, Duration) {
    let rt = runtime(allocator, cache);
    let plugin = rt.load_file(Path::new(plugins::TRIVIAL)).await.unwrap();
    let cwd = std::env::current_dir().unwrap();
    let mut ours = Vec::with_capacity(iters);
    let f0 = minflt();
    for _ in 0..iters {
        let req = StepRequest::new("trivial", &cwd).inputs(json!({"k": "v"}));
        let t = Instant::now();
        let out = rt.run(&plugin, req).await.unwrap();
        ours.push(t.elapsed());
        assert_eq!(out.outputs["k"], "v");
    }
    let our_faults = (minflt() - f0) as f64 / iters as f64;
    // The floor: what wasmtime itself needs for a store and an instance of the same
    // component, with an empty WASI context and no call.
    let engine = rt.engine().clone();
    let component = unsafe_free_load(&engine, cache);
    let mut linker = wasmtime::component::Linker::<Floor>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
    // Hoist's own interfaces as traps (never called: the floor only instantiates).
    // `define_unknown_imports_as_traps` would also stub WASI imported at a newer patch
    // version than the host's, which cannot carry their resource types.
    use wasmtime::component::types::ComponentItem;
    for (name, item) in component.component_type().imports(&engine) {
        if let (true, ComponentItem::ComponentInstance(inst)) =
            (name.starts_with("hoist:"), item.ty)
        {
            let mut li = linker.instance(name).unwrap();
            for (fname, fitem) in inst.exports(&engine) {
                if let ComponentItem::ComponentFunc(_) = fitem.ty {
                    li.func_new(fname, |_, _, _, _| {
                        Err(wasmtime::Error::msg("not part of the floor"))
                    })
                    .unwrap();
                }
            }
        }
    }
    let pre = linker.instantiate_pre(&component).unwrap();
    let mut floor = Vec::with_capacity(iters);
    let f0 = minflt();
    for _ in 0..iters {
        let t = Instant::now();
        let mut store = wasmtime::Store::new(&engine, Floor::default());
        store.epoch_deadline_async_yield_and_update(1);
        let _i = pre.instantiate_async(&mut store).await.unwrap();
        floor.push(t.elapsed());
    }
    let floor_faults = (minflt() - f0) as f64 / iters as f64;
    Faults::set(our_faults, floor_faults);
    (median(ours), median(floor))
}

/// Minor page faults per run of the last `instantiate_and_call` (ours, floor).
struct Faults;

static FAULTS: std::sync::Mutex<(f64, f64)> = std::sync::Mutex::new((0.0, 0.0));

impl Faults {
    fn set(ours: f64, floor: f64) {
        *FAULTS.lock().unwrap() = (ours, floor);
    }
    fn get() -> (f64, f64) {
        *FAULTS.lock().unwrap()
    }
}

fn unsafe_free_load(engine: &wasmtime::Engine, cache: &Path) -> Component {
    let bytes = std::fs::read(plugins::TRIVIAL).unwrap();
    let digest = hoist_runtime::cache::digest(&bytes);
    ComponentCache::at(cache)
        .load(engine, &digest, &bytes)
        .unwrap()
        .0
}

struct Floor {
    wasi: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
}

impl wasmtime_wasi_http::WasiHttpView for Floor {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

impl Default for Floor {
    fn default() -> Self {
        Self {
            wasi: wasmtime_wasi::WasiCtxBuilder::new().build(),
            table: Default::default(),
            http: Default::default(),
        }
    }
}

impl wasmtime_wasi::WasiView for Floor {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn load_vs_compile(cache: &Path) -> (Duration, Duration) {
    let rt = runtime(Allocator::OnDemand, cache);
    let engine = rt.engine();
    let bytes = std::fs::read(plugins::PROBE).unwrap();
    let digest = hoist_runtime::cache::digest(&bytes);
    let cache = ComponentCache::at(cache);
    cache.load(engine, &digest, &bytes).unwrap();
    let mut load = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let (_c, how) = cache.load(engine, &digest, &bytes).unwrap();
        load.push(t.elapsed());
        assert_eq!(how, hoist_runtime::Loaded::Cached);
    }
    let mut compile = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let _c = Component::new(engine, &bytes).unwrap();
        compile.push(t.elapsed());
    }
    (median(load), median(compile))
}

async fn in_flight(allocator: Allocator, cache: &Path, n: usize) -> (u64, u64, Duration) {
    let rt = Arc::new(runtime(allocator, cache));
    let probe = rt.load_file(Path::new(plugins::PROBE)).await.unwrap();
    let trivial = rt.load_file(Path::new(plugins::TRIVIAL)).await.unwrap();
    let grants = Grants::new(
        ["process:true", "process:sleep", "env:HOIST_PROBE"]
            .map(|c| c.parse::<Capability>().unwrap()),
    );
    let cwd = std::env::current_dir().unwrap();
    let before = rss_kib();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (rt, probe, cwd, grants) = (rt.clone(), probe.clone(), cwd.clone(), grants.clone());
        tasks.push(tokio::spawn(async move {
            let req = StepRequest::new(format!("s{i}"), cwd)
                .inputs(json!({"action": "sleep", "ms": 500}))
                .grants(grants);
            rt.run(&probe, req).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();

    let t = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (rt, trivial, cwd) = (rt.clone(), trivial.clone(), cwd.clone());
        tasks.push(tokio::spawn(async move {
            rt.run(&trivial, StepRequest::new(format!("t{i}"), cwd))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        before,
        peak.load(std::sync::atomic::Ordering::Relaxed),
        t.elapsed(),
    )
}

async fn spawn_true(cache: &Path, iters: usize) -> (Duration, Duration) {
    let rt = runtime(Allocator::OnDemand, cache);
    let probe = rt.load_file(Path::new(plugins::PROBE)).await.unwrap();
    let grants = Grants::new(
        ["process:true", "process:sleep", "env:HOIST_PROBE"]
            .map(|c| c.parse::<Capability>().unwrap()),
    );
    let cwd = std::env::current_dir().unwrap();
    let (mut ours, mut direct) = (Vec::new(), Vec::new());
    // Alternate the two so machine noise hits both alike.
    for _ in 0..iters {
        let t = Instant::now();
        let out = std::process::Command::new("true").output().unwrap();
        direct.push(t.elapsed());
        assert!(out.status.success());

        let req = StepRequest::new("spawn", &cwd)
            .inputs(json!({"action": "spawn", "program": "true"}))
            .grants(grants.clone());
        let t = Instant::now();
        let out = rt.run(&probe, req).await.unwrap();
        ours.push(t.elapsed());
        assert_eq!(out.outputs["exit_code"], 0);
    }
    (median(ours), median(direct))
}

fn main() {
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().join("c");
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "hoist runtime benchmark (wasmtime 48, {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    println!(
        "\n1. instantiate + call of a trivial step, warm cache (median of 2000; target ≤ 30 µs)"
    );
    for allocator in [Allocator::OnDemand, Allocator::Pooling] {
        single.block_on(instantiate_and_call(allocator, &cache, 200));
        let (ours, floor) = single.block_on(instantiate_and_call(allocator, &cache, 2000));
        let (pf_ours, pf_floor) = Faults::get();
        println!(
            "   {allocator:<9}  hoist run: {:>9}   wasmtime store+instantiate floor: {:>9}   ratio {:.2}×   page faults/run {pf_ours:.1} (floor {pf_floor:.1})",
            us(ours),
            us(floor),
            ours.as_secs_f64() / floor.as_secs_f64()
        );
    }

    println!(
        "\n2. cached component load vs cold compile (probe component; target load ≤ 1 ms, ≥ 100× faster)"
    );
    let (load, compile) = load_vs_compile(&cache);
    println!(
        "   load from cache: {:>9}   compile: {:>9.1} ms   compile/load {:.0}×",
        us(load),
        compile.as_secs_f64() * 1e3,
        compile.as_secs_f64() / load.as_secs_f64()
    );

    println!(
        "\n3. 1,000 steps in flight at once (each sleeping 500 ms in a WASI call; target < 1 GiB RSS)"
    );
    for allocator in [Allocator::OnDemand, Allocator::Pooling] {
        let (before, peak, elapsed) = multi.block_on(in_flight(allocator, &cache, 1000));
        println!(
            "   {allocator:<9}  RSS before: {:>5} MiB   peak: {:>5} MiB   (+{} KiB per step)   1,000 trivial steps: {:.1} ms = {:.0} steps/s",
            before / 1024,
            peak / 1024,
            (peak.saturating_sub(before)) / 1000,
            elapsed.as_secs_f64() * 1e3,
            1000.0 / elapsed.as_secs_f64()
        );
    }

    println!("\n4. spawning `true` (median of 300, alternated; target ≤ 1.2×)");
    let (ours, direct) = single.block_on(spawn_true(&cache, 300));
    println!(
        "   step via process capability: {:>9}   std::process::Command directly: {:>9}   ratio {:.2}×",
        us(ours),
        us(direct),
        ours.as_secs_f64() / direct.as_secs_f64()
    );
}

/// This process's minor page faults so far (`/proc/self/stat`, field 10).
fn minflt() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    after.split(' ').nth(7).unwrap().parse().unwrap()
}
