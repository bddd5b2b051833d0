//! The sandbox holds misbehaving plugins (the `probe` test component) to their grants
//! and limits, and every failure names the step and says what to do.

use std::path::Path;
use std::time::{Duration, Instant};

use hoist::runtime::{
    Capability, ComponentCache, ErrorKind, Grants, HostEnv, Limits, Loaded, Runtime, RuntimeConfig,
    StepRequest,
};
use serde_json::{Value, json};

use crate::support::{self, plugins};

fn probe_grants() -> Grants {
    Grants::new(
        ["process:true", "process:sleep", "env:HOIST_PROBE"]
            .map(|c| c.parse::<Capability>().unwrap()),
    )
}

async fn probe(
    cwd: &Path,
    inputs: Value,
    limits: Limits,
) -> Result<Value, hoist::runtime::StepRunError> {
    let rt = support::runtime();
    let plugin = rt.load_file(Path::new(plugins::PROBE)).await.unwrap();
    let req = StepRequest::new("probe-step", cwd)
        .inputs(inputs)
        .grants(probe_grants())
        .limits(limits);
    rt.run(&plugin, req).await.map(|o| o.outputs)
}

#[tokio::test]
async fn reads_inside_the_working_directory_but_nothing_outside() {
    let (_t, dir) = support::tempdir();
    let inside = dir.join("project");
    std::fs::create_dir(&inside).unwrap();
    std::fs::write(inside.join("mine.txt"), "mine").unwrap();
    std::fs::write(dir.join("secret.txt"), "not yours").unwrap();

    let ok = probe(
        &inside,
        json!({"action": "read", "path": "mine.txt"}),
        Limits::default(),
    )
    .await
    .unwrap();
    assert_eq!(ok["contents"], "mine");

    for path in [
        dir.join("secret.txt").display().to_string(),
        "../secret.txt".into(),
        "/etc/passwd".into(),
    ] {
        let err = probe(
            &inside,
            json!({"action": "read", "path": path}),
            Limits::default(),
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("step `probe-step` (probe)"), "{msg}");
        assert!(
            !msg.contains("not yours") && !msg.contains("root:"),
            "{msg}"
        );
    }
    let err = probe(
        &inside,
        json!({"action": "write", "path": "/tmp/hoist-escape.txt", "contents": "x"}),
        Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(!Path::new("/tmp/hoist-escape.txt").exists(), "{err}");
}

#[tokio::test]
async fn a_program_that_was_not_granted_is_denied_with_a_fix() {
    let (_t, dir) = support::tempdir();
    let err = probe(
        &dir,
        json!({"action": "spawn", "program": "ls"}),
        Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Denied(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("may not run `ls`"), "{msg}");
    // The library names the capability; the CLI adds its flag (`cli::hints`).
    assert!(
        msg.contains("declare `process:ls` in the plugin and grant it"),
        "{msg}"
    );

    let ok = probe(
        &dir,
        json!({"action": "spawn", "program": "true"}),
        Limits::default(),
    )
    .await
    .unwrap();
    assert_eq!(ok["exit_code"], 0);
}

#[tokio::test]
async fn a_declared_capability_must_be_granted_before_anything_runs() {
    let (_t, dir) = support::tempdir();
    let rt = support::runtime();
    let plugin = rt.load_file(Path::new(plugins::PROBE)).await.unwrap();
    let marker = dir.join("written");
    let req = StepRequest::new("probe-step", &dir)
        .inputs(json!({"action": "write", "path": marker.display().to_string(), "contents": "x"}))
        .grants(Grants::new(["process:true".parse().unwrap()]));
    let err = rt.run(&plugin, req).await.unwrap_err();
    assert!(
        matches!(&err.kind, ErrorKind::NotGranted { capability } if capability == "process:sleep"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("needs capability `process:sleep`, which was not granted"),
        "{err}"
    );
    assert!(!marker.exists(), "nothing may run when a grant is missing");
}

#[tokio::test]
async fn changing_directory_needs_its_capability() {
    let (_t, dir) = support::tempdir();
    let err = probe(
        &dir,
        json!({"action": "chdir", "path": "/"}),
        Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("capability `set-cwd` was not granted"),
        "{err}"
    );
}

#[tokio::test]
async fn only_granted_environment_variables_are_visible() {
    let (_t, dir) = support::tempdir();
    // PATH is set in every test process, and was not granted.
    let out = probe(
        &dir,
        json!({"action": "env", "name": "PATH"}),
        Limits::default(),
    )
    .await
    .unwrap();
    assert_eq!(out["value"], Value::Null);
}

#[tokio::test]
async fn an_endless_loop_is_stopped_at_the_deadline() {
    let (_t, dir) = support::tempdir();
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let start = Instant::now();
    let err = probe(&dir, json!({"action": "spin"}), limits)
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Timeout(_)), "{err:?}");
    assert!(
        err.to_string().contains("did not finish within 300 ms"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_hung_child_process_is_killed_at_the_deadline() {
    let (_t, dir) = support::tempdir();
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let marker = "31.4159";
    let err = probe(
        &dir,
        json!({"action": "spawn", "program": "sleep", "args": [marker]}),
        limits,
    )
    .await
    .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Timeout(_)), "{err:?}");
    // The kill is synchronous with the cancellation; give the kernel a moment to reap.
    let mut alive = true;
    for _ in 0..50 {
        alive = sleeping_with(marker);
        if !alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive, "`sleep {marker}` outlived its step");
}

fn sleeping_with(arg: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            !zombie && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())
        })
}

