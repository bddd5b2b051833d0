//! The docker capability and the built-in docker steps against a real engine and real
//! registries on loopback: Podman's Docker-compatible API service (runc, vfs storage,
//! everything under a temporary directory) and two Distribution registries, one open,
//! one with htpasswd authentication. Started once per test binary by [`engine`], and
//! stopped by a watchdog when the binary exits. The base image is built `FROM scratch`
//! from Debian's static busybox: nothing is pulled from outside.
//!
//! Needs `podman`, `runc`, `docker-registry` and `busybox` (Debian's `busybox-static`);
//! without them these tests say so and pass, unless `HOIST_REQUIRE_DOCKER` is set (as
//! `.ci/run` sets it), when they fail.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use hoist::runtime::{Capability, Grants, HostEnv, Runtime, RuntimeConfig, StepRequest};
use serde_json::{Value, json};

use crate::support::{self, hoist, plugins, run};

/// Debian 12's Podman carries buildah 1.28.2, older than CVE-2024-1753's fix: the tests
/// accept it as an operator would, knowingly (`an_engine_known_to_follow_links_needs_
/// the_operators_consent` shows the refusal without it).
const OLD_BUILDAH: [(&str, &str); 1] = [("HOIST_ALLOW_OLD_BUILDAH", "1")];

const USER: &str = "hoist";
const PASSWORD: &str = "s3cret-registry-pass";

