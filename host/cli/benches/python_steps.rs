//! The same trivial step written in Rust (`tests/plugins/trivial`) and in Python (built
//! here with `hoist plugin build` and componentize-py), measured in one run: cold
//! compile, cached load, instantiate + call with a warm cache, memory per instance and
//! 100 steps in flight, and a whole `hoist step run` process against `python3 -c`
//! running the same function.
//!
//! Run with `cargo bench --bench python_steps` (componentize-py from
//! `$HOIST_COMPONENTIZE_PY` or PATH). Targets (issue: Python steps): instantiate + call
//! ≤ 2 ms, a whole `hoist step run` ≤ 30 ms.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist::builtin::test_plugins as plugins;
use hoist::runtime::{
    Capability, ComponentCache, Grants, HostEnv, Plugin, Runtime, RuntimeConfig, StepRequest,
};
use serde_json::json;

const PY_STEP: &str = r#"import time
from dataclasses import dataclass

from hoist_sdk import step


@dataclass
class Inputs:
    k: str = ""
    ms: int = 0


@step(name="trivial_py", version="0.1.0", summary="Echo k back", capabilities=[])
def run(inputs: Inputs) -> dict:
    if inputs.ms:
        time.sleep(inputs.ms / 1000)
    return {"k": inputs.k}
"#;

/// The same function as a Python process (the floor Python itself sets).
const PY_PROCESS: &str = "import json, sys\nprint(json.dumps({'k': json.loads(sys.argv[1])['k']}))";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn runtime(cache: ComponentCache) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache,
        max_instances: 1024,
        env: HostEnv::from_process(),
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// The Python step's component, built into `dir`.
fn build_python(dir: &Path) -> PathBuf {
    let src = dir.join("trivial_py");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("app.py"), PY_STEP).unwrap();
    let out = dir.join("trivial_py.wasm");
    let status = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["plugin", "build"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "building the Python step failed");
    out
}

/// Cold compile (no cache), then a cached load in a fresh runtime (the cache filled by
/// a first load).
async fn compile_and_load(wasm: &Path, cache: &Path) -> (Duration, Duration) {
    let cold = runtime(ComponentCache::disabled());
    let t = Instant::now();
    cold.load_file(wasm).await.unwrap();
    let compile = t.elapsed();
    runtime(ComponentCache::at(cache))
        .load_file(wasm)
        .await
        .unwrap();
    let mut loads = Vec::new();
    for _ in 0..5 {
        let rt = runtime(ComponentCache::at(cache));
        let t = Instant::now();
        rt.load_file(wasm).await.unwrap();
        loads.push(t.elapsed());
    }
    (compile, median(loads))
}

/// Median time of instantiate + call, and the minor page faults per call.
async fn instantiate_and_call(rt: &Runtime, plugin: &Arc<Plugin>, iters: usize) -> (Duration, u64) {
    let cwd = std::env::current_dir().unwrap();
    let mut times = Vec::with_capacity(iters);
    let faults = minor_faults();
    for _ in 0..iters {
        let req = StepRequest::new("s", &cwd).inputs(json!({"k": "v"}));
        let t = Instant::now();
        let out = rt.run(plugin, req).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(out.outputs["k"], "v");
    }
    let faults = (minor_faults() - faults) / iters as u64;
    (median(times), faults)
}

/// What is held in flight: a plugin, inputs that make it sleep 500 ms, its grants.
type Hold = (Arc<Plugin>, serde_json::Value, Grants);

/// `n` steps of `hold` in flight at once: RSS added per step; then `n` runs of
/// `trivial` at once: the time for all.
async fn in_flight(
    rt: Arc<Runtime>,
    hold: Hold,
    trivial: Arc<Plugin>,
    n: usize,
) -> (u64, Duration) {
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
    let run_all = |plugin: Arc<Plugin>, inputs: serde_json::Value, grants: Grants| {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (rt, plugin, cwd, inputs, grants) = (
                    rt.clone(),
                    plugin.clone(),
                    cwd.clone(),
                    inputs.clone(),
                    grants.clone(),
                );
                tokio::spawn(async move {
                    let req = StepRequest::new(format!("s{i}"), cwd)
                        .inputs(inputs)
                        .grants(grants);
                    rt.run(&plugin, req).await.unwrap();
                })
            })
            .collect();
        async move {
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    let (plugin, inputs, grants) = hold;
    run_all(plugin, inputs, grants).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let per_step = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before)
        / n as u64;
    let t = Instant::now();
    run_all(trivial, json!({"k": "v"}), Grants::default()).await;
    (per_step, t.elapsed())
}