#[tokio::test]
async fn unbounded_allocation_stops_at_the_memory_cap() {
    let (_t, dir) = support::tempdir();
    let limits = Limits {
        memory: 32 << 20,
        ..Limits::default()
    };
    let err = probe(&dir, json!({"action": "hog"}), limits)
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::OutOfMemory(_)), "{err:?}");
    assert!(err.to_string().contains("more than 32 MiB"), "{err}");
}

#[tokio::test]
async fn a_panic_is_reported_with_its_message() {
    let (_t, dir) = support::tempdir();
    let err = probe(
        &dir,
        json!({"action": "panic", "message": "the flux capacitor broke"}),
        Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Panicked(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("panicked: the flux capacitor broke (at "),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_inputs_name_the_field() {
    let (_t, dir) = support::tempdir();
    let rt = support::runtime();
    let plugin = hoist::plan::load_builtin(&rt, "set_working_directory")
        .await
        .unwrap();
    let req = StepRequest::new("cd", &dir).inputs(json!({"directory": ["not", "a", "string"]}));
    let err = rt.run(&plugin, req).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::InvalidInput(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("has invalid input: input `directory`: expected a string, got a list"),
        "{err}"
    );
}

#[tokio::test]
async fn the_second_runtime_loads_from_the_cache_without_compiling() {
    let (_t, dir) = support::tempdir();
    let cache = dir.join("cache");
    let bytes = std::fs::read(plugins::TRIVIAL).unwrap();
    let config = RuntimeConfig {
        cache: ComponentCache::at(&cache),
        env: HostEnv::from_process(),
        ..RuntimeConfig::default()
    };
    let first = Runtime::new(config.clone())
        .unwrap()
        .load(&bytes, "trivial", false)
        .await
        .unwrap();
    assert_eq!(first.loaded, Loaded::Compiled);
    let second = Runtime::new(config)
        .unwrap()
        .load(&bytes, "trivial", false)
        .await
        .unwrap();
    assert_eq!(second.loaded, Loaded::Cached);

    // A cache directory others can write is never loaded from.
    let mut perms = std::fs::metadata(&cache).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    std::fs::set_permissions(&cache, perms).unwrap();
    let config = RuntimeConfig {
        cache: ComponentCache::at(&cache),
        env: HostEnv::from_process(),
        ..RuntimeConfig::default()
    };
    let third = Runtime::new(config)
        .unwrap()
        .load(&bytes, "trivial", false)
        .await
        .unwrap();
    assert_eq!(third.loaded, Loaded::Compiled);
}

#[tokio::test]
async fn garbage_is_refused_as_a_component() {
    let rt = support::runtime();
    let err = rt
        .load(b"\0asm not really", "garbage.wasm", false)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("not a valid WebAssembly component"),
        "{err}"
    );
}

/// Steps run concurrently: 100 steps that each sleep 500 ms in a WASI call finish
/// together in well under the 50 s they would take one after another. The bound (25 s,
/// half the sequential time) is far from both: at once they take about a second here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_steps_run_at_once_in_one_runtime() {
    const STEPS: u32 = 100;
    const SLEEP_MS: u64 = 500;
    let (_t, dir) = support::tempdir();
    let rt = std::sync::Arc::new(support::runtime());
    let plugin = rt.load_file(Path::new(plugins::PROBE)).await.unwrap();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..STEPS {
        let (rt, plugin, dir) = (rt.clone(), plugin.clone(), dir.clone());
        tasks.push(tokio::spawn(async move {
            let req = StepRequest::new(format!("s{i}"), dir)
                .inputs(json!({"action": "sleep", "ms": SLEEP_MS}))
                .grants(probe_grants());
            rt.run(&plugin, req).await
        }));
    }
    for t in tasks {
        let outcome = t.await.unwrap().unwrap();
        assert_eq!(outcome.outputs["slept_ms"], SLEEP_MS);
        // Each step really slept (so the total below is not quick for another reason).
        assert!(
            outcome.elapsed >= std::time::Duration::from_millis(SLEEP_MS),
            "{:?}",
            outcome.elapsed
        );
    }
    let total = started.elapsed();
    let sequential = std::time::Duration::from_millis(SLEEP_MS * u64::from(STEPS));
    assert!(
        total < sequential / 2,
        "{STEPS} steps of {SLEEP_MS} ms took {total:?}: they did not run at once \
         (one after another takes {sequential:?})"
    );
}