/// The engine and registries every test here shares.
pub struct Engine {
    dir: PathBuf,
    /// `unix://…/podman.sock`.
    pub host: String,
    /// `127.0.0.1:<port>` without authentication.
    pub registry: String,
    /// `127.0.0.1:<port>` with `USER`/`PASSWORD`.
    pub auth_registry: String,
    /// The base image, on the engine and in `registry`.
    pub base: String,
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

use crate::support::supervised;

fn wait_tcp(port: u16, what: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{what} did not start on 127.0.0.1:{port}");
}

impl Engine {
    /// `podman …` on the engine's storage (for checks a test makes from outside).
    pub fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            );
        c
    }

    /// Whether the engine holds an image.
    pub fn has_image(&self, reference: &str) -> bool {
        self.podman()
            .args(["image", "exists", reference])
            .status()
            .unwrap()
            .success()
    }

    /// The repositories a registry holds.
    pub fn catalog(&self, registry: &str) -> String {
        let out = Command::new("curl")
            .args(["-s", "-u", &format!("{USER}:{PASSWORD}")])
            .arg(format!("http://{registry}/v2/_catalog"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A runtime whose host environment points at this engine.
    pub fn runtime(&self) -> Runtime {
        runtime_at(&self.host)
    }
}

/// A runtime whose host environment points at the engine `DOCKER_HOST=host`.
fn runtime_at(host: &str) -> Runtime {
    let env: HostEnv = HostEnv::from_process()
        .iter()
        .filter(|(k, _)| *k != "DOCKER_HOST")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("DOCKER_HOST".to_string(), host.to_string())])
        .chain(OLD_BUILDAH.map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    Runtime::new(RuntimeConfig {
        cache: hoist::runtime::ComponentCache::at(support::test_cache()),
        env,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

impl Engine {
    fn start() -> Option<Engine> {
        let missing: Vec<&str> = [
            "podman",
            "runc",
            "docker-registry",
            "busybox",
            "curl",
            "setsid",
        ]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
        if !missing.is_empty() {
            assert!(
                std::env::var_os("HOIST_REQUIRE_DOCKER").is_none(),
                "HOIST_REQUIRE_DOCKER is set but {missing:?} are not installed \
                 (apt-get install podman runc docker-registry busybox-static)"
            );
            support::skip(&format!("no container engine here ({missing:?} missing)"));
            return None;
        }
        let dir = std::env::temp_dir().join(format!("hoist-docker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("base")).unwrap();
        let (p1, p2) = (support::free_port(), support::free_port());
        let d = dir.display();
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        write(
            "storage.conf",
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n"
            ),
        );
        // runc (crun cannot run on cgroup-v1 hybrid hosts); rlimits a container without
        // CAP_SYS_RESOURCE can set.
        write(
            "containers.conf",
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
                .into(),
        );
        write(
            "registries.conf",
            format!(
                "unqualified-search-registries = []\n[[registry]]\nlocation = \"127.0.0.1:{p1}\"\ninsecure = true\n\
                 [[registry]]\nlocation = \"127.0.0.1:{p2}\"\ninsecure = true\n"
            ),
        );
        // bcrypt from Python's crypt module; Distribution reads the `$2a$` spelling.
        let hash = Command::new("python3")
            .args(["-W", "ignore", "-c"])
            .arg(format!(
                "import crypt; print(crypt.crypt('{PASSWORD}', crypt.mksalt(crypt.METHOD_BLOWFISH)).replace('$2b$', '$2a$', 1))"
            ))
            .output()
            .unwrap();
        assert!(hash.status.success(), "{hash:?}");
        write(
            "htpasswd",
            format!("{USER}:{}", String::from_utf8_lossy(&hash.stdout).trim()),
        );
        for (name, port, auth) in [("registry", p1, ""), ("auth-registry", p2, "auth")] {
            let auth = if auth.is_empty() {
                String::new()
            } else {
                format!("auth:\n  htpasswd: {{realm: hoist-test, path: {d}/htpasswd}}\n")
            };
            write(
                &format!("{name}.yml"),
                format!(
                    "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {d}/{name}-data}}\nhttp: {{addr: 127.0.0.1:{port}}}\n{auth}"
                ),
            );
            supervised(
                &dir,
                name,
                &format!("docker-registry serve {d}/{name}.yml"),
                "",
            );
        }
        let env = format!(
            "CONTAINERS_STORAGE_CONF={d}/storage.conf CONTAINERS_CONF={d}/containers.conf CONTAINERS_REGISTRIES_CONF={d}/registries.conf"
        );
        supervised(
            &dir,
            "podman",
            &format!("env {env} podman system service --time=0 unix://{d}/podman.sock"),
            &format!("rm -rf {d}"),
        );
        wait_tcp(p1, "docker-registry");
        wait_tcp(p2, "docker-registry (auth)");
        let sock = dir.join("podman.sock");
        for _ in 0..200 {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let engine = Engine {
            host: format!("unix://{}", sock.display()),
            registry: format!("127.0.0.1:{p1}"),
            auth_registry: format!("127.0.0.1:{p2}"),
            base: format!("127.0.0.1:{p1}/base/busybox:1"),
            dir,
        };
        // The base image: static busybox, FROM scratch.
        let busybox = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v busybox"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let base_dir = engine.dir.join("base");
        std::fs::copy(busybox.trim(), base_dir.join("busybox")).unwrap();
        std::fs::write(
            base_dir.join("Containerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
        )
        .unwrap();
        for args in [
            vec![
                "build",
                "-q",
                "-t",
                &engine.base,
                base_dir.to_str().unwrap(),
            ],
            vec!["push", "-q", &engine.base],
        ] {
            let out = engine.podman().args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "podman {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(engine)
    }
}

/// The shared engine, started on first use; `None` where none can run (see the module).
pub fn engine() -> Option<&'static Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    ENGINE.get_or_init(Engine::start).as_ref()
}

/// A project directory with a Dockerfile `FROM` the base image.
fn project(e: &Engine, dockerfile_rest: &str) -> (tempfile::TempDir, PathBuf) {
    let (t, dir) = support::tempdir();
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::write(dir.join("flows/main.py"), "print('hello from the image')\n").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {}\n{dockerfile_rest}", e.base),
    )
    .unwrap();
    (t, dir)
}

fn hoist_with(e: &Engine, dir: &Path) -> Command {
    let mut c = hoist(dir);
    c.current_dir(dir)
        .env("DOCKER_HOST", &e.host)
        .envs(OLD_BUILDAH);
    c
}

/// C50–C52: a real project's build → push, pulled back by its digest and run; the
/// context honours `.dockerignore`; an identical second build in the process is reused.
#[test]
fn build_push_then_pull_back_by_digest_and_run() {
    let Some(e) = engine() else { return };
    let (_t, dir) = project(
        e,
        "COPY . /app\nRUN echo built > /built.txt\nCMD [\"cat\", \"/app/flows/main.py\"]\n",
    );
    std::fs::write(dir.join(".dockerignore"), "secret.txt\n*.log\n").unwrap();
    std::fs::write(dir.join("secret.txt"), "do not ship").unwrap();
    std::fs::write(dir.join("debug.log"), "noise").unwrap();
    let image = format!("{}/c50/app", e.registry);
    support::write_project(
        &dir,
        format!(
            r#"build:
- prefect_docker.deployments.steps.build_docker_image:
    id: build-image
    image_name: {image}
    tag: v1
    additional_tags: [latest-test]
    buildargs: {{A: b}}
    labels: {{team: data}}
- prefect_docker.deployments.steps.build_docker_image:
    image_name: {image}
    tag: v1
    additional_tags: [latest-test]
    buildargs: {{A: b}}
    labels: {{team: data}}
push:
- prefect_docker.deployments.steps.push_docker_image:
    id: push-image
    image_name: "{{{{ build-image.image_name }}}}"
    tag: "{{{{ build-image.tag }}}}"
    additional_tags: "{{{{ build-image.additional_tags }}}}"
deployments: [{{name: d}}]
"#
        ),
    );
    let (code, out, err) = run(hoist_with(e, &dir).arg("push"));
    assert_eq!(code, 0, "{err}");
    let outputs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outputs["build-image"]["image"], format!("{image}:v1"));
    assert_eq!(
        outputs["build-image"]["additional_tags"],
        json!(["latest-test"])
    );
    let id = outputs["build-image"]["image_id"].as_str().unwrap();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let digest = outputs["push-image"]["digest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    // The build's output streamed into the step's log; the second build was reused.
    assert!(err.contains("build_docker_image | "), "{err}");
    assert!(err.contains("identical call already ran"), "{err}");
    assert!(e.catalog(&e.registry).contains("c50/app"));

    // Pull back by digest, from a clean engine state, and run it.
    let by_digest = format!("{image}@{digest}");
    let _ = e
        .podman()
        .args([
            "rmi",
            "-f",
            &format!("{image}:v1"),
            &format!("{image}:latest-test"),
        ])
        .output();
    let pulled = e
        .podman()
        .args(["pull", "-q", &by_digest])
        .output()
        .unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let ran = e
        .podman()
        .args(["run", "--rm", "--network=none", &by_digest, "sh", "-c"])
        .arg(
            "cat /app/flows/main.py /built.txt; ls /app; cat /etc/os-release 2>/dev/null | head -1",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(
        stdout.contains("hello from the image") && stdout.contains("built"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("secret.txt") && !stdout.contains("debug.log"),
        ".dockerignore ignored: {stdout}"
    );
    assert!(stdout.contains("Dockerfile"), "{stdout}");
}

/// `dockerfile: auto` writes a Dockerfile from the base image, keeps a copy when asked,
/// and removes its own after the build, also when the build fails.
#[test]
fn dockerfile_auto_is_generated_and_always_removed() {
    let Some(e) = engine() else { return };
    let (_t, dir) = support::tempdir();
    std::fs::write(dir.join("flow.py"), "print(1)\n").unwrap();
    let yaml = |base: &str| {
        format!(
            "build:\n- prefect_docker.deployments.steps.build_docker_image:\n    image_name: {}/auto/app\n    tag: t1\n    dockerfile: auto\n    persist_dockerfile: true\n    base_image: {base}\n    pull: false\ndeployments: [{{name: d}}]\n",
            e.registry
        )
    };
    support::write_project(&dir, yaml(&e.base));
    let (code, out, err) = run(hoist_with(e, &dir).arg("build"));
    assert_eq!(code, 0, "{err}");
    assert!(
        !dir.join("Dockerfile").exists(),
        "the generated Dockerfile was left behind"
    );
    let kept = std::fs::read_to_string(dir.join("Dockerfile.generated")).unwrap();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        kept,
        format!(
            "FROM {}\nCOPY . /opt/prefect/{name}/\nWORKDIR /opt/prefect/{name}/\n",
            e.base
        )
    );
    assert!(
        out.contains(&format!("{}/auto/app:t1", e.registry)),
        "{out}"
    );
    let ran = e
        .podman()
        .args([
            "run",
            "--rm",
            "--network=none",
            &format!("{}/auto/app:t1", e.registry),
            "cat",
            "flow.py",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "print(1)\n");

    // A base image that does not exist: the build fails, the Dockerfile still goes.
    support::write_project(&dir, yaml(&format!("{}/no/such-base:1", e.registry)));
    let (code, _, err) = run(hoist_with(e, &dir).arg("build"));
    assert_ne!(code, 0);
    assert!(err.contains("build_docker_image"), "{err}");
    assert!(
        !dir.join("Dockerfile").exists(),
        "left behind after a failure"
    );

    // An existing Dockerfile is never overwritten.
    std::fs::write(dir.join("Dockerfile"), "mine").unwrap();
    support::write_project(&dir, yaml(&e.base));
    let (code, _, err) = run(hoist_with(e, &dir).arg("build"));
    assert_ne!(code, 0);
    assert!(err.contains("Dockerfile already exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("Dockerfile")).unwrap(),
        "mine"
    );
}

/// A failing `RUN` gives the engine's error line, the file, the step; non-zero exit.
#[test]
fn a_failing_dockerfile_gives_the_engines_error() {
    let Some(e) = engine() else { return };
    let (_t, dir) = project(e, "RUN echo about to fail && exit 3\n");
    support::write_project(
        &dir,
        format!(
            "build:\n- prefect_docker.deployments.steps.build_docker_image:\n    image_name: {}/fails/app\n    tag: x\n    pull: false\ndeployments: [{{name: d}}]\n",
            e.registry
        ),
    );
    let (code, _, err) = run(hoist_with(e, &dir).arg("build"));
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("about to fail"),
        "the build output is not in the log: {err}"
    );
    assert!(err.contains("the image build failed"), "{err}");
    assert!(
        err.contains("exit status 3") || err.contains("non-zero code: 3"),
        "{err}"
    );
    assert!(err.contains("prefect.yaml:2"), "{err}");
}

/// Registry credentials: a wrong password is refused by the registry with a clear
/// message that never holds the password; the right one (from a secret block's data
/// written inline) pushes.
#[test]
fn registry_credentials_are_checked_and_never_shown() {
    let Some(e) = engine() else { return };
    let (_t, dir) = project(e, "CMD [\"true\"]\n");
    let image = format!("{}/private/app", e.auth_registry);
    let yaml = |password: &str| {
        format!(
            "build:\n- prefect_docker.deployments.steps.build_docker_image:\n    id: b\n    image_name: {image}\n    tag: p1\n    pull: false\npush:\n- prefect_docker.deployments.steps.push_docker_image:\n    image_name: '{{{{ b.image_name }}}}'\n    tag: '{{{{ b.tag }}}}'\n    credentials: {{username: {USER}, password: {password}, registry_url: 'http://{}/'}}\ndeployments: [{{name: d}}]\n",
            e.auth_registry
        )
    };
    let wrong = "wrong-password-4711";
    support::write_project(&dir, yaml(wrong));
    let (code, out, err) = run(hoist_with(e, &dir).arg("push"));
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("login to registry") && err.contains("refused"),
        "{err}"
    );
    assert!(
        !err.contains(wrong) && !out.contains(wrong),
        "the password leaked: {err}"
    );
    assert!(!e.catalog(&e.auth_registry).contains("private/app"));

    support::write_project(&dir, yaml(PASSWORD));
    let (code, out, err) = run(hoist_with(e, &dir).arg("push"));
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains(PASSWORD) && !out.contains(PASSWORD),
        "the password leaked"
    );
    assert!(e.catalog(&e.auth_registry).contains("private/app"));
}

/// A build arg (or label) holding a secret the run knows (a secret block's value, or a
/// value under a key named like a secret) is refused before the engine is asked: an
/// image keeps its build args in its history (`docker history`) for anyone who can pull
/// it. Nothing is built, the secret is in no output; the same build with a plain value
/// builds (the control).
#[test]
fn a_secret_never_goes_into_an_images_build_args_or_labels() {
    let Some(e) = engine() else { return };
    let (_t, dir) = project(e, "ARG TOKEN\nARG VERSION\nCMD [\"true\"]\n");
    let secret = "build-secret-31415";
    let (code, _, err) =
        run(hoist(&dir).args(["block", "set", "secret", "tok", "--value", secret]));
    assert_eq!(code, 0, "{err}");
    let image = format!("{}/secret/app", e.registry);
    let build = |field: &str, key: &str, value: &str| {
        support::write_project(
            &dir,
            format!(
                "build:\n- prefect_docker.deployments.steps.build_docker_image:\n    image_name: {image}\n    tag: s1\n    pull: false\n    {field}: {{{key}: '{value}'}}\ndeployments: [{{name: d}}]\n"
            ),
        );
        run(hoist_with(e, &dir).arg("build"))
    };
    let block = "v-{{ prefect.blocks.secret.tok }}";
    for (field, what, key, value) in [
        ("buildargs", "build arg", "VERSION", block),
        ("labels", "label", "VERSION", block),
        ("buildargs", "build arg", "TOKEN", "typed-in-31415"),
    ] {
        let (code, out, err) = build(field, key, value);
        assert_ne!(code, 0, "{err}");
        assert!(
            err.contains(&format!(
                "may not build with {what} `{key}`: it holds a secret"
            )),
            "{err}"
        );
        for leaked in [secret, "typed-in-31415"] {
            assert!(!err.contains(leaked) && !out.contains(leaked), "{err}");
        }
        assert!(!e.has_image(&format!("{image}:s1")), "an image was built");
    }
    let (code, _, err) = build("buildargs", "VERSION", "1.2.3");
    assert_eq!(code, 0, "{err}");
    assert!(e.has_image(&format!("{image}:s1")));
}

/// An engine known to follow a build context's links from the host's side on
/// `RUN --mount` (Podman with buildah before 1.35.3, CVE-2024-1753; this machine's
/// Podman is one) builds nothing unless the operator says so where Hoist runs
/// (`HOIST_ALLOW_OLD_BUILDAH=1`): the refusal names the version and the way out, and no
/// image is made; with the consent the same build runs.
#[test]
fn an_engine_known_to_follow_links_needs_the_operators_consent() {
    let Some(e) = engine() else { return };
    let (_t, dir) = project(e, "CMD [\"true\"]\n");
    let image = format!("{}/consent/app", e.registry);
    support::write_project(
        &dir,
        format!(
            "build:\n- prefect_docker.deployments.steps.build_docker_image:\n    image_name: {image}\n    tag: c1\n    pull: false\ndeployments: [{{name: d}}]\n"
        ),
    );
    // What the engine says of itself (`/_ping`'s `Libpod-Buildah-Version`).
    let sock = e.host.trim_start_matches("unix://");
    let ping = Command::new("curl")
        .args(["-sSi", "--unix-socket", sock, "http://d/_ping"])
        .output()
        .unwrap();
    let ping = String::from_utf8_lossy(&ping.stdout).to_ascii_lowercase();
    let buildah = ping
        .lines()
        .find_map(|l| l.strip_prefix("libpod-buildah-version:"))
        .map(|v| v.trim().to_string())
        .expect("the engine is Podman");
    let old = semver::Version::parse(&buildah).unwrap() < semver::Version::new(1, 35, 3);
    let mut without = hoist(&dir);
    without.current_dir(&dir).env("DOCKER_HOST", &e.host);
    let (code, _, err) = run(without.arg("build"));
    if old {
        assert_ne!(code, 0, "buildah {buildah}: {err}");
        assert!(
            err.contains(&format!(
                "Podman with buildah {buildah}, which follows links"
            )) && err.contains("CVE-2024-1753")
                && err.contains("HOIST_ALLOW_OLD_BUILDAH=1"),
            "{err}"
        );
        assert!(!e.has_image(&format!("{image}:c1")), "it was built");
    } else {
        assert_eq!(code, 0, "buildah {buildah}: {err}");
    }
    let (code, _, err) = run(hoist_with(e, &dir).arg("build"));
    assert_eq!(code, 0, "{err}");
    assert!(e.has_image(&format!("{image}:c1")));
}

/// No engine: one line that says how to point `DOCKER_HOST` at one.
#[test]
fn no_engine_says_how_to_point_docker_host_at_one() {
    let (_t, dir) = support::tempdir();
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").unwrap();
    support::write_project(
        &dir,
        "build:\n- prefect_docker.deployments.steps.build_docker_image:\n    image_name: app\n    tag: x\ndeployments: [{name: d}]\n",
    );
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("DOCKER_HOST", format!("unix://{}/no.sock", dir.display()))
        .arg("build"));
    assert_ne!(code, 0);
    assert!(err.contains("no Docker engine answers at unix://"), "{err}");
    assert!(err.contains("DOCKER_HOST=unix://"), "{err}");
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("DOCKER_HOST", "tcp://127.0.0.1:2375")
        .arg("build"));
    assert_ne!(code, 0);
    assert!(err.contains("unix socket only"), "{err}");
}

// ---- A hostile plugin with the docker capability -------------------------------------

async fn attack(rt: &Runtime, plugin: &str, cwd: &Path, grants: &[&str], actions: Value) -> Value {
    let plugin = rt.load_file(Path::new(plugin)).await.unwrap();
    let grants = Grants::new(grants.iter().map(|c| c.parse::<Capability>().unwrap()));
    let req = StepRequest::new("attack", cwd)
        .inputs(json!({ "actions": actions }))
        .grants(grants);
    rt.run(&plugin, req).await.map(|o| o.outputs).unwrap()
}

fn refused(out: &Value, i: usize) -> String {
    match out["results"][i].get("err") {
        Some(e) => e.as_str().unwrap().to_string(),
        None => panic!("action {i} was not refused: {out}"),
    }
}

const DOCKER_GRANTS: &[&str] = &["docker:build", "docker:push:127.0.0.1:*/granted/*"];

/// A plugin granted nothing cannot build; one granted `docker:build` and pushes to
/// `granted/` cannot push elsewhere (the fix is named, nothing reaches the registry),
/// cannot build from a directory it was not given, cannot name a Dockerfile outside
/// its context, cannot smuggle a path into the engine's URL.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_gets_only_the_docker_it_was_granted() {
    let Some(e) = engine() else { return };
    let rt = e.runtime();
    let (_t, cwd) = project(e, "CMD [\"true\"]\n");
    let (_o, outside) = support::tempdir();
    std::fs::write(outside.join("Dockerfile"), format!("FROM {}\n", e.base)).unwrap();
    // A Dockerfile that is a link out of its context (in a context of its own, which
    // the context `.` leaves out: a link leaving the context is refused, see the offline
    // test, unless .dockerignore keeps it from being sent).
    std::fs::create_dir(cwd.join("linked")).unwrap();
    std::os::unix::fs::symlink(outside.join("Dockerfile"), cwd.join("linked/Linked")).unwrap();
    let mut ignore = std::fs::read_to_string(cwd.join(".dockerignore")).unwrap_or_default();
    ignore.push_str("\nlinked\n");
    std::fs::write(cwd.join(".dockerignore"), ignore).unwrap();

    // Granted nothing: the build is refused before the engine hears of it.
    let tag = format!("{}/granted/ungranted:1", e.registry);
    let out = attack(
        &rt,
        plugins::HOSTILE,
        &cwd,
        &[],
        json!([{"do": "docker_build", "context": ".", "tags": [tag]}]),
    )
    .await;
    let err = refused(&out, 0);
    assert!(err.contains("docker:build"), "{err}");
    assert!(!e.has_image(&tag));

    let ok_tag = format!("{}/granted/app:1", e.registry);
    let other = format!("{}/other/app:1", e.registry);
    let out = attack(
        &rt,
        plugins::HOSTILE_DOCKER,
        &cwd,
        DOCKER_GRANTS,
        json!([
            {"do": "docker_build", "context": ".", "tags": [ok_tag]},
            {"do": "docker_tag", "source": ok_tag, "target": other},
            {"do": "docker_push", "reference": other},
            {"do": "docker_push", "reference": ok_tag},
            {"do": "docker_build", "context": outside.to_str().unwrap(), "tags": [format!("{}/granted/outside:1", e.registry)]},
            {"do": "docker_build", "context": "linked", "dockerfile": "Linked", "tags": [format!("{}/granted/linked:1", e.registry)]},
            {"do": "docker_build", "context": ".", "dockerfile": "../x/Dockerfile"},
            {"do": "docker_inspect", "reference": "../../containers/json"},
            {"do": "docker_push", "reference": "127.0.0.1:1/granted/../../../containers/create"},
            {"do": "docker_build", "context": ".", "pull": true},
        ]),
    )
    .await;
    assert!(out["results"][0].get("ok").is_some(), "{out}");
    let push = refused(&out, 2);
    assert!(
        push.contains("other/app") && push.contains("docker:push"),
        "{push}"
    );
    assert!(out["results"][3].get("ok").is_some(), "{out}");
    let cat = e.catalog(&e.registry);
    assert!(
        cat.contains("granted/app") && !cat.contains("other/app"),
        "{cat}"
    );
    assert!(refused(&out, 4).contains("must lie in a directory the step was given"));
    assert!(!e.has_image(&format!("{}/granted/outside:1", e.registry)));
    assert!(
        refused(&out, 5).contains("inside the build context"),
        "{out}"
    );
    assert!(!e.has_image(&format!("{}/granted/linked:1", e.registry)));
    assert!(
        refused(&out, 6).contains("inside the build context"),
        "{out}"
    );
    assert!(refused(&out, 7).contains("not an image reference"), "{out}");
    assert!(refused(&out, 8).contains("not an image reference"), "{out}");
    assert!(refused(&out, 9).contains("net:*"), "{out}");
}

/// Without `net:*` a build is offline: `ADD <url>` and `ADD $VAR` are refused before the
/// engine could fetch (the listener sees no connection), so are a base image the engine
/// would pull and `FROM --platform` (`RUN`: the next test); a context link that is
/// absolute or leads outside the context is refused (an engine may follow it from the
/// host's side), one inside it is sent as a link.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_build_is_offline_and_sends_links_as_links() {
    let Some(e) = engine() else { return };
    let rt = e.runtime();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_o, outside) = support::tempdir();
    let canary = outside.join("canary");
    std::fs::write(&canary, "host-secret-canary").unwrap();

    let (_t, cwd) = support::tempdir();
    let base = &e.base;
    let url = format!("http://127.0.0.1:{port}/x");
    let files = [
        ("add", format!("FROM {base}\nADD {url} /x\n")),
        (
            "pull",
            format!("FROM {}/granted/never-built:1\n", e.registry),
        ),
        ("var", format!("ARG B={base}\nFROM $B\n")),
        ("addvar", format!("FROM {base}\nARG U={url}\nADD $U /x\n")),
        ("platform", format!("FROM --platform=linux/arm64 {base}\n")),
        ("abs", format!("FROM {base}\nCOPY . /ctx\n")),
        ("up", format!("FROM {base}\nCOPY . /ctx\n")),
        ("links", format!("FROM {base}\nCOPY . /ctx\n")),
    ];
    for (name, text) in &files {
        std::fs::create_dir_all(cwd.join(name)).unwrap();
        std::fs::write(cwd.join(name).join("Dockerfile"), text).unwrap();
    }
    std::os::unix::fs::symlink(&canary, cwd.join("abs/link")).unwrap();
    // `self -> .` stays inside; `link -> self/../x` reads as inside letter by letter and
    // leaves the context once `self` is followed.
    std::os::unix::fs::symlink(".", cwd.join("up/self")).unwrap();
    std::os::unix::fs::symlink("self/../x", cwd.join("up/link")).unwrap();
    std::os::unix::fs::symlink("Dockerfile", cwd.join("links/link")).unwrap();
    let tag = |n: &str| format!("{}/granted/{n}:1", e.registry);
    let names = [
        "add", "pull", "var", "addvar", "platform", "abs", "up", "links",
    ];
    let actions: Vec<Value> = names
        .iter()
        .map(|n| json!({"do": "docker_build", "context": n, "tags": [tag(n)]}))
        .collect();
    let out = attack(
        &rt,
        plugins::HOSTILE_DOCKER,
        &cwd,
        DOCKER_GRANTS,
        json!(actions),
    )
    .await;
    assert!(refused(&out, 0).contains("`ADD` from a URL"), "{out}");
    assert!(refused(&out, 1).contains("would pull it"), "{out}");
    assert!(refused(&out, 2).contains("uses a variable"), "{out}");
    assert!(refused(&out, 3).contains("`ADD` with a variable"), "{out}");
    assert!(refused(&out, 4).contains("flags on `FROM`"), "{out}");
    for i in [5, 6] {
        assert!(
            refused(&out, i).contains("leads outside the build context"),
            "{out}"
        );
    }
    assert!(out["results"][7].get("ok").is_some(), "{out}");
    assert!(
        listener.accept().is_err(),
        "the engine connected to the listener"
    );
    for n in &names[..7] {
        assert!(!e.has_image(&tag(n)), "{n} was built");
    }
    let ran = e
        .podman()
        .args([
            "run",
            "--rm",
            "--network=none",
            &tag("links"),
            "readlink",
            "/ctx/link",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert_eq!(
        stdout.trim(),
        "Dockerfile",
        "the link was not sent as a link"
    );
    let mut buf = String::new();
    let _ = std::fs::File::open(&canary)
        .unwrap()
        .read_to_string(&mut buf);
    assert_eq!(buf, "host-secret-canary");
    let _ = std::io::stdout().flush();
}

impl Engine {
    /// A stand-in engine: this Podman behind a relay (a unix socket of the test's) that
    /// turns every build's `networkmode=none` into `networkmode=host`, standing in for an
    /// engine that ignores the network mode of builds (as Podman 4.3 did for a reviewer:
    /// a plain `RUN wget` reached the host's loopback). Its `DOCKER_HOST`; one relay for
    /// the rest of the test run.
    fn ignoring_network_mode(&self) -> &'static str {
        static RELAY: OnceLock<String> = OnceLock::new();
        RELAY.get_or_init(|| {
            let sock = self.dir.join("ignores-networkmode.sock");
            let upstream = self.dir.join("podman.sock");
            let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let upstream = upstream.clone();
                    std::thread::spawn(move || relay(client, &upstream));
                }
            });
            format!("unix://{}", sock.display())
        })
    }
}