/// Median wall time of `n` runs of a command (output discarded).
fn whole_process(mut cmd: impl FnMut() -> Command, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 2 {
        let t = Instant::now();
        let out = cmd().output().unwrap();
        let took = t.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if i >= 2 {
            times.push(took);
        }
    }
    median(times)
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    let cache = dir.join("cache");
    let home = dir.join("home");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let python = build_python(&dir);
    let rust = PathBuf::from(plugins::TRIVIAL);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // For a profiler: only instantiate + call of the Python step, N times (3,000 if the
    // variable is not a number).
    if let Some(n) = std::env::var_os("PYTHON_STEPS_PROFILE_CALLS") {
        let n = n.to_str().and_then(|n| n.parse().ok()).unwrap_or(3000);
        let rt = runtime(ComponentCache::at(&cache));
        let plugin = tokio.block_on(rt.load_file(&python)).unwrap();
        let (d, faults) = tokio.block_on(instantiate_and_call(&rt, &plugin, n));
        println!(
            "python instantiate + call: {} ({faults} page faults per call)",
            ms(d)
        );
        return;
    }
    println!(
        "the same trivial step in Rust and in Python ({} KiB vs {} KiB component)",
        std::fs::metadata(&rust).unwrap().len() / 1024,
        std::fs::metadata(&python).unwrap().len() / 1024
    );

    println!("\n1. cold compile, then a cached load in a fresh runtime (median of 5)");
    let mut loaded = Vec::new();
    for (name, wasm) in [("rust", &rust), ("python", &python)] {
        let (compile, load) = tokio.block_on(compile_and_load(wasm, &cache));
        println!(
            "   {name:<7} compile {:>11}   cached load {:>9}",
            ms(compile),
            ms(load)
        );
        loaded.push(load);
    }
    println!(
        "   python / rust: cached load {:.1}×",
        loaded[1].as_secs_f64() / loaded[0].as_secs_f64()
    );

    println!("\n2. instantiate + call, warm cache (median of 300; target python ≤ 2 ms)");
    let rt = Arc::new(runtime(ComponentCache::at(&cache)));
    let mut calls = Vec::new();
    let mut plugins = Vec::new();
    for (name, wasm) in [("rust", &rust), ("python", &python)] {
        let plugin = tokio.block_on(rt.load_file(wasm)).unwrap();
        tokio.block_on(instantiate_and_call(&rt, &plugin, 30));
        let (d, faults) = tokio.block_on(instantiate_and_call(&rt, &plugin, 300));
        println!(
            "   {name:<7} {:>9}   {faults:>5} page faults per call",
            ms(d)
        );
        calls.push(d);
        plugins.push(plugin);
    }
    println!(
        "   python / rust: {:.1}×",
        calls[1].as_secs_f64() / calls[0].as_secs_f64()
    );

    println!(
        "\n3. 100 steps in flight, each sleeping 500 ms in a WASI call (Rust: the probe test step, \
         which can sleep): RSS per step; then 100 trivial steps at once: time for all"
    );
    let probe = tokio
        .block_on(rt.load_file(Path::new(plugins::PROBE)))
        .unwrap();
    let probe_grants = Grants::new(
        ["process:true", "process:sleep", "env:HOIST_PROBE"]
            .map(|c| c.parse::<Capability>().unwrap()),
    );
    let holds: [Hold; 2] = [
        (probe, json!({"action": "sleep", "ms": 500}), probe_grants),
        (
            plugins[1].clone(),
            json!({"k": "v", "ms": 500}),
            Grants::default(),
        ),
    ];
    for ((name, trivial), hold) in ["rust", "python"].iter().zip(&plugins).zip(holds) {
        let (per_step, all) = tokio.block_on(in_flight(rt.clone(), hold, trivial.clone(), 100));
        println!(
            "   {name:<7} +{per_step:>6} KiB per step   100 at once: {:>9}",
            ms(all)
        );
    }

    println!("\n4. a whole process (median of 20; target `hoist step run` of python ≤ 30 ms)");
    let hoist = |wasm: PathBuf| {
        let (home, cache, work) = (home.clone(), cache.clone(), work.clone());
        move || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_hoist"));
            c.args(["step", "run"])
                .arg(&wasm)
                .args(["--input", "k=v", "--quiet"])
                .env("HOIST_HOME", &home)
                .env("HOIST_CACHE_DIR", &cache)
                .current_dir(&work);
            c
        }
    };
    let r = whole_process(hoist(rust.clone()), 20);
    let p = whole_process(hoist(python.clone()), 20);
    let py = whole_process(
        || {
            let mut c = Command::new("python3");
            c.args(["-c", PY_PROCESS, r#"{"k": "v"}"#]);
            c
        },
        20,
    );
    println!("   hoist step run, rust    {:>9}", ms(r));
    println!("   hoist step run, python  {:>9}", ms(p));
    println!("   python3 -c, same function {:>7}", ms(py));
    println!(
        "   python step / rust step {:.2}×   python step / python3 -c {:.2}×",
        p.as_secs_f64() / r.as_secs_f64(),
        p.as_secs_f64() / py.as_secs_f64()
    );
}
