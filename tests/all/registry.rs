//! The plugin registry, both sides, as users run them: `hoist registry serve` (a real
//! HTTP server on loopback, SQLite in its data directory), `hoist registry token
//! create`, `hoist plugin publish/install/ls/info/yank`, then `hoist step run NS/NAME`.
//! Attacks on the server are sent as raw HTTP (what a hostile client would send), and
//! every refusal is checked to have left nothing visible or installed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{self, Server, hoist, plugins, run};

/// A registry served by the real binary, killed on drop.
struct Registry {
    _server: Server,
    port: u16,
    url: String,
    data: PathBuf,
}

fn serve(dir: &Path, extra: &[&str]) -> Registry {
    let port = support::free_port();
    let data = dir.join("registry-data");
    let mut cmd = hoist(dir);
    cmd.args(["registry", "serve", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data)
        .args(extra);
    Registry {
        _server: Server::start(cmd, port, "hoist registry serve"),
        port,
        url: format!("http://127.0.0.1:{port}"),
        data,
    }
}

impl Registry {
    fn token(&self, dir: &Path, namespace: &str) -> String {
        let (code, out, err) = run(hoist(dir)
            .args(["registry", "token", "create", "--namespace", namespace])
            .arg("--data-dir")
            .arg(&self.data));
        assert_eq!(code, 0, "{err}");
        let token = out.lines().last().unwrap().trim().to_string();
        assert!(token.starts_with("hoist_") && token.len() > 40, "{out}");
        token
    }

    /// `hoist plugin ARGS... --registry URL` in `dir`'s home, with `token` if any.
    fn plugin(&self, dir: &Path, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
        let mut cmd = hoist(dir);
        cmd.arg("plugin").args(args).args(["--registry", &self.url]);
        match token {
            Some(t) => cmd.env("HOIST_REGISTRY_TOKEN", t),
            None => cmd.env_remove("HOIST_REGISTRY_TOKEN"),
        };
        run(&mut cmd)
    }

    fn publish(
        &self,
        dir: &Path,
        token: &str,
        file: &str,
        name: &str,
        version: &str,
    ) -> (i32, String, String) {
        self.plugin(
            dir,
            Some(token),
            &["publish", file, "--name", name, "--version", version],
        )
    }

    /// Raw HTTP/1.1 to the registry: (status, body).
    fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        raw_http(self.port, method, path, headers, body).0
    }
    /// Upload `component` and its Wasm config as blobs of `NS/NAME` (each must be
    /// accepted), then PUT the package manifest as 1.0.0: the answer to that PUT.
    fn put_package(&self, repo: &str, h: &[(&str, &str)], component: &[u8]) -> (u16, String) {
        let config = hoist_registry::oci::wasm_config(&sha256(component));
        self.put_blobs(repo, h, &[component, &config]);
        let manifest = serde_json::to_vec(&hoist_registry::oci::package_manifest(
            &config, component, "1.0.0", "",
        ))
        .unwrap();
        self.http("PUT", &format!("/v2/{repo}/manifests/1.0.0"), h, &manifest)
    }

    /// Upload each of `blobs` to `NS/NAME` monolithically; each must be accepted.
    fn put_blobs(&self, repo: &str, h: &[(&str, &str)], blobs: &[&[u8]]) {
        for blob in blobs {
            let (status, body) = self.http(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(blob)),
                h,
                blob,
            );
            assert_eq!(status, 201, "{body}");
        }
    }

    /// Files under the blob store.
    fn blob_count(&self) -> usize {
        std::fs::read_dir(self.data.join("blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Raw HTTP/1.1 to a port on loopback: ((status, body), the raw head).
fn raw_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> ((u16, String), String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    ((status, body), head)
}

/// The value of the header `name` (any case) in a raw response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn sha256(bytes: &[u8]) -> String {
    hoist_registry::oci::digest_of(bytes)
}

/// The whole path a user takes: a token, a publish, an install into another machine's
/// home, a run by name; the registry's OCI and JSON views of it; a second version that
/// declares more stops the update until confirmed; a version is never published twice.
#[test]
fn a_published_step_installs_and_runs_by_name() {
    let (_t, dir) = support::tempdir();
    let (_c, consumer) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");

    let (code, out, err) = reg.publish(&dir, &token, plugins::TRIVIAL, "acme/echo", "1.0.0");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("publishing acme/echo@1.0.0") && err.contains("declares nothing"),
        "{err}"
    );
    let manifest_digest = out.trim().to_string();
    assert!(manifest_digest.starts_with("sha256:"), "{out}");

    // The OCI view: the version is a tag, the manifest a Wasm artifact, the blob the
    // component's bytes.
    let wasm = std::fs::read(plugins::TRIVIAL).unwrap();
    let (status, tags) = reg.http("GET", "/v2/acme/echo/tags/list", &[], b"");
    assert_eq!((status, tags.contains("\"1.0.0\"")), (200, true), "{tags}");
    let (status, manifest) = reg.http("GET", "/v2/acme/echo/manifests/1.0.0", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(sha256(manifest.as_bytes()), manifest_digest);
    assert!(
        manifest.contains("application/vnd.wasm.config.v0+json")
            && manifest.contains(&sha256(&wasm)),
        "{manifest}"
    );
    let (status, _) = reg.http(
        "GET",
        &format!("/v2/acme/echo/blobs/{}", sha256(&wasm)),
        &[],
        b"",
    );
    assert_eq!(status, 200);

    // Install on another machine (another home) and run it by its package name.
    let (code, _, err) = reg.plugin(&consumer, None, &["install", "acme/echo@^1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("installed acme/echo@1.0.0"), "{err}");
    let (code, out, err) = run(hoist(&consumer).current_dir(&consumer).args([
        "step",
        "run",
        "acme/echo",
        "--input",
        "k=from-the-registry",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from-the-registry"), "{out}");

    // 1.1.0 is a different step that declares capabilities: an update stops and says
    // what is new, leaving 1.0.0 installed; --yes takes it.
    let (code, _, err) = reg.publish(&dir, &token, plugins::PROBE, "acme/echo", "1.1.0");
    assert_eq!(code, 0, "{err}");
    let installed = support::home_of(&consumer).join("plugins/acme/echo.wasm");
    let (code, _, err) = reg.plugin(&consumer, None, &["install", "acme/echo"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("declares more than the installed 1.0.0") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(
        sha256(&std::fs::read(&installed).unwrap()),
        sha256(&wasm),
        "the refused update changed the installed plugin"
    );
    let (code, _, err) = reg.plugin(&consumer, None, &["install", "acme/echo", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sha256(&std::fs::read(&installed).unwrap()),
        sha256(&std::fs::read(plugins::PROBE).unwrap())
    );
    let (_, out, _) = run(hoist(&consumer).args(["plugin", "ls"]));
    assert!(out.contains("acme/echo@1.1.0"), "{out}");

    // Immutable: the same version again is refused, and what was published stands.
    let (code, _, err) = reg.publish(&dir, &token, plugins::PROBE, "acme/echo", "1.0.0");
    assert_eq!(code, 1);
    assert!(
        err.contains("409") && err.contains("already published"),
        "{err}"
    );
    let (_, manifest_after) = reg.http("GET", "/v2/acme/echo/manifests/1.0.0", &[], b"");
    assert_eq!(manifest_after, manifest);

    // Yanked versions are not chosen by a range.
    let (code, _, err) = reg.plugin(&dir, Some(&token), &["yank", "acme/echo@1.1.0"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = reg.plugin(&dir, None, &["info", "acme/echo"]);
    assert!(out.contains("acme/echo@1.1.0 (yanked)"), "{out}");
    let (_, body) = reg.http("GET", "/api/v1/packages?q=echo", &[], b"");
    assert!(body.contains("\"version\":\"1.0.0\""), "{body}");
}

/// Writes without the right token are refused (none, unknown, another namespace's),
/// and so are names outside the safe set; nothing becomes visible.
#[test]
fn publishing_needs_the_namespaces_token_and_a_plain_name() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let acme = reg.token(&dir, "acme");

    let (code, _, err) = reg.plugin(
        &dir,
        None,
        &[
            "publish",
            plugins::TRIVIAL,
            "--name",
            "acme/x",
            "--version",
            "1.0.0",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("HOIST_REGISTRY_TOKEN"), "{err}");
    let (code, _, err) = reg.publish(
        &dir,
        "hoist_not-a-token",
        plugins::TRIVIAL,
        "acme/x",
        "1.0.0",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("401") && err.contains("not one this registry issued"),
        "{err}"
    );
    let (code, _, err) = reg.publish(&dir, &acme, plugins::TRIVIAL, "other/x", "1.0.0");
    assert_eq!(code, 1);
    assert!(
        err.contains("403") && err.contains("publishes into `acme`, not into `other`"),
        "{err}"
    );
    for (name, why) in [
        ("acme/../x", "character '.'"),
        ("\u{430}cme/x", "non-ASCII character"),
        ("acme/X", "uppercase"),
    ] {
        let (code, _, err) = reg.publish(&dir, &acme, plugins::TRIVIAL, name, "1.0.0");
        assert_eq!(code, 1, "{name}");
        assert!(err.contains(why), "{name}: {err}");
    }
    // The server refuses the same names itself (a client that skips the checks).
    let auth = format!("Bearer {acme}");
    for path in [
        "/v2/acme/..%2Fx/manifests/1.0.0",
        "/v2/acme/%D0%B0x/manifests/1.0.0",
    ] {
        let (status, body) = reg.http("PUT", path, &[("Authorization", &auth)], b"{}");
        assert!(status == 400 || status == 404, "{path}: {status} {body}");
    }
    let (_, body) = reg.http("GET", "/api/v1/packages", &[], b"");
    assert_eq!(body, r#"{"packages":[]}"#);
    assert_eq!(reg.blob_count(), 0, "a refused write stored a blob");
}

/// Uploads that are not steps, not what their digest says, or too large are refused
/// by the server with the reason, and leave no version.
#[test]
fn the_server_refuses_what_is_not_a_step() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &["--max-size", "200KiB"]);
    let token = reg.token(&dir, "acme");
    let auth = format!("Bearer {token}");
    let h = [("Authorization", auth.as_str())];

    // A blob whose bytes are not its digest.
    let (status, body) = reg.http(
        "POST",
        &format!("/v2/acme/x/blobs/uploads/?digest={}", sha256(b"other")),
        &h,
        b"bytes",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("DIGEST_INVALID"), "{body}");
    assert_eq!(reg.blob_count(), 0);

    // Not a component: the blobs are stored (they are only bytes), the version is not.
    let junk = b"#!/bin/sh\necho not wasm\n".to_vec();
    let config = hoist_registry::oci::wasm_config(&sha256(&junk));
    reg.put_blobs("acme/junk", &h, &[&junk, &config]);
    let manifest = serde_json::to_vec(&hoist_registry::oci::package_manifest(
        &config, &junk, "1.0.0", "",
    ))
    .unwrap();
    let (status, body) = reg.http("PUT", "/v2/acme/junk/manifests/1.0.0", &h, &manifest);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a step this registry accepts"), "{body}");
    let (status, _) = reg.http("GET", "/v2/acme/junk/manifests/1.0.0", &[], b"");
    assert_eq!(status, 404);
    // A step built for a `hoist:step` this registry's hoist does not run (the trivial
    // step with its WIT names moved to 0.9.0): refused, saying which versions.
    let future = support::built_for_wit(&std::fs::read(plugins::TRIVIAL).unwrap(), "0.9.0");
    let (status, body) = reg.put_package("acme/future", &h, &future);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("built for hoist:step@0.9.0") && body.contains("hoist:step@0.1.0"),
        "{body}"
    );
    let (status, _) = reg.http("GET", "/api/v1/packages/acme/future", &[], b"");
    assert_eq!(status, 404);
    // `hoist plugin publish` says so before uploading anything.
    let file = dir.join("future.wasm");
    std::fs::write(&file, &future).unwrap();
    let blobs = reg.blob_count();
    let (code, _, err) = reg.publish(&dir, &token, file.to_str().unwrap(), "acme/future", "1.0.0");
    assert_eq!(code, 1);
    assert!(err.contains("built for hoist:step@0.9.0"), "{err}");
    assert_eq!(reg.blob_count(), blobs);
    // A tag that is not a version.
    let (status, body) = reg.http("PUT", "/v2/acme/junk/manifests/latest", &h, &manifest);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("TAG_INVALID"), "{body}");

    // Over the size limit: the trivial step (178 KiB) would fit, the probe (230 KiB) does not.
    let big = std::fs::read(plugins::PROBE).unwrap();
    assert!(big.len() > 200 << 10, "the probe is {} bytes", big.len());
    let (code, _, err) = reg.publish(&dir, &token, plugins::PROBE, "acme/big", "1.0.0");
    assert_eq!(code, 1);
    assert!(err.contains("413") && err.contains("limit"), "{err}");
    let (status, _) = reg.http("GET", "/api/v1/packages/acme/big", &[], b"");
    assert_eq!(status, 404);
}

/// A blob changed on the registry's disk (or in transit) does not install; a registry
/// that is down says so, and what is installed still runs.
#[test]
fn a_tampered_component_is_not_installed_and_an_unreachable_registry_is_named() {
    let (_t, dir) = support::tempdir();
    let (_c, consumer) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");
    let (code, _, err) = reg.publish(&dir, &token, plugins::TRIVIAL, "acme/echo", "1.0.0");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = reg.publish(&dir, &token, plugins::PROBE, "acme/probe", "1.0.0");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = reg.plugin(&consumer, None, &["install", "acme/echo"]);
    assert_eq!(code, 0, "{err}");

    // The probe's blob is swapped for the trivial step's bytes.
    let probe = std::fs::read(plugins::PROBE).unwrap();
    let stored = reg.data.join("blobs/sha256").join(&sha256(&probe)[7..]);
    std::fs::write(&stored, std::fs::read(plugins::TRIVIAL).unwrap()).unwrap();
    let (code, _, err) = reg.plugin(&consumer, None, &["install", "acme/probe"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is not what its digest says") && err.contains("nothing was installed"),
        "{err}"
    );
    assert!(
        !support::home_of(&consumer)
            .join("plugins/acme/probe.wasm")
            .exists()
    );
    assert!(
        !support::home_of(&consumer)
            .join("plugins/acme/probe.partial")
            .exists()
    );

    // Down: a port nobody listens on.
    let down = format!("http://127.0.0.1:{}", support::free_port());
    let (code, _, err) =
        run(hoist(&consumer).args(["plugin", "install", "acme/echo@^2", "--registry", &down]));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot reach the registry at {down}")),
        "{err}"
    );
    let (code, out, err) = run(hoist(&consumer).current_dir(&consumer).args([
        "step",
        "run",
        "acme/echo",
        "--input",
        "k=offline",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("offline"), "{out}");
    // Not installed: named, with the command that installs it.
    let (code, _, err) =
        run(hoist(&consumer)
            .current_dir(&consumer)
            .args(["step", "run", "acme/nope"]));
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "package `acme/nope` is not installed; install it with `hoist plugin install acme/nope`"
        ),
        "{err}"
    );
}

/// Concurrent publishes of one version: exactly one wins, the others get 409.
#[test]
fn concurrent_publishes_of_one_version_leave_one() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");
    let children: Vec<_> = (0..4)
        .map(|i| {
            let file = if i % 2 == 0 {
                plugins::TRIVIAL
            } else {
                plugins::PROBE
            };
            let mut cmd: Command = hoist(&dir);
            cmd.args([
                "plugin",
                "publish",
                file,
                "--name",
                "acme/race",
                "--version",
                "1.0.0",
                "--registry",
                &reg.url,
            ])
            .env("HOIST_REGISTRY_TOKEN", &token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let results: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let won = results.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        won,
        1,
        "{:?}",
        results
            .iter()
            .map(|o| support::text(&o.stderr))
            .collect::<Vec<_>>()
    );
    for o in results.iter().filter(|o| !o.status.success()) {
        assert!(
            support::text(&o.stderr).contains("already published"),
            "{}",
            support::text(&o.stderr)
        );
    }
    let (_, tags) = reg.http("GET", "/v2/acme/race/tags/list", &[], b"");
    assert_eq!(tags, r#"{"name":"acme/race","tags":["1.0.0"]}"#);
}

/// A registry killed (SIGKILL) in the middle of a publish shows no half of it after a
/// restart on the same data: not mid-upload, not with the blobs stored and no manifest;
/// the same version then publishes whole. A publish it acknowledged survives the kill.
#[test]
fn a_registry_killed_mid_publish_shows_no_half_version() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");
    let auth = format!("Bearer {token}");
    let h = [("Authorization", auth.as_str())];
    let probe = std::fs::read(plugins::PROBE).unwrap();
    let config = hoist_registry::oci::wasm_config(&sha256(&probe));

    // Killed mid-upload: half the component sent in a chunk.
    let ((status, _), head) = raw_http(reg.port, "POST", "/v2/acme/half/blobs/uploads/", &h, b"");
    assert_eq!(status, 202, "{head}");
    let location = header(&head, "location").unwrap().to_string();
    let half = &probe[..probe.len() / 2];
    let range = format!("0-{}", half.len() - 1);
    let ((status, body), _) = raw_http(
        reg.port,
        "PATCH",
        &location,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Range", range.as_str()),
        ],
        half,
    );
    assert_eq!(status, 202, "{body}");
    drop(reg);
    let reg = serve(&dir, &[]);
    let (status, _) = reg.http("GET", "/api/v1/packages/acme/half", &[], b"");
    assert_eq!(status, 404);
    let (status, _) = reg.http(
        "GET",
        &format!("/v2/acme/half/blobs/{}", sha256(&probe)),
        &[],
        b"",
    );
    assert_eq!(status, 404, "half a blob is visible");

    // Killed with both blobs stored and no manifest yet: still no version.
    reg.put_blobs("acme/half", &h, &[&probe, &config]);
    drop(reg);
    let reg = serve(&dir, &[]);
    let (status, _) = reg.http("GET", "/v2/acme/half/manifests/1.0.0", &[], b"");
    assert_eq!(status, 404);
    let (status, body) = reg.http("GET", "/v2/acme/half/tags/list", &[], b"");
    assert_eq!(status, 404, "{body}");

    // The same version publishes whole, and once acknowledged survives a kill.
    let (code, _, err) = reg.publish(&dir, &token, plugins::PROBE, "acme/half", "1.0.0");
    assert_eq!(code, 0, "{err}");
    drop(reg);
    let reg = serve(&dir, &[]);
    let (_c, consumer) = support::tempdir();
    let (code, _, err) = reg.plugin(&consumer, None, &["install", "acme/half@1.0.0"]);
    assert_eq!(code, 0, "{err}");
    let installed = support::home_of(&consumer).join("plugins/acme/half.wasm");
    assert_eq!(sha256(&std::fs::read(installed).unwrap()), sha256(&probe));
}

/// A project's packages are pinned in `hoist.lock` beside its prefect.yaml: `requires:`
/// installs before the step runs and pins what it installed; a newer version does not
/// move the pin; another machine installs exactly the pin from the lock; an installed
/// file that is not the pinned one is put back; with the pin installed nothing needs the
/// registry; a lock the registry contradicts, or a requirement the pin does not meet,
/// stops before anything runs and installs nothing.
#[test]
fn a_project_pins_its_packages_in_hoist_lock() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");
    let (code, _, err) = reg.publish(&dir, &token, plugins::TRIVIAL, "acme/echo", "1.0.0");
    assert_eq!(code, 0, "{err}");
    let trivial = sha256(&std::fs::read(plugins::TRIVIAL).unwrap());

    let (_p, project) = support::tempdir();
    let yaml = "build:\n  - acme/echo:\n      id: echo\n      requires: acme/echo@^1\n      said: pinned-hello\n";
    std::fs::write(project.join("prefect.yaml"), yaml).unwrap();
    let build = |home: &Path, registry: Option<&str>| {
        let mut cmd = hoist(home);
        cmd.current_dir(&project).arg("build");
        match registry {
            Some(r) => cmd.env("HOIST_REGISTRY", r),
            None => cmd.env_remove("HOIST_REGISTRY"),
        };
        run(&mut cmd)
    };
    let lock_path = project.join("hoist.lock");
    let installed = support::home_of(&dir).join("plugins/acme/echo.wasm");

    // Not installed and no registry: said before anything runs.
    let (code, out, err) = build(&dir, None);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("prefect.yaml:2: build[0]")
            && err
                .contains("requires acme/echo@^1, which is not installed, and no registry is set"),
        "{err}"
    );
    assert!(!lock_path.exists() && !installed.exists());

    // `requires:` installs it, pins it, and the step runs.
    let (code, out, err) = build(&dir, Some(&reg.url));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pinned-hello"), "{out}");
    assert!(err.contains("pinned acme/echo@1.0.0 in"), "{err}");
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lock_path).unwrap()).unwrap();
    assert_eq!(
        lock["packages"],
        serde_json::json!([{"package": "acme/echo", "version": "1.0.0", "registry": reg.url, "digest": trivial}])
    );

    // A newer version does not move the pin.
    let (code, _, err) = reg.publish(&dir, &token, plugins::PROBE, "acme/echo", "1.1.0");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = build(&dir, Some(&reg.url));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pinned-hello"), "{out}");
    assert_eq!(sha256(&std::fs::read(&installed).unwrap()), trivial);

    // Another machine: `hoist plugin install` with no package installs the pin, not the
    // newest version.
    let (_o, other) = support::tempdir();
    let (code, _, err) = run(hoist(&other)
        .current_dir(&project)
        .args(["plugin", "install"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("installing acme/echo@1.0.0"), "{err}");
    let other_installed = support::home_of(&other).join("plugins/acme/echo.wasm");
    assert_eq!(sha256(&std::fs::read(&other_installed).unwrap()), trivial);

    // An installed file that is not the pinned one (replaced by hand) is put back.
    std::fs::copy(plugins::PROBE, &installed).unwrap();
    let (code, out, err) = build(&dir, None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pinned-hello"), "{out}");
    assert_eq!(sha256(&std::fs::read(&installed).unwrap()), trivial);

    // A lock the registry contradicts (the pin's digest is another component's):
    // refused, nothing installed on a fresh machine.
    let good_lock = std::fs::read_to_string(&lock_path).unwrap();
    let probe = sha256(&std::fs::read(plugins::PROBE).unwrap());
    std::fs::write(&lock_path, good_lock.replace(&trivial, &probe)).unwrap();
    let (_f, fresh) = support::tempdir();
    let (code, _, err) = run(hoist(&fresh)
        .current_dir(&project)
        .args(["plugin", "install"]));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("pins acme/echo@1.0.0 as {probe}"))
            && err.contains(&format!("serves {trivial}"))
            && err.contains("nothing was installed"),
        "{err}"
    );
    assert!(
        !support::home_of(&fresh)
            .join("plugins/acme/echo.wasm")
            .exists()
    );
    std::fs::write(&lock_path, &good_lock).unwrap();

    // A requirement the pin does not meet stops the run, naming the step and the fix.
    std::fs::write(project.join("prefect.yaml"), yaml.replace("@^1", "@^2")).unwrap();
    let (code, out, err) = build(&dir, Some(&reg.url));
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("prefect.yaml:2: build[0]: requires acme/echo@^2, but")
            && err.contains("pins acme/echo@1.0.0")
            && err.contains("hoist plugin install acme/echo@^2"),
        "{err}"
    );
    assert!(!out.contains("pinned-hello"), "{out}");
    std::fs::write(project.join("prefect.yaml"), yaml).unwrap();

    // Offline: the registry is gone and the pin is installed; the build still runs.
    drop(reg);
    let (code, out, err) = build(&dir, Some("http://127.0.0.1:9"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pinned-hello"), "{out}");
    // Where the pin is not installed, the unreachable registry is named.
    std::fs::remove_file(&installed).unwrap();
    let (code, _, err) = build(&dir, None);
    assert_eq!(code, 1);
    assert!(
        err.contains("pins acme/echo@1.0.0 and it is not installed here")
            && err.contains("cannot reach the registry"),
        "{err}"
    );
}

/// `hoist plugin update` moves a pinned package to the newest version every requirement
/// accepts (the project's `requires:` and the one given), stops on one that declares more
/// than what is installed until --yes, re-pins, and leaves everything as it was when it
/// cannot reach the registry.
#[test]
fn an_update_stays_within_requirements_and_reviews_capabilities() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");
    let (code, _, err) = reg.publish(&dir, &token, plugins::TRIVIAL, "acme/echo", "1.0.0");
    assert_eq!(code, 0, "{err}");
    let trivial = sha256(&std::fs::read(plugins::TRIVIAL).unwrap());
    let probe = sha256(&std::fs::read(plugins::PROBE).unwrap());
    let (_p, project) = support::tempdir();
    let yaml = "build:\n  - acme/echo:\n      requires: acme/echo@^1\n      said: hi\n";
    std::fs::write(project.join("prefect.yaml"), yaml).unwrap();
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&project)
        .env("HOIST_REGISTRY", &reg.url)
        .arg("build"));
    assert_eq!(code, 0, "{err}");
    let lock_path = project.join("hoist.lock");
    let pinned = || {
        let lock: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&lock_path).unwrap()).unwrap();
        (
            lock["packages"][0]["version"].as_str().unwrap().to_string(),
            lock["packages"][0]["digest"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(pinned(), ("1.0.0".into(), trivial.clone()));
    let installed = support::home_of(&dir).join("plugins/acme/echo.wasm");
    let update = |args: &[&str]| {
        run(hoist(&dir)
            .current_dir(&project)
            .env_remove("HOIST_REGISTRY")
            .args(["plugin", "update"])
            .args(args))
    };

    let (code, _, err) = update(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("acme/echo@1.0.0 is up to date"), "{err}");

    // 1.0.1 is the same step; 1.2.0 declares more; 2.0.0 is outside the project's ^1.
    for (file, version) in [
        (plugins::TRIVIAL, "1.0.1"),
        (plugins::PROBE, "1.2.0"),
        (plugins::TRIVIAL, "2.0.0"),
    ] {
        let (code, _, err) = reg.publish(&dir, &token, file, "acme/echo", version);
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = update(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("acme/echo@1.2.0 declares more than the installed 1.0.0")
            && err.contains("--yes")
            && err.contains("1 of 1 packages not updated"),
        "{err}"
    );
    assert_eq!(pinned(), ("1.0.0".into(), trivial.clone()));
    assert_eq!(sha256(&std::fs::read(&installed).unwrap()), trivial);

    // A requirement given here narrows the choice further.
    let (code, _, err) = update(&["acme/echo@~1.0"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("updated acme/echo: 1.0.0 -> 1.0.1"), "{err}");
    assert_eq!(pinned(), ("1.0.1".into(), trivial.clone()));

    // Unreachable: named, nothing changed.
    let (code, _, err) = update(&["--yes", "--registry", "http://127.0.0.1:9"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the registry"), "{err}");
    assert_eq!(pinned(), ("1.0.1".into(), trivial.clone()));

    // --yes accepts the new capabilities; ^1 keeps it from 2.0.0.
    let (code, _, err) = update(&["--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("updated acme/echo: 1.0.1 -> 1.2.0"), "{err}");
    assert_eq!(pinned(), ("1.2.0".into(), probe.clone()));
    assert_eq!(sha256(&std::fs::read(&installed).unwrap()), probe);
    let (code, _, err) = update(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("acme/echo@1.2.0 is up to date (newest matching `^1`"),
        "{err}"
    );

    // Outside a project nothing constrains it: the newest, 2.0.0 (which declares less:
    // no review needed).
    let (_e, elsewhere) = support::tempdir();
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&elsewhere)
        .args(["plugin", "update"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("updated acme/echo: 1.2.0 -> 2.0.0"), "{err}");
    assert_eq!(sha256(&std::fs::read(&installed).unwrap()), trivial);
    assert!(!elsewhere.join("hoist.lock").exists());
}

/// The registry client over HTTPS as users meet it: a private CA is trusted only through
/// `SSL_CERT_FILE`; `HTTPS_PROXY` is honoured with a `CONNECT` tunnel (TLS end to end, so
/// the proxy never sees the publisher's token); `NO_PROXY` exempts the host.
#[test]
fn the_registry_client_speaks_https_through_the_environments_proxy() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");
    let tls = support::tls_in_front_of(&dir, reg.port);
    let url = format!("https://localhost:{}", tls.1);
    let ca = dir.join("ca.pem").display().to_string();
    // A real proxy: Debian's tinyproxy, tunnelling only to the registry's port.
    let Some((_proxy, via, log)) = support::tinyproxy(&dir, &format!("ConnectPort {}\n", tls.1))
    else {
        return;
    };
    let (_c, consumer) = support::tempdir();
    let plugin = |home: &Path, args: &[&str], env: &[(&str, &str)]| {
        let mut c = hoist(home);
        c.arg("plugin").args(args).args(["--registry", &url]);
        for k in [
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            c.env_remove(k);
        }
        c.env("HOIST_REGISTRY_TOKEN", &token);
        for (k, v) in env {
            c.env(k, v);
        }
        run(&mut c)
    };
    let installed = support::home_of(&consumer).join("plugins/acme/echo.wasm");

    // Not trusted without the CA: refused before anything is sent.
    let (code, _, err) = plugin(
        &dir,
        &[
            "publish",
            plugins::TRIVIAL,
            "--name",
            "acme/echo",
            "--version",
            "1.0.0",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the registry") && err.contains("certificate"),
        "{err}"
    );
    assert_eq!(reg.blob_count(), 0);

    // Trusted through SSL_CERT_FILE, through the proxy: publish and install.
    let through = [
        ("SSL_CERT_FILE", ca.as_str()),
        ("HTTPS_PROXY", via.as_str()),
    ];
    let (code, _, err) = plugin(
        &dir,
        &[
            "publish",
            plugins::TRIVIAL,
            "--name",
            "acme/echo",
            "--version",
            "1.0.0",
        ],
        &through,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = plugin(&consumer, &["install", "acme/echo@^1"], &through);
    assert_eq!(code, 0, "{err}");
    assert!(installed.is_file());
    let seen = support::proxy_requests(&log);
    let tunnel = format!("CONNECT localhost:{} HTTP/1.1", tls.1);
    assert!(
        !seen.is_empty() && seen.iter().all(|l| *l == tunnel),
        "every request went through one tunnel each: {seen:?}"
    );
    assert!(!std::fs::read_to_string(&log).unwrap().contains(&token));

    // NO_PROXY: straight to the registry.
    std::fs::remove_file(&installed).unwrap();
    let (code, _, err) = plugin(
        &consumer,
        &["install", "acme/echo@^1"],
        &[
            ("SSL_CERT_FILE", ca.as_str()),
            ("HTTPS_PROXY", via.as_str()),
            ("NO_PROXY", "example.com,localhost"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(installed.is_file());
    assert_eq!(
        support::proxy_requests(&log),
        seen,
        "NO_PROXY bypasses the proxy"
    );
}

/// The registry's inspector loads each upload once: `forget` drops it from the runtime's
/// memory (a server that lives for months does not keep every component it described),
/// and a later load maps it from the disk cache instead of compiling it again.
#[tokio::test]
async fn a_described_component_is_not_kept_loaded() {
    use hoist::runtime::{ComponentCache, HostEnv, Loaded, Runtime, RuntimeConfig};
    let (_t, dir) = support::tempdir();
    let runtime = Runtime::new(RuntimeConfig {
        cache: ComponentCache::at(dir.join("cache")).with_key_file(dir.join("key")),
        env: HostEnv::from_process(),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let trivial = std::fs::read(plugins::TRIVIAL).unwrap();
    let first = runtime.load(&trivial, "upload", false).await.unwrap();
    assert_eq!(first.loaded, Loaded::Compiled);
    let same = runtime.load(&trivial, "upload", false).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &same), "kept while loaded");
    runtime.forget(&first.digest);
    let again = runtime.load(&trivial, "upload", false).await.unwrap();
    assert!(!std::sync::Arc::ptr_eq(&first, &again), "forgotten");
    assert_eq!(again.loaded, Loaded::Cached);
}

/// Signed packages: `keygen` makes a key (never overwriting one), `publish --sign`
/// attaches a signature the server checks before storing, and `install
/// --require-signed` (or `HOIST_REQUIRE_SIGNED=1`) installs only what a key the user
/// trusts signed: unsigned, signed by an untrusted key, and a missing key each install
/// or publish nothing; a signature over something else is refused by the server.
#[test]
fn signed_packages_install_only_from_trusted_keys_when_required() {
    let (_t, dir) = support::tempdir();
    let (_c, consumer) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");
    let keygen = |extra: &[&str]| run(hoist(&dir).args(["plugin", "keygen"]).args(extra));
    let (code, out, err) = keygen(&[]);
    assert_eq!(code, 0, "{err}");
    let key_a = out.lines().last().unwrap().trim().to_string();
    assert!(
        key_a.starts_with("ed25519:") && key_a.len() == 8 + 64,
        "{out}"
    );
    let key_file = support::home_of(&dir).join("keys/signing.key");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is readable by others");
    }
    let before = std::fs::read(&key_file).unwrap();
    let (code, _, err) = keygen(&[]);
    assert_eq!(code, 1);
    assert!(err.contains("never overwritten"), "{err}");
    assert_eq!(std::fs::read(&key_file).unwrap(), before);

    let publish = |file: &str, name: &str, version: &str, extra: &[&str]| {
        let mut args = vec!["publish", file, "--name", name, "--version", version];
        args.extend_from_slice(extra);
        reg.plugin(&dir, Some(&token), &args)
    };
    let (code, _, err) = publish(plugins::TRIVIAL, "acme/signed", "1.0.0", &["--sign"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("signed acme/signed@1.0.0 with {key_a}")),
        "{err}"
    );
    let (_, out, _) = reg.plugin(&dir, None, &["info", "acme/signed"]);
    assert!(out.contains(&format!("signed by {key_a}")), "{out}");
    let (code, _, err) = publish(plugins::TRIVIAL, "acme/unsigned", "1.0.0", &[]);
    assert_eq!(code, 0, "{err}");
    // A missing key publishes nothing.
    let (code, _, err) = publish(
        plugins::TRIVIAL,
        "acme/signed",
        "1.0.9",
        &["--sign", "--key", "/nonexistent/key"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read the signing key /nonexistent/key"),
        "{err}"
    );
    let (_, tags) = reg.http("GET", "/v2/acme/signed/tags/list", &[], b"");
    assert!(!tags.contains("1.0.9"), "{tags}");

    let installed = |name: &str| {
        support::home_of(&consumer)
            .join(format!("plugins/acme/{name}.wasm"))
            .exists()
    };
    let install = |args: &[&str], env: Option<&str>| {
        let mut cmd = hoist(&consumer);
        cmd.arg("plugin")
            .arg("install")
            .args(args)
            .args(["--registry", &reg.url]);
        match env {
            Some(v) => cmd.env("HOIST_REQUIRE_SIGNED", v),
            None => cmd.env_remove("HOIST_REQUIRE_SIGNED"),
        };
        run(&mut cmd)
    };
    // Signed, but by a key the consumer does not trust yet.
    let (code, _, err) = install(&["acme/signed", "--require-signed"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("signed only by keys you do not trust: {key_a}"))
            && err.contains("hoist plugin trust"),
        "{err}"
    );
    assert!(!installed("signed"));
    let (code, out, err) = run(hoist(&consumer).args(["plugin", "trust", &key_a]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&key_a), "{out}");
    let (code, _, err) = install(&["acme/signed", "--require-signed"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("is signed by {key_a}, a key you trust")),
        "{err}"
    );
    assert!(installed("signed"));
    // Unsigned, with the policy from the environment.
    let (code, _, err) = install(&["acme/unsigned"], Some("1"));
    assert_eq!(code, 1);
    assert!(err.contains("it is not signed"), "{err}");
    assert!(!installed("unsigned"));
    let (code, _, err) = install(&["acme/unsigned"], None);
    assert_eq!(
        code, 0,
        "without the policy an unsigned package installs: {err}"
    );

    // Signed by a second key the consumer does not trust: the update is refused.
    let other_key = dir.join("other.key");
    let (code, out, err) = keygen(&["--out", other_key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let key_b = out.lines().last().unwrap().trim().to_string();
    let (code, _, err) = publish(
        plugins::PROBE,
        "acme/signed",
        "1.1.0",
        &["--sign", "--key", other_key.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = install(&["acme/signed@1.1.0", "--yes"], Some("1"));
    assert_eq!(code, 1);
    assert!(err.contains(&format!("do not trust: {key_b}")), "{err}");
    let now = std::fs::read(support::home_of(&consumer).join("plugins/acme/signed.wasm")).unwrap();
    assert_eq!(
        sha256(&now),
        sha256(&std::fs::read(plugins::TRIVIAL).unwrap())
    );

    // The server stores only signatures over the version's own component: key A's
    // signature of 1.0.0 sent for 1.1.0 is refused, and so is one without the token.
    let signing = hoist_policy::signature::SigningKey::from_file_text(
        &std::fs::read_to_string(&key_file).unwrap(),
    )
    .unwrap();
    let pkg: hoist_registry::PackageName = "acme/signed".parse().unwrap();
    let trivial = sha256(&std::fs::read(plugins::TRIVIAL).unwrap());
    let moved = signing.sign(&hoist_policy::signature::message(&pkg, "1.0.0", &trivial));
    let body = format!("{{\"public_key\":\"{key_a}\",\"signature\":\"{moved}\"}}");
    let auth = format!("Bearer {token}");
    let (status, answer) = reg.http(
        "POST",
        "/api/v1/packages/acme/signed/1.1.0/signatures",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("is not over acme/signed@1.1.0"), "{answer}");
    let (status, _) = reg.http(
        "POST",
        "/api/v1/packages/acme/signed/1.1.0/signatures",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(status, 401);
    let (_, out, _) = reg.plugin(&dir, None, &["info", "acme/signed"]);
    let line = out
        .lines()
        .find(|l| l.starts_with("acme/signed@1.1.0"))
        .unwrap();
    assert!(!line.contains(&key_a), "{line}");

    // Installed before signatures were required: checked again once they are, pinned
    // or not; a package a trusted key signed (recorded at install) runs offline.
    let url = reg.url.clone();
    let build = |project: &Path, yaml: &str, policy: bool, registry: &str| {
        std::fs::write(project.join("prefect.yaml"), yaml).unwrap();
        let mut cmd = hoist(&consumer);
        cmd.current_dir(project)
            .arg("build")
            .env("HOIST_REGISTRY", registry);
        if policy {
            cmd.env("HOIST_REQUIRE_SIGNED", "1");
        } else {
            cmd.env_remove("HOIST_REQUIRE_SIGNED");
        }
        run(&mut cmd)
    };
    let unsigned =
        "build:\n  - acme/unsigned:\n      requires: acme/unsigned@1\n      said: unsigned-ran\n";
    let signed =
        "build:\n  - acme/signed:\n      requires: acme/signed@=1.0.0\n      said: signed-ran\n";
    let (_p, pinned) = support::tempdir();
    std::fs::write(pinned.join("prefect.yaml"), unsigned).unwrap();
    let (code, _, err) = run(hoist(&consumer).current_dir(&pinned).args([
        "plugin",
        "install",
        "acme/unsigned@1",
        "--registry",
        &url,
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(pinned.join("hoist.lock").is_file());
    let (code, out, err) = build(&pinned, unsigned, true, &url);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("it is not signed"), "{err}");
    assert!(!out.contains("unsigned-ran"), "{out}");
    let (code, out, err) = build(&pinned, unsigned, false, &url);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("unsigned-ran"), "{out}");
    drop(reg);
    let (_q, loose) = support::tempdir();
    let (code, out, err) = build(&loose, unsigned, true, &url);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("cannot reach the registry"), "{err}");
    assert!(!out.contains("unsigned-ran"), "{out}");
    let (code, out, err) = build(&loose, signed, true, &url);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signed-ran"), "{out}");
}

/// Teams outgrow one machine: two `hoist registry serve` replicas on one PostgreSQL
/// database (`--database-url`) and one blob directory. A token made against the
/// database works on both; a version published through one installs through the other;
/// the same version sent to both at once is published once (PostgreSQL's key), and the
/// loser is told so.
#[test]
fn two_replicas_share_postgresql_and_one_blob_store() {
    let Some(pg) = crate::stores::Postgres::start() else {
        return;
    };
    let (_t, dir) = support::tempdir();
    let (_c, consumer) = support::tempdir();
    let shared = ["--database-url", pg.url.as_str()];
    let a = serve(&dir, &shared);
    let b = serve(&dir, &shared);
    assert_eq!(a.data, b.data, "one blob directory");
    let (code, out, err) = run(hoist(&dir)
        .args(["registry", "token", "create", "--namespace", "acme"])
        .args(shared));
    assert_eq!(code, 0, "{err}");
    let token = out.lines().last().unwrap().trim().to_string();
    assert!(
        !a.data.join("registry.db").exists(),
        "the tokens went to PostgreSQL, not SQLite"
    );

    let (code, _, err) = a.publish(&dir, &token, plugins::TRIVIAL, "acme/echo", "1.0.0");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = b.plugin(&consumer, None, &["install", "acme/echo@1.0.0"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(hoist(&consumer).args([
        "step",
        "run",
        "acme/echo",
        "--input",
        "k=through-the-other-replica",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("through-the-other-replica"), "{out}");

    // One version through both replicas at once.
    let outcomes: Vec<(i32, String, String)> = std::thread::scope(|s| {
        let jobs: Vec<_> = [(&a, plugins::TRIVIAL), (&b, plugins::PROBE)]
            .into_iter()
            .map(|(reg, file)| {
                let (dir, token) = (&dir, &token);
                s.spawn(move || reg.publish(dir, token, file, "acme/echo", "2.0.0"))
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let won = outcomes.iter().filter(|(code, ..)| *code == 0).count();
    assert_eq!(won, 1, "{outcomes:?}");
    let lost = outcomes.iter().find(|(code, ..)| *code != 0).unwrap();
    assert!(lost.2.contains("already published"), "{}", lost.2);
    let (_, out, _) = a.plugin(&dir, None, &["info", "acme/echo"]);
    assert_eq!(out.matches("acme/echo@2.0.0").count(), 1, "{out}");
}

/// Headless Chromium (Debian's), or `None` (skipped, unless `HOIST_REQUIRE_CHROMIUM` is
/// set, as `.ci/run` sets it).
fn chromium() -> Option<PathBuf> {
    support::tool(
        "chromium",
        "HOIST_REQUIRE_CHROMIUM",
        "apt-get install chromium",
    )
}

/// `chromium --headless` on `url` with `what` (`--dump-dom`, `--screenshot=...`): stdout.
fn in_chromium(bin: &Path, profile: &Path, what: &str, url: &str) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1100,800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(what)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium {what} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The human pages as a browser renders them: the plugin list, a search, and a plugin's
/// page (install command, what it declares, its inputs as a table); a screenshot of the
/// plugin's page is kept in the target directory (`registry-plugin-page.png`).
#[test]
fn the_registry_pages_render_in_chromium() {
    let Some(bin) = chromium() else { return };
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");
    for (file, name) in [
        (plugins::PROBE, "acme/probe"),
        (plugins::TRIVIAL, "acme/echo"),
        (plugins::FETCHER, "acme/fetcher"),
    ] {
        let (code, _, err) = reg.publish(&dir, &token, file, name, "1.0.0");
        assert_eq!(code, 0, "{err}");
    }
    let profile = dir.join("chromium-profile");
    let dom = in_chromium(&bin, &profile, "--dump-dom", &format!("{}/", reg.url));
    assert!(
        dom.contains("id=\"plugins\"") && dom.contains("acme/probe") && dom.contains("acme/echo"),
        "{dom}"
    );
    let dom = in_chromium(
        &bin,
        &profile,
        "--dump-dom",
        &format!("{}/?q=probe", reg.url),
    );
    assert!(
        dom.contains("acme/probe") && !dom.contains("acme/echo"),
        "{dom}"
    );

    let page = format!("{}/plugins/acme/probe", reg.url);
    let dom = in_chromium(&bin, &profile, "--dump-dom", &page);
    let versions = run(hoist(&dir).args(["plugin", "info", "acme/probe", "--registry", &reg.url]));
    let declares = versions
        .1
        .split("declares ")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    assert!(
        dom.contains("<code id=\"install\">hoist plugin install acme/probe@1.0.0</code>")
            && dom.contains("id=\"inputs\"")
            && dom.contains("id=\"versions\""),
        "{dom}"
    );
    let first_cap = declares.split(", ").next().unwrap();
    assert!(
        !first_cap.is_empty() && dom.contains(first_cap),
        "{declares}\n{dom}"
    );

    // A step with inputs: its schema is a table row per input.
    let page = format!("{}/plugins/acme/fetcher", reg.url);
    let dom = in_chromium(&bin, &profile, "--dump-dom", &page);
    assert!(
        dom.contains("<tr><td><code>url</code></td><td>string</td><td>yes</td>"),
        "{dom}"
    );
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("registry-plugin-page.png");
    let _ = std::fs::remove_file(&shot);
    in_chromium(
        &bin,
        &profile,
        &format!("--screenshot={}", shot.display()),
        &page,
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot of {page}: {}", shot.display());
}

/// Blobs in an S3 bucket (`--blob-store s3://...`, a real SigV4-checking server): a
/// publish lands in the bucket, not on the replica's disk, and installs from there; an
/// object altered in the bucket is refused by the registry and installs nothing; wrong
/// keys are said when the registry starts, and never printed.
#[test]
fn blobs_in_a_bucket_are_checked_both_ways() {
    let Some(s3) = crate::storage::s3() else {
        return;
    };
    let (_t, dir) = support::tempdir();
    let (_c, consumer) = support::tempdir();
    let store = format!("s3://bkt/registry?endpoint={}", s3.endpoint);
    // Wrong keys: refused at start, the secret not shown.
    let (code, out, err) = run(hoist(&dir)
        .args([
            "registry",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--blob-store",
            &store,
        ])
        .env("AWS_ACCESS_KEY_ID", crate::storage::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret-4711"));
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("cannot use the blob store") && err.contains("s3://bkt/registry"),
        "{err}"
    );
    assert!(!err.contains("not-the-secret-4711") && !out.contains("not-the-secret-4711"));

    let port = support::free_port();
    let data = dir.join("registry-data");
    let mut cmd = hoist(&dir);
    cmd.args(["registry", "serve", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data)
        .args(["--blob-store", &store])
        .env("AWS_ACCESS_KEY_ID", crate::storage::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", crate::storage::SECRET_KEY);
    let reg = Registry {
        _server: Server::start(cmd, port, "hoist registry serve"),
        port,
        url: format!("http://127.0.0.1:{port}"),
        data,
    };
    let token = reg.token(&dir, "acme");
    let (code, _, err) = reg.publish(&dir, &token, plugins::TRIVIAL, "acme/echo", "1.0.0");
    assert_eq!(code, 0, "{err}");
    let wasm = std::fs::read(plugins::TRIVIAL).unwrap();
    let object = s3
        .root
        .join("bkt/registry/sha256")
        .join(&sha256(&wasm)[7..]);
    assert_eq!(
        std::fs::read(&object).unwrap(),
        wasm,
        "the component is in the bucket"
    );
    assert_eq!(reg.blob_count(), 0, "and not on the replica's disk");
    let (code, _, err) = reg.plugin(&consumer, None, &["install", "acme/echo@1.0.0"]);
    assert_eq!(code, 0, "{err}");

    // Altered in the bucket: the registry refuses to serve it; nothing installs.
    let mut altered = wasm.clone();
    let n = altered.len();
    altered[n - 1] ^= 1;
    std::fs::write(&object, &altered).unwrap();
    let (status, body) = reg.http(
        "GET",
        &format!("/v2/acme/echo/blobs/{}", sha256(&wasm)),
        &[],
        b"",
    );
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("the bucket was altered"), "{body}");
    let (_f, fresh) = support::tempdir();
    let (code, _, err) = reg.plugin(&fresh, None, &["install", "acme/echo@1.0.0"]);
    assert_eq!(code, 1);
    assert!(err.contains("the bucket was altered"), "{err}");
    assert!(
        !support::home_of(&fresh)
            .join("plugins/acme/echo.wasm")
            .exists()
    );
}

/// Debian's Distribution (`docker-registry`) on loopback, or `None` (skipped unless
/// `HOIST_REQUIRE_DOCKER`, which `.ci/run` sets with the package installed).
fn distribution(dir: &Path) -> Option<(Server, u16, PathBuf)> {
    let bin = support::tool(
        "docker-registry",
        "HOIST_REQUIRE_DOCKER",
        "apt-get install docker-registry",
    )?;
    let port = support::free_port();
    let storage = dir.join("distribution");
    let config = dir.join("distribution.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
            storage.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("serve").arg(&config);
    Some((Server::start(cmd, port, "docker-registry"), port, storage))
}

/// A team's own OCI registry (Debian's Distribution): `publish --oci` pushes the Wasm
/// artifact, `install oci://` installs it (and pins `oci://HOST` in hoist.lock, from which
/// another machine installs it again); a manifest that is not a Wasm component and a blob
/// altered in the registry's storage install nothing.
#[test]
fn packages_move_through_a_plain_oci_registry() {
    let (_t, dir) = support::tempdir();
    let Some((_registry, port, storage)) = distribution(&dir) else {
        return;
    };
    let reference = format!("oci://127.0.0.1:{port}/acme/echo:1.0.0");
    let (code, out, err) = run(hoist(&dir)
        .args(["plugin", "publish", plugins::TRIVIAL, "--oci", &reference])
        .env_remove("HOIST_REGISTRY_TOKEN"));
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().starts_with("sha256:"), "{out}");
    let ((status, tags), _) = raw_http(port, "GET", "/v2/acme/echo/tags/list", &[], b"");
    assert_eq!((status, tags.contains("1.0.0")), (200, true), "{tags}");

    // Installed next to a project: pinned as oci://HOST, and the step runs by name.
    let (_p, project) = support::tempdir();
    std::fs::write(
        project.join("prefect.yaml"),
        "build:\n  - acme/echo:\n      said: from-distribution\n",
    )
    .unwrap();
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&project)
        .args(["plugin", "install", &reference]));
    assert_eq!(code, 0, "{err}");
    let lock = std::fs::read_to_string(project.join("hoist.lock")).unwrap();
    assert!(
        lock.contains(&format!("\"registry\": \"oci://127.0.0.1:{port}\"")),
        "{lock}"
    );
    let (code, out, err) = run(hoist(&dir).current_dir(&project).arg("build"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from-distribution"), "{out}");
    let (_o, other) = support::tempdir();
    let (code, _, err) = run(hoist(&other)
        .current_dir(&project)
        .args(["plugin", "install"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        support::home_of(&other)
            .join("plugins/acme/echo.wasm")
            .is_file()
    );

    // Update through the registry's tags: `latest` (set by another tool) is not a
    // version and is never chosen.
    let (code, _, err) = run(hoist(&dir).args([
        "plugin",
        "publish",
        plugins::TRIVIAL,
        "--oci",
        &format!("oci://127.0.0.1:{port}/acme/echo:1.1.0"),
    ]));
    assert_eq!(code, 0, "{err}");
    let ((status, manifest), _) = raw_http(
        port,
        "GET",
        "/v2/acme/echo/manifests/1.1.0",
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        b"",
    );
    assert_eq!(status, 200, "{manifest}");
    let ((status, body), _) = raw_http(
        port,
        "PUT",
        "/v2/acme/echo/manifests/latest",
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        manifest.as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    let (code, _, err) = run(hoist(&dir).current_dir(&project).args(["plugin", "update"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("updated acme/echo: 1.0.0 -> 1.1.0"), "{err}");
    let lock = std::fs::read_to_string(project.join("hoist.lock")).unwrap();
    assert!(lock.contains("\"version\": \"1.1.0\""), "{lock}");

    // Not a Wasm component artifact (an image's config): refused, nothing installed.
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}";
    let ((status, _), head) = raw_http(port, "POST", "/v2/acme/image/blobs/uploads/", &[], b"");
    assert_eq!(status, 202, "{head}");
    let location = header(&head, "location").unwrap().to_string();
    let path = location
        .split_once("127.0.0.1")
        .map_or(location.as_str(), |(_, p)| {
            p.split_once('/').map_or(p, |(_, rest)| rest)
        });
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let ((status, body), _) = raw_http(
        port,
        "PUT",
        &format!("{path}{sep}digest={}", sha256(config)),
        &[],
        config,
    );
    assert_eq!(status, 201, "{body}");
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{}\",\"size\":{}}},\"layers\":[]}}",
        sha256(config),
        config.len()
    );
    let ((status, body), _) = raw_http(
        port,
        "PUT",
        "/v2/acme/image/manifests/1.0.0",
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        manifest.as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    let (_f, fresh) = support::tempdir();
    let (code, _, err) = run(hoist(&fresh).args([
        "plugin",
        "install",
        &format!("oci://127.0.0.1:{port}/acme/image:1.0.0"),
    ]));
    assert_eq!(code, 1);
    assert!(err.contains("is not a Wasm component artifact"), "{err}");
    assert!(
        !support::home_of(&fresh)
            .join("plugins/acme/image.wasm")
            .exists()
    );

    // The component's blob altered in the registry's storage: the digest catches it.
    let hex = &sha256(&std::fs::read(plugins::TRIVIAL).unwrap())[7..];
    let data = storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&data, &bytes).unwrap();
    let (code, _, err) = run(hoist(&fresh).args(["plugin", "install", &reference]));
    assert_eq!(code, 1);
    assert!(err.contains("is not what its digest says"), "{err}");
    assert!(
        !support::home_of(&fresh)
            .join("plugins/acme/echo.wasm")
            .exists()
    );
}

/// `wkg oci ARGS` with nothing from this machine's credentials or configuration.
fn wkg(bin: &Path, home: &Path, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(bin);
    c.args(["oci"])
        .args(args)
        .env("HOME", home)
        .env("RUST_BACKTRACE", "0")
        .env_remove("WKG_OCI_USERNAME")
        .env_remove("WKG_OCI_PASSWORD")
        .env_remove("DOCKER_CONFIG");
    run(&mut c)
}

/// The Bytecode Alliance's `wkg` and `skopeo`, real OCI clients, move Hoist packages
/// both ways: `wkg` pushes into `hoist registry serve` only with the namespace's token
/// (as the password), the registry describes what it pushed, and `hoist` installs and
/// runs it; `wkg` pulls what `hoist plugin publish` published, byte for byte; `skopeo`
/// copies a package from `hoist registry serve` to Debian's Distribution, where
/// `hoist plugin install oci://` finds the same component.
#[test]
fn real_oci_clients_move_packages_both_ways() {
    let (Some(wkg_bin), Some(skopeo)) = (
        support::tool(
            "wkg",
            "HOIST_REQUIRE_OCI_CLIENTS",
            "cargo install wkg --version 0.16.1 --locked",
        ),
        support::tool(
            "skopeo",
            "HOIST_REQUIRE_OCI_CLIENTS",
            "apt-get install skopeo",
        ),
    ) else {
        return;
    };
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");
    let other = reg.token(&dir, "other");
    let host = format!("127.0.0.1:{}", reg.port);
    let echo = format!("{host}/acme/echo:1.0.0");

    // No credentials, or another namespace's token: refused, nothing visible.
    let (code, _, err) = wkg(
        &wkg_bin,
        &dir,
        &["push", "--insecure", &host, &echo, plugins::TRIVIAL],
    );
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = wkg(
        &wkg_bin,
        &dir,
        &[
            "push",
            "-u",
            "hoist",
            "-p",
            &other,
            "--insecure",
            &host,
            &echo,
            plugins::TRIVIAL,
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("403") || err.contains("401"), "{err}");
    assert!(!err.contains(&other), "the token is echoed: {err}");
    let (status, _) = reg.http("GET", "/v2/acme/echo/tags/list", &[], b"");
    assert_eq!(status, 404);
    assert_eq!(reg.blob_count(), 0);

    // With the token: pushed, described by the registry, installed and run by hoist.
    let (code, out, err) = wkg(
        &wkg_bin,
        &dir,
        &[
            "push",
            "-u",
            "hoist",
            "-p",
            &token,
            "--insecure",
            &host,
            &echo,
            plugins::TRIVIAL,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (status, body) = reg.http("GET", "/api/v1/packages/acme/echo", &[], b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"step_name\":\"trivial\""), "{body}");
    let (_c, consumer) = support::tempdir();
    let (code, _, err) = reg.plugin(&consumer, None, &["install", "acme/echo@^1"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(hoist(&consumer).current_dir(&consumer).args([
        "step",
        "run",
        "acme/echo",
        "--input",
        "k=pushed-by-wkg",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pushed-by-wkg"), "{out}");

    // hoist publishes, wkg pulls the same bytes.
    let (code, _, err) = reg.publish(&dir, &token, plugins::PROBE, "acme/probe", "1.0.0");
    assert_eq!(code, 0, "{err}");
    let pulled = dir.join("pulled.wasm");
    let (code, out, err) = wkg(
        &wkg_bin,
        &dir,
        &[
            "pull",
            "--insecure",
            &host,
            &format!("{host}/acme/probe:1.0.0"),
            "-o",
            pulled.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let probe = std::fs::read(plugins::PROBE).unwrap();
    assert_eq!(sha256(&std::fs::read(&pulled).unwrap()), sha256(&probe));

    // skopeo moves it to the team's own OCI registry; hoist installs it from there.
    let Some((_distribution, port, _)) = distribution(&dir) else {
        return;
    };
    let (code, out, err) = run(Command::new(&skopeo).args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{host}/acme/probe:1.0.0"),
        &format!("docker://127.0.0.1:{port}/acme/probe:1.0.0"),
    ]));
    assert_eq!(code, 0, "{out}{err}");
    let (_f, fresh) = support::tempdir();
    let (code, _, err) = run(hoist(&fresh).args([
        "plugin",
        "install",
        &format!("oci://127.0.0.1:{port}/acme/probe:1.0.0"),
    ]));
    assert_eq!(code, 0, "{err}");
    let installed = support::home_of(&fresh).join("plugins/acme/probe.wasm");
    assert_eq!(sha256(&std::fs::read(installed).unwrap()), sha256(&probe));

    // And wkg with Distribution, both ways: what skopeo copied pulls byte for byte; what
    // wkg pushes there hoist installs.
    let there = format!("127.0.0.1:{port}");
    let again = dir.join("again.wasm");
    let (code, out, err) = wkg(
        &wkg_bin,
        &dir,
        &[
            "pull",
            "--insecure",
            &there,
            &format!("{there}/acme/probe:1.0.0"),
            "-o",
            again.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(sha256(&std::fs::read(&again).unwrap()), sha256(&probe));
    let (code, out, err) = wkg(
        &wkg_bin,
        &dir,
        &[
            "push",
            "--insecure",
            &there,
            &format!("{there}/acme/wecho:1.0.0"),
            plugins::TRIVIAL,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(hoist(&fresh).args([
        "plugin",
        "install",
        &format!("oci://{there}/acme/wecho:1.0.0"),
    ]));
    assert_eq!(code, 0, "{err}");
    let installed = support::home_of(&fresh).join("plugins/acme/wecho.wasm");
    assert_eq!(
        sha256(&std::fs::read(installed).unwrap()),
        sha256(&std::fs::read(plugins::TRIVIAL).unwrap())
    );
}

/// A loopback HTTP server that answers every request with `answer(head)` and keeps each
/// request's head (request line and headers): a hostile registry's side of the wire.
fn recording_server(
    answer: impl Fn(&str) -> String + Send + 'static,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                buf.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&buf).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = s.read_exact(&mut body);
            let reply = answer(&head);
            kept.lock().unwrap().push(head);
            let _ = s.write_all(reply.as_bytes());
        }
    });
    (port, heads)
}

/// Hostile: an OCI registry that sends the upload to another origin (its Location
/// names another host). The blobs may go there, but the publisher's token goes only to
/// the registry it was given for: the other side never sees it.
#[test]
fn a_registry_cannot_send_the_token_elsewhere() {
    let (_t, dir) = support::tempdir();
    let ok = |status: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let (elsewhere, seen_elsewhere) = recording_server(move |_| ok("201 Created"));
    let (registry, seen_registry) = recording_server(move |head| {
        if head.starts_with("POST ") {
            format!(
                "HTTP/1.1 202 Accepted\r\nLocation: http://127.0.0.1:{elsewhere}/upload\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        } else {
            ok("201 Created")
        }
    });
    let canary = "hoist_canary-token-7f3a";
    let (code, _, err) = run(hoist(&dir)
        .args(["plugin", "publish", plugins::TRIVIAL, "--oci"])
        .arg(format!("oci://127.0.0.1:{registry}/acme/echo:1.0.0"))
        .env("HOIST_REGISTRY_TOKEN", canary));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains(canary), "{err}");
    let elsewhere = seen_elsewhere.lock().unwrap().clone();
    assert_eq!(
        elsewhere.len(),
        2,
        "both blobs went to the Location: {elsewhere:?}"
    );
    assert!(
        elsewhere
            .iter()
            .all(|h| !h.contains(canary) && !h.to_ascii_lowercase().contains("authorization")),
        "{elsewhere:?}"
    );
    let at_registry = seen_registry.lock().unwrap().clone();
    assert!(
        at_registry
            .iter()
            .all(|h| h.contains(&format!("Bearer {canary}"))),
        "the registry itself gets the token: {at_registry:?}"
    );
}

/// A registry is someone else's server: what it says reaches the terminal only as
/// printable text (`plugin search` and `plugin info` show no escape sequence that could
/// retitle the terminal, clear it or forge a line), and a version record of another
/// package than the one asked for is refused. The registry here is a stand-in: Python's
/// `http.server` serving hostile JSON files (no real registry sends these).
#[test]
fn registry_text_reaches_the_terminal_printable() {
    let (_t, dir) = support::tempdir();
    let root = dir.join("www");
    let api = root.join("api/v1/packages");
    std::fs::create_dir_all(api.join("acme")).unwrap();
    let record = |package: &str| {
        serde_json::json!({
            "package": package, "version": "1.0.0",
            "manifest_digest": format!("sha256:{}", "a".repeat(64)),
            "component_digest": format!("sha256:{}", "b".repeat(64)),
            "size": 1, "step_name": "x\u{1b}]0;pwned\u{7}",
            "summary": "fine\r\u{1b}[2K\u{1b}[32m✓ verified by hoist\u{1b}[0m\n\u{9b}31m",
            "input_schema": {}, "capabilities": ["net:*\u{1b}[8m"],
            "wit_version": "0.1.0", "yanked": false, "published": "2026-01-01T00:00:00Z",
        })
    };
    // `GET /api/v1/packages?q=` is the directory's index (http.server ignores the query).
    std::fs::write(
        api.join("index.html"),
        serde_json::json!({"packages": [record("acme/x\u{1b}[2J")]}).to_string(),
    )
    .unwrap();
    std::fs::write(
        api.join("acme/x"),
        serde_json::json!({"versions": [record("acme/x")]}).to_string(),
    )
    .unwrap();
    std::fs::write(
        api.join("acme/y"),
        serde_json::json!({"versions": [record("evil/other")]}).to_string(),
    )
    .unwrap();
    let server = support::http_server(&root);
    let url = format!("http://127.0.0.1:{}", server.1);
    let raw = |s: &str| {
        s.chars()
            .any(|c| c.is_control() && c != '\n' || c == '\u{9b}')
    };
    for args in [["search", "x"], ["info", "acme/x"]] {
        let (code, out, err) = run(hoist(&dir)
            .args(["plugin"])
            .args(args)
            .args(["--registry", &url]));
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("verified by hoist"), "{args:?}: {out}");
        assert!(
            !raw(&out) && !raw(&err),
            "{args:?} printed raw control text: {out:?} {err:?}"
        );
        assert_eq!(
            out.lines().count(),
            1,
            "{args:?}: one record, one line: {out:?}"
        );
    }
    let (code, out, err) = run(hoist(&dir).args(["plugin", "info", "acme/y", "--registry", &url]));
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("evil/other") && err.contains("acme/y"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}

/// A registry's answers are bounded by what Hoist could ever use, never by what the
/// server claims: a component whose record says 1 byte and whose `Content-Length` says
/// 1 TiB (a sparse file behind a stand-in registry, Python's `http.server`) is refused
/// before its body is read, one whose record says 200 MiB before it is asked for, one
/// that comes shorter than its record is tampered with; nothing is installed; a package listing
/// over 4 MiB is refused likewise.
#[test]
fn downloads_are_bounded_by_what_can_run_not_by_what_the_server_claims() {
    let (_t, dir) = support::tempdir();
    let root = dir.join("www");
    std::fs::create_dir_all(root.join("api/v1/packages/acme")).unwrap();
    for (name, size, served) in [
        ("big", 1u64, 1u64 << 40),
        ("huger", 200 << 20, 16),
        ("short", 4096, 100),
    ] {
        let digest = format!("sha256:{}", name.len().to_string().repeat(64));
        std::fs::create_dir_all(root.join(format!("v2/acme/{name}/blobs"))).unwrap();
        let record = serde_json::json!({
            "package": format!("acme/{name}"), "version": "1.0.0",
            "manifest_digest": format!("sha256:{}", "a".repeat(64)),
            "component_digest": digest, "size": size, "step_name": name, "summary": name,
            "input_schema": {}, "capabilities": [], "wit_version": "0.1.0",
            "yanked": false, "published": "2026-01-01T00:00:00Z",
        });
        std::fs::write(
            root.join(format!("api/v1/packages/acme/{name}")),
            serde_json::json!({"versions": [record]}).to_string(),
        )
        .unwrap();
        let blob = std::fs::File::create(root.join(format!("v2/acme/{name}/blobs")).join(&digest))
            .unwrap();
        blob.set_len(served).unwrap();
    }
    // A listing of 5 MiB.
    let huge = std::fs::File::create(root.join("api/v1/packages/acme/huge")).unwrap();
    huge.set_len(5 << 20).unwrap();
    let server = support::http_server(&root);
    let url = format!("http://127.0.0.1:{}", server.1);
    for (name, says) in [
        (
            "big",
            "a component of 1099511627776 bytes or more is over the 1 bytes its record gives",
        ),
        (
            "huger",
            "is 209715200 bytes by its record, over the 64 MiB Hoist accepts; nothing was downloaded",
        ),
        ("short", "is not what its digest says"),
    ] {
        let pkg = format!("acme/{name}");
        let (code, out, err) =
            run(hoist(&dir).args(["plugin", "install", &pkg, "--yes", "--registry", &url]));
        assert_ne!(code, 0, "{out}");
        assert!(err.contains(says), "{name}: {err}");
        let (_, ls, _) = run(hoist(&dir).args(["plugin", "ls"]));
        assert!(!ls.contains(&pkg), "{ls}");
    }
    let (code, _, err) = run(hoist(&dir).args(["plugin", "info", "acme/huge", "--registry", &url]));
    assert_ne!(code, 0);
    assert!(err.contains("over the 4 MiB"), "{err}");
}

// --- Hostile writers: what a request without the right token, or with a body too
// large, can make the server do (nothing), and what an upload leaves behind (nothing).

impl Registry {
    /// Every file under the registry's upload directory, with its length.
    fn uploads(&self) -> Vec<(PathBuf, u64)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push((e.path(), meta.len()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data.join("blobs/uploads"), &mut out);
        out
    }

    /// Open an upload session in `repo` holding `bytes` (with `auth`): its Location.
    fn open_upload(&self, repo: &str, auth: &str, bytes: &[u8]) -> String {
        let h = [("Authorization", auth)];
        let ((status, body), head) = raw_http(
            self.port,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &h,
            b"",
        );
        assert_eq!(status, 202, "{body}");
        let location = header(&head, "location").unwrap().to_string();
        assert!(location.starts_with(&format!("/v2/{repo}/blobs/uploads/")));
        let (status, body) = self.http("PATCH", &location, &h, bytes);
        assert_eq!(status, 202, "{body}");
        location
    }
}

/// Raw HTTP/1.1 whose body is sent while the answer is read, tolerating a server that
/// answers (and closes) before reading it all, as it should when it refuses a body
/// from its headers; `chunked` sends it with `Transfer-Encoding: chunked` (no length
/// to judge it by). (status, body).
fn send_body(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    chunked: bool,
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{framing}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut r = s.try_clone().unwrap();
    r.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    for piece in body.chunks(64 << 10) {
        let sent = if chunked {
            s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .and_then(|()| s.write_all(piece))
                .and_then(|()| s.write_all(b"\r\n"))
        } else {
            s.write_all(piece)
        };
        if sent.is_err() {
            break;
        }
    }
    if chunked {
        let _ = s.write_all(b"0\r\n\r\n");
    }
    let text = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A line of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Hostile: a client without a token cannot make the server read its body. Eight
/// 60 MiB requests at once (upload POSTs, monolithic and not, a PATCH and a PUT on a
/// real session, a manifest, a signature, a yank), each answered 401 from its headers:
/// the server's peak resident memory (VmHWM, reset first) grows by less than 64 MiB,
/// and the upload directory holds nothing but the session it held before.
#[test]
fn unauthenticated_bodies_are_refused_unread() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");
    let location = reg.open_upload("acme/x", &format!("Bearer {token}"), b"");
    let pid = reg._server.0.id();
    let digest = sha256(b"x");
    let routes = [
        ("POST", "/v2/acme/x/blobs/uploads/".to_string()),
        ("POST", format!("/v2/acme/x/blobs/uploads/?digest={digest}")),
        ("POST", "/v2/acme/y/blobs/uploads".to_string()),
        ("PATCH", location.clone()),
        ("PUT", format!("{location}?digest={digest}")),
        ("PUT", "/v2/acme/x/manifests/1.0.0".to_string()),
        (
            "POST",
            "/api/v1/packages/acme/x/1.0.0/signatures".to_string(),
        ),
        ("POST", "/api/v1/packages/acme/x/1.0.0/yank".to_string()),
    ];
    let body: &'static [u8] = Box::leak(vec![0u8; 60 << 20].into_boxed_slice());
    // The peak from here on: reset to what is resident now (proc(5), clear_refs 5).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = proc_status_kib(pid, "VmRSS");
    let answers: Vec<(String, u16, String)> = std::thread::scope(|s| {
        let jobs: Vec<_> = routes
            .iter()
            .map(|(method, path)| {
                let port = reg.port;
                s.spawn(move || {
                    let (status, answer) = send_body(port, method, path, &[], body, false);
                    (format!("{method} {path}"), status, answer)
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for (route, status, answer) in &answers {
        assert_eq!(*status, 401, "{route}: {answer}");
    }
    let peak = proc_status_kib(pid, "VmHWM");
    assert!(
        peak.saturating_sub(before) < 64 << 10,
        "the server's resident memory went from {before} KiB to a peak of {peak} KiB"
    );
    let uploads = reg.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].1, 0, "a refused body reached the session");
    assert_eq!(reg.blob_count(), 0);
}

/// Every write route (yank, unyank, upload POST, PATCH, PUT, DELETE, manifest PUT,
/// signature) is refused without a token (401) and with another namespace's (403),
/// and leaves everything as it was: the versions, their yanks and signatures, the
/// blobs, the one upload session and its bytes. The same requests with the
/// namespace's own token do what they say (the refusals were the token's doing).
#[test]
fn every_write_route_needs_the_namespaces_token() {
    use hoist_policy::signature::{SigningKey, message};
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let acme = reg.token(&dir, "acme");
    let other = reg.token(&dir, "other");
    for version in ["1.0.0", "1.1.0"] {
        let (code, _, err) = reg.publish(&dir, &acme, plugins::TRIVIAL, "acme/echo", version);
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = reg.plugin(&dir, Some(&acme), &["yank", "acme/echo@1.1.0"]);
    assert_eq!(code, 0, "{err}");
    let good = format!("Bearer {acme}");
    let location = reg.open_upload("acme/echo", &good, b"abc");

    let wasm = std::fs::read(plugins::TRIVIAL).unwrap();
    let config = hoist_registry::oci::wasm_config(&sha256(&wasm));
    let manifest = serde_json::to_vec(&hoist_registry::oci::package_manifest(
        &config, &wasm, "2.0.0", "",
    ))
    .unwrap();
    let key = SigningKey::generate().unwrap();
    let pkg: hoist_registry::PackageName = "acme/echo".parse().unwrap();
    let signature = serde_json::json!({
        "public_key": key.public().to_string(),
        "signature": key.sign(&message(&pkg, "1.0.0", &sha256(&wasm))),
    })
    .to_string();
    let blob = b"a blob nobody may store".to_vec();
    let writes: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "POST",
            "/api/v1/packages/acme/echo/1.0.0/yank".into(),
            vec![],
        ),
        (
            "POST",
            "/api/v1/packages/acme/echo/1.1.0/unyank".into(),
            vec![],
        ),
        ("POST", "/v2/acme/echo/blobs/uploads/".into(), vec![]),
        (
            "POST",
            format!("/v2/acme/echo/blobs/uploads/?digest={}", sha256(&blob)),
            blob.clone(),
        ),
        ("PATCH", location.clone(), b"def".to_vec()),
        (
            "PUT",
            // Right once the PATCH above has added its bytes (as it does with the token).
            format!("{location}?digest={}", sha256(b"abcdefdef")),
            b"def".to_vec(),
        ),
        ("DELETE", location.clone(), vec![]),
        ("PUT", "/v2/acme/echo/manifests/2.0.0".into(), manifest),
        (
            "POST",
            "/api/v1/packages/acme/echo/1.0.0/signatures".into(),
            signature.into_bytes(),
        ),
    ];
    let (_, listed) = reg.http("GET", "/api/v1/packages/acme/echo", &[], b"");
    assert!(
        listed.contains("\"yanked\":true") && listed.contains("\"yanked\":false"),
        "{listed}"
    );
    let blobs = reg.blob_count();
    let foreign = format!("Bearer {other}");
    for (method, path, body) in &writes {
        let (status, answer) = reg.http(method, path, &[], body);
        assert_eq!(status, 401, "{method} {path} without a token: {answer}");
        assert!(answer.contains("needs a token"), "{answer}");
        let (status, answer) = reg.http(method, path, &[("Authorization", &foreign)], body);
        assert_eq!(status, 403, "{method} {path} with other's token: {answer}");
        assert!(
            answer.contains("publishes into `other`, not into `acme`"),
            "{answer}"
        );
    }
    let (_, after) = reg.http("GET", "/api/v1/packages/acme/echo", &[], b"");
    assert_eq!(after, listed, "a refused write changed the package");
    assert_eq!(reg.blob_count(), blobs, "a refused write stored a blob");
    let uploads = reg.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].1, 3, "a refused write changed the session");

    // With the token, in an order where each applies: all accepted.
    let expected = [200, 200, 202, 201, 202, 201, 404, 201, 201];
    let h = [("Authorization", good.as_str())];
    for ((method, path, body), want) in writes.iter().zip(expected) {
        let (status, answer) = reg.http(method, path, &h, body);
        assert_eq!(status, want, "{method} {path} with the token: {answer}");
    }
    let (_, now) = reg.http("GET", "/api/v1/packages/acme/echo", &[], b"");
    assert!(
        now.contains("\"version\":\"2.0.0\"") && now.contains(&key.public().to_string()),
        "{now}"
    );
}

/// An upload session belongs to the repository that opened it: continued, finished or
/// cancelled through another namespace's repository (with that namespace's token) or
/// another repository of its own namespace, it is unknown (404), and stays as it was;
/// its own repository then finishes it, and only that repository serves the blob.
#[test]
fn an_upload_session_belongs_to_the_repository_that_opened_it() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let acme = format!("Bearer {}", reg.token(&dir, "acme"));
    let other = format!("Bearer {}", reg.token(&dir, "other"));
    let location = reg.open_upload("acme/a", &acme, b"abc");
    let id = location.rsplit('/').next().unwrap().to_string();
    let digest = sha256(b"abcdef");
    for (auth, repo) in [(&other, "other/x"), (&acme, "acme/b")] {
        let h = [("Authorization", auth.as_str())];
        let at = format!("/v2/{repo}/blobs/uploads/{id}");
        for (method, path, body) in [
            ("PATCH", at.clone(), &b"def"[..]),
            ("PUT", format!("{at}?digest={digest}"), b"def"),
            ("DELETE", at.clone(), b""),
        ] {
            let (status, answer) = reg.http(method, &path, &h, body);
            assert_eq!(status, 404, "{method} {path}: {answer}");
            assert!(answer.contains("BLOB_UPLOAD_UNKNOWN"), "{answer}");
        }
    }
    let uploads = reg.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].1, 3, "another repository changed the session");

    let h = [("Authorization", acme.as_str())];
    let (status, answer) = reg.http("PUT", &format!("{location}?digest={digest}"), &h, b"def");
    assert_eq!(status, 201, "{answer}");
    let (status, bytes) = reg.http("GET", &format!("/v2/acme/a/blobs/{digest}"), &[], b"");
    assert_eq!((status, bytes.as_str()), (200, "abcdef"));
    for repo in ["other/x", "acme/b"] {
        let (status, _) = reg.http("GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"");
        assert_eq!(status, 404, "{repo} serves acme/a's blob");
    }
    assert!(reg.uploads().is_empty());
}

/// A blob belongs to the repositories it was uploaded to: a manifest in another
/// repository (another namespace's, or the same namespace's) that names it is refused,
/// and that repository does not serve it (404), though the uploader's does. Uploaded
/// there too, it publishes, and its bytes are stored once.
#[test]
fn a_repository_serves_and_names_only_its_own_blobs() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let acme = format!("Bearer {}", reg.token(&dir, "acme"));
    let other = format!("Bearer {}", reg.token(&dir, "other"));
    let wasm = std::fs::read(plugins::TRIVIAL).unwrap();
    let config = hoist_registry::oci::wasm_config(&sha256(&wasm));
    let manifest = serde_json::to_vec(&hoist_registry::oci::package_manifest(
        &config, &wasm, "1.0.0", "",
    ))
    .unwrap();
    reg.put_blobs("acme/a", &[("Authorization", &acme)], &[&wasm, &config]);
    let stored = reg.blob_count();
    let blob = |repo: &str| {
        reg.http(
            "GET",
            &format!("/v2/{repo}/blobs/{}", sha256(&wasm)),
            &[],
            b"",
        )
    };
    for (auth, repo) in [(&other, "other/b"), (&acme, "acme/c")] {
        let h = [("Authorization", auth.as_str())];
        let (status, answer) =
            reg.http("PUT", &format!("/v2/{repo}/manifests/1.0.0"), &h, &manifest);
        assert_eq!(status, 400, "{repo}: {answer}");
        assert!(
            answer.contains("MANIFEST_BLOB_UNKNOWN")
                && answer.contains(&format!("was not uploaded to {repo}")),
            "{answer}"
        );
        let (status, answer) = blob(repo);
        assert_eq!(status, 404, "{repo} serves acme/a's blob: {answer}");
        let (status, _) = reg.http("GET", &format!("/api/v1/packages/{repo}"), &[], b"");
        assert_eq!(status, 404);
    }
    let (status, _) = blob("acme/a");
    assert_eq!(status, 200, "the uploader's repository serves it");

    let h = [("Authorization", other.as_str())];
    reg.put_blobs("other/b", &h, &[&wasm, &config]);
    let (status, answer) = reg.http("PUT", "/v2/other/b/manifests/1.0.0", &h, &manifest);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(reg.blob_count(), stored, "the same bytes were stored twice");
}

/// Bodies are read only up to their route's limit: a manifest over 4 MiB (a real one,
/// padded with an annotation) is refused 413 and nothing is published; a signature or
/// a yank body over 64 KiB likewise, and nothing is signed or yanked. Under the limits
/// the same requests are accepted.
#[test]
fn oversized_manifests_signatures_and_yanks_are_refused() {
    use hoist_policy::signature::{SigningKey, message};
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let auth = format!("Bearer {}", reg.token(&dir, "acme"));
    let h = [("Authorization", auth.as_str())];
    let wasm = std::fs::read(plugins::TRIVIAL).unwrap();
    let config = hoist_registry::oci::wasm_config(&sha256(&wasm));
    reg.put_blobs("acme/echo", &h, &[&wasm, &config]);
    let mut manifest = hoist_registry::oci::package_manifest(&config, &wasm, "1.0.0", "");
    manifest
        .annotations
        .insert("padding".into(), "x".repeat(5 << 20));
    let big = serde_json::to_vec(&manifest).unwrap();
    let (status, answer) = send_body(
        reg.port,
        "PUT",
        "/v2/acme/echo/manifests/1.0.0",
        &h,
        &big,
        false,
    );
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("SIZE_INVALID"), "{answer}");
    let (status, _) = send_body(
        reg.port,
        "PUT",
        "/v2/acme/echo/manifests/1.0.0",
        &h,
        &big,
        true,
    );
    assert_eq!(status, 413, "a chunked manifest is counted as it arrives");
    let (status, _) = reg.http("GET", "/v2/acme/echo/manifests/1.0.0", &[], b"");
    assert_eq!(status, 404);
    manifest.annotations.remove("padding");
    let small = serde_json::to_vec(&manifest).unwrap();
    let (status, answer) = reg.http("PUT", "/v2/acme/echo/manifests/1.0.0", &h, &small);
    assert_eq!(status, 201, "{answer}");

    let key = SigningKey::generate().unwrap();
    let pkg: hoist_registry::PackageName = "acme/echo".parse().unwrap();
    let signature = serde_json::json!({
        "public_key": key.public().to_string(),
        "signature": key.sign(&message(&pkg, "1.0.0", &sha256(&wasm))),
    })
    .to_string();
    let padded = format!("{signature}{}", " ".repeat(70 << 10));
    let sign = "/api/v1/packages/acme/echo/1.0.0/signatures";
    let (status, answer) = send_body(reg.port, "POST", sign, &h, padded.as_bytes(), false);
    assert_eq!(status, 413, "{answer}");
    let (status, _) = send_body(reg.port, "POST", sign, &h, padded.as_bytes(), true);
    assert_eq!(status, 413);
    let yank = "/api/v1/packages/acme/echo/1.0.0/yank";
    let (status, _) = send_body(reg.port, "POST", yank, &h, &vec![b' '; 70 << 10], false);
    assert_eq!(status, 413);
    let (_, listed) = reg.http("GET", "/api/v1/packages/acme/echo", &[], b"");
    assert!(
        listed.contains("\"yanked\":false") && listed.contains("\"signatures\":[]"),
        "{listed}"
    );
    let (status, answer) = reg.http("POST", sign, &h, signature.as_bytes());
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = reg.http("POST", yank, &h, b"");
    assert_eq!(status, 200, "{answer}");
}

/// Every way an upload fails removes its file: a digest mismatch (monolithic, and
/// finishing a chunked session), a body over the size limit (declared, and chunked as
/// it arrives), a client gone mid-body, a cancel; a session untouched for an hour is
/// swept when the next upload starts. Nothing is stored by any of them.
#[test]
fn a_failed_upload_leaves_no_file() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &["--max-size", "200KiB"]);
    let auth = format!("Bearer {}", reg.token(&dir, "acme"));
    let h = [("Authorization", auth.as_str())];
    let none_left = |what: &str| {
        let uploads = reg.uploads();
        assert!(uploads.is_empty(), "{what} left {uploads:?}");
    };
    let (status, answer) = reg.http(
        "POST",
        &format!("/v2/acme/x/blobs/uploads/?digest={}", sha256(b"other")),
        &h,
        b"bytes",
    );
    assert_eq!(status, 400, "{answer}");
    none_left("a monolithic mismatch");
    let location = reg.open_upload("acme/x", &auth, b"abc");
    let (status, answer) = reg.http(
        "PUT",
        &format!("{location}?digest={}", sha256(b"other")),
        &h,
        b"def",
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("DIGEST_INVALID"), "{answer}");
    none_left("a chunked mismatch");
    let (status, _) = reg.http("PATCH", &location, &h, b"more");
    assert_eq!(status, 404, "the session outlived its failure");

    let big = vec![7u8; 300 << 10];
    for chunked in [false, true] {
        let location = reg.open_upload("acme/x", &auth, b"abc");
        let (status, answer) = send_body(reg.port, "PATCH", &location, &h, &big, chunked);
        assert_eq!(status, 413, "chunked {chunked}: {answer}");
        assert!(answer.contains("SIZE_INVALID"), "{answer}");
        none_left("a body over the limit");
    }

    // The client goes away a tenth of the way through its body.
    let location = reg.open_upload("acme/x", &auth, b"abc");
    {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
        let head = format!(
            "PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
            100 << 10
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&[1u8; 10 << 10]).unwrap();
    }
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        reg.uploads().is_empty()
    });
    assert!(gone, "a client gone mid-body left {:?}", reg.uploads());

    let location = reg.open_upload("acme/x", &auth, b"abc");
    let (status, _) = reg.http("DELETE", &location, &h, b"");
    assert_eq!(status, 204);
    none_left("a cancel");

    // Abandoned: untouched for two hours, swept when the next upload starts.
    let old = reg.open_upload("acme/x", &auth, b"abc");
    let (path, _) = reg.uploads().pop().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
    let fresh = reg.open_upload("acme/y", &auth, b"");
    let (status, _) = reg.http("PATCH", &old, &h, b"more");
    assert_eq!(status, 404, "an abandoned session was not swept");
    assert!(!path.exists());
    let (status, _) = reg.http("DELETE", &fresh, &h, b"");
    assert_eq!(status, 204);
    none_left("the sweep");
    assert_eq!(reg.blob_count(), 0, "a failed upload stored a blob");
}

/// A namespace holds at most `--namespace-quota` bytes of blobs: a publish past it is
/// refused (413 DENIED, saying the quota) and stores nothing; the same blobs again
/// count once; another namespace has its own quota; a chunked upload past it is
/// refused as it arrives and leaves no file.
#[test]
fn a_namespace_holds_at_most_its_quota() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &["--namespace-quota", "300KiB"]);
    let acme = reg.token(&dir, "acme");
    let other = reg.token(&dir, "other");
    // The trivial step (178 KiB) fits, twice (its blobs count once); the probe (230 KiB)
    // does not fit beside it.
    for version in ["1.0.0", "1.0.1"] {
        let (code, _, err) = reg.publish(&dir, &acme, plugins::TRIVIAL, "acme/echo", version);
        assert_eq!(code, 0, "{err}");
    }
    let probe = std::fs::read(plugins::PROBE).unwrap();
    let (code, _, err) = reg.publish(&dir, &acme, plugins::PROBE, "acme/probe", "1.0.0");
    assert_eq!(code, 1);
    assert!(
        err.contains("413") && err.contains("quota of 307200 bytes"),
        "{err}"
    );
    let (status, _) = reg.http("GET", "/api/v1/packages/acme/probe", &[], b"");
    assert_eq!(status, 404);
    let stored = reg.data.join("blobs/sha256").join(&sha256(&probe)[7..]);
    assert!(!stored.exists(), "the refused component was stored");
    assert!(reg.uploads().is_empty(), "{:?}", reg.uploads());

    let (code, _, err) = reg.publish(&dir, &other, plugins::PROBE, "other/probe", "1.0.0");
    assert_eq!(code, 0, "another namespace's quota: {err}");

    let auth = format!("Bearer {acme}");
    let location = reg.open_upload("acme/echo", &auth, b"");
    let (status, answer) = send_body(
        reg.port,
        "PATCH",
        &location,
        &[("Authorization", &auth)],
        &vec![1u8; 150 << 10],
        true,
    );
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer.contains("DENIED") && answer.contains("quota"),
        "{answer}"
    );
    assert!(reg.uploads().is_empty(), "{:?}", reg.uploads());
}

/// At most 8 blob bodies stream at once: with 8 uploads holding their slots (each body
/// half sent), a ninth waits, then is told to come back (429 with `Retry-After`) and
/// nothing of it is kept; once the 8 clients go away (their uploads removed with them)
/// an upload goes through again.
#[test]
fn blob_bodies_beyond_the_slots_are_told_to_retry() {
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let auth = format!("Bearer {}", reg.token(&dir, "acme"));
    let holders: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let location = reg.open_upload("acme/x", &auth, b"");
            let mut s = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
            let head = format!(
                "PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
                1 << 20
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&[1u8; 1 << 10]).unwrap();
            s
        })
        .collect();
    // Each holder's first KiB has reached its upload: all 8 slots are taken.
    let held = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        reg.uploads()
            .iter()
            .filter(|(_, len)| *len == 1 << 10)
            .count()
            == 8
    });
    assert!(held, "{:?}", reg.uploads());
    let h = [("Authorization", auth.as_str())];
    let blob = b"one more";
    let started = std::time::Instant::now();
    let ((status, answer), head) = raw_http(
        reg.port,
        "POST",
        &format!("/v2/acme/y/blobs/uploads/?digest={}", sha256(blob)),
        &h,
        blob,
    );
    assert_eq!(status, 429, "{answer}");
    assert!(answer.contains("TOOMANYREQUESTS"), "{answer}");
    assert_eq!(header(&head, "retry-after"), Some("10"), "{head}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(9));
    assert_eq!(reg.uploads().len(), 8, "the refused upload left a file");

    drop(holders);
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        reg.uploads().is_empty()
    });
    assert!(gone, "{:?}", reg.uploads());
    reg.put_blobs("acme/y", &h, &[blob]);
}

/// A blob is served from its file in pieces, not read whole per request: eight
/// concurrent downloads of a 48 MiB blob leave the server's peak resident memory
/// within 24 MiB of where it was (reading it whole would cost 48 MiB for each), and
/// every download gets every byte.
#[test]
fn blobs_are_served_without_holding_them_in_memory() {
    use std::io::{Read, Write};
    let (_t, dir) = support::tempdir();
    let reg = serve(&dir, &[]);
    let token = reg.token(&dir, "acme");
    let blob: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
    let digest = sha256(&blob);
    let auth = format!("Bearer {token}");
    let (status, answer) = send_body(
        reg.port,
        "POST",
        &format!("/v2/acme/big/blobs/uploads/?digest={digest}"),
        &[("Authorization", &auth)],
        &blob,
        false,
    );
    assert_eq!(status, 201, "{answer}");
    drop(blob);
    let pid = reg._server.0.id();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = proc_status_kib(pid, "VmRSS");
    let got: Vec<usize> = std::thread::scope(|s| {
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                let (port, digest) = (reg.port, &digest);
                s.spawn(move || {
                    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    write!(
                        c,
                        "GET /v2/acme/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )
                    .unwrap();
                    let mut all = Vec::new();
                    c.read_to_end(&mut all).unwrap();
                    let head = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    assert!(all.starts_with(b"HTTP/1.1 200"), "{:?}", &all[..head]);
                    all.len() - head
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    assert!(got.iter().all(|&n| n == 48 << 20), "{got:?}");
    let peak = proc_status_kib(pid, "VmHWM");
    assert!(
        peak.saturating_sub(before) < 24 << 10,
        "the server's resident memory went from {before} KiB to a peak of {peak} KiB"
    );
}