/// One connection through the relay: its request line rewritten, then bytes both ways.
fn relay(mut client: std::os::unix::net::UnixStream, upstream: &Path) {
    use std::os::unix::net::UnixStream;
    let Ok(mut up) = UnixStream::connect(upstream) else {
        return;
    };
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match client.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&line).replace("networkmode=none", "networkmode=host");
    if up.write_all(line.as_bytes()).is_err() {
        return;
    }
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut u2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut client, &mut up);
    let _ = up.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
}

/// An offline build may `RUN` only on an engine a probe build showed to keep it offline
/// (its `RUN` lists its network interfaces and tries to reach a listener Hoist holds on
/// every address of this machine):
/// on an engine that ignores a build's network mode the step's `RUN` is refused,
/// naming the reason and `net:*`, and the step's `wget` never runs (the listener, on
/// loopback and on this machine's own address, sees no connection). Wherever Hoist lets
/// an offline `RUN` through, it reaches nothing (on this machine's Podman, which does
/// keep builds offline, it builds).
#[tokio::test(flavor = "multi_thread")]
async fn an_offline_run_needs_an_engine_shown_to_keep_builds_offline() {
    let Some(e) = engine() else { return };
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let own = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|u| u.connect("192.0.2.1:9").map(|()| u))
        .and_then(|u| u.local_addr())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into());
    let (_t, cwd) = support::tempdir();
    std::fs::create_dir_all(cwd.join("run")).unwrap();
    std::fs::write(
        cwd.join("run/Dockerfile"),
        format!(
            "FROM {}\nRUN for a in 127.0.0.1 {own}; do wget -q -T 2 -O - http://$a:{port}/x; done; true\n",
            e.base
        ),
    )
    .unwrap();
    let build = async |host: &str, tag: &str| {
        let rt = runtime_at(host);
        let action = json!([{"do": "docker_build", "context": "run", "tags": [tag]}]);
        attack(&rt, plugins::HOSTILE_DOCKER, &cwd, DOCKER_GRANTS, action).await
    };
    let reached = || listener.accept().is_ok();

    let shared = format!("{}/granted/hostnet:1", e.registry);
    let out = build(e.ignoring_network_mode(), &shared).await;
    let why = refused(&out, 0);
    assert!(
        why.contains("may not `RUN` (line 2) in an offline build")
            && why.contains("ignores the build's network mode `none`: a probe build's `RUN`")
            && (why.contains("connected to this machine")
                || why.contains("has network interfaces besides loopback"))
            && why.contains("net:*"),
        "{out}"
    );
    assert!(!e.has_image(&shared), "it was built");
    assert!(!reached(), "the step's RUN reached the listener");

    let own_engine = format!("{}/granted/isolated:1", e.registry);
    let out = build(&e.host, &own_engine).await;
    if out["results"][0].get("ok").is_some() {
        assert!(
            !reached(),
            "an offline RUN Hoist let through reached this machine"
        );
        assert!(e.has_image(&own_engine));
    } else {
        assert!(refused(&out, 0).contains("in an offline build"), "{out}");
    }
}

/// A Dockerfile is hostile input even to the built-in step (a plugin may have written it
/// in the working directory): `RUN --mount` (host paths), `RUN --network=host` and
/// `RUN --security` are refused before the engine sees the build, also when an
/// `# escape=` directive hides the option on a continuation line.
#[test]
fn run_options_that_reach_the_host_are_refused_in_every_build() {
    let Some(e) = engine() else { return };
    let (_o, outside) = support::tempdir();
    std::fs::write(outside.join("canary"), "host-secret-canary").unwrap();
    let canary = outside.join("canary");
    for (i, rest) in [
        format!(
            "RUN --mount=type=bind,source=/,target=/h cat /h{} > /leak\n",
            canary.display()
        ),
        "RUN --network=host wget -q -O /x http://127.0.0.1:1/\n".to_string(),
        "RUN --security=insecure true\n".to_string(),
        format!(
            "RUN `\n  --mount=type=bind,source=/,target=/h cat /h{} > /leak\n",
            canary.display()
        ),
        // An empty line and a comment ending in the escape character inside the
        // continuation: the engine skips both, so the option is still the RUN's.
        format!(
            "RUN \\\n\n# hidden \\\n  --mount=type=bind,source=/,target=/h cat /h{} > /leak\n",
            canary.display()
        ),
        // Quotes inside the flag name, as the parser reads them.
        format!(
            "RUN --\"mount\"=type=bind,source=/,target=/h cat /h{} > /leak\n",
            canary.display()
        ),
        "ONBUILD RUN --network=host true\n".to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let escape = if rest.contains('`') {
            "# escape=`\n"
        } else {
            ""
        };
        let (_t, dir) = support::tempdir();
        std::fs::write(
            dir.join("Dockerfile"),
            format!("{escape}FROM {}\n{rest}", e.base),
        )
        .unwrap();
        let image = format!("{}/mount/app{i}", e.registry);
        support::write_project(
            &dir,
            format!(
                "build:\n- prefect_docker.deployments.steps.build_docker_image:\n    image_name: {image}\n    tag: x\n    pull: false\ndeployments: [{{name: d}}]\n"
            ),
        );
        let (code, _, err) = run(hoist_with(e, &dir).arg("build"));
        assert_ne!(code, 0, "{rest}: {err}");
        assert!(err.contains("Hoist refuses options on `RUN`"), "{err}");
        assert!(!e.has_image(&format!("{image}:x")), "{rest}");
    }
}

/// The prefect-docker 0.2.x step of Prefect 2.10's docker recipes: build, tag and push in
/// one step; its `image_name` output includes the tag.
#[test]
fn the_2x_build_step_builds_and_pushes() {
    let Some(e) = engine() else { return };
    let (_t, dir) = project(e, "CMD [\"true\"]\n");
    let image = format!("{}/legacy/app", e.registry);
    support::write_project(
        &dir,
        format!(
            "build:\n- prefect_docker.projects.steps.build_docker_image:\n    id: b\n    image_name: {image}\n    image_tag: v2\ndeployments: [{{name: d}}]\n"
        ),
    );
    let (code, out, err) = run(hoist_with(e, &dir).arg("build"));
    assert_eq!(code, 0, "{err}");
    let outputs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        outputs["b"],
        json!({"image_name": format!("{image}:v2"), "image_tag": "v2"})
    );
    assert!(e.catalog(&e.registry).contains("legacy/app"));
}
