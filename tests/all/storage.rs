//! The storage steps against real servers on loopback: S3 through `s3s-fs` (an
//! S3-compatible server that checks SigV4 signatures; `.ci/run` installs it with
//! `cargo install s3s-fs` and sets `HOIST_REQUIRE_S3=1`), `file://` folders and Python's
//! `http.server` for `pull_from_remote_storage`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{self, Server, hoist, run};

pub(crate) const ACCESS_KEY: &str = "HOISTTESTKEY";
pub(crate) const SECRET_KEY: &str = "hoist-test-secret-9f3c";

/// An `s3s-fs` server with one bucket, `bkt`, storing in a temporary directory.
pub(crate) struct S3 {
    _server: Server,
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) endpoint: String,
}

fn s3s_fs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HOIST_S3S_FS") {
        return Some(p.into());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    })
}

pub(crate) fn s3() -> Option<S3> {
    let Some(bin) = s3s_fs() else {
        assert!(
            std::env::var_os("HOIST_REQUIRE_S3").is_none(),
            "HOIST_REQUIRE_S3 is set but s3s-fs is not on PATH \
             (cargo install s3s-fs@0.14.1 --locked --features binary)"
        );
        support::skip("s3s-fs is not installed: the S3 tests");
        return None;
    };
    let (dir, root) = support::tempdir();
    std::fs::create_dir(root.join("bkt")).unwrap();
    let port = support::free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(&root);
    Some(S3 {
        _server: Server::start(cmd, port, "s3s-fs"),
        _dir: dir,
        root,
        endpoint: format!("http://127.0.0.1:{port}"),
    })
}

impl S3 {
    fn grant(&self) -> String {
        format!("net:{}", self.endpoint)
    }
}

/// Every file under `dir` (relative path → bytes).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A project of a few kinds of files, some of which `.prefectignore` excludes.
fn sample_project(dir: &Path) {
    write(&dir.join("flows/main.py"), b"print('hi')\n");
    write(
        &dir.join("flows/__pycache__/main.cpython-311.pyc"),
        b"\x00pyc",
    );
    write(
        &dir.join("data/with space & ampersand.txt"),
        "ünïcode\n".as_bytes(),
    );
    write(&dir.join("data/run.log"), b"ignored log");
    write(&dir.join("data/keep.log"), b"re-included by !data/keep.log");
    let big: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(&dir.join("blob.bin"), &big);
    write(&dir.join("empty"), b"");
    write(
        &dir.join(".prefectignore"),
        b"# test\n__pycache__/\n*.log\n!data/keep.log\n",
    );
}

fn s3_project(s3: &S3, secret: &str) -> String {
    format!(
        "push:\n- prefect_aws.deployments.steps.push_to_s3:\n    id: push_code\n    requires: prefect-aws>=0.3.4\n    \
         bucket: bkt\n    folder: proj/v1\n    credentials:\n      aws_access_key_id: {ACCESS_KEY}\n      \
         aws_secret_access_key: {secret}\n      aws_client_parameters:\n        endpoint_url: {ep}\n\
         pull:\n- prefect_aws.deployments.steps.pull_from_s3:\n    id: pull_code\n    bucket: bkt\n    folder: proj/v1\n    \
         credentials:\n      minio_root_user: {ACCESS_KEY}\n      minio_root_password: {secret}\n    \
         client_parameters:\n      endpoint_url: {ep}\n",
        ep = s3.endpoint
    )
}

#[test]
fn push_to_s3_then_pull_from_s3_round_trips_byte_identical() {
    let Some(s3) = s3() else { return };
    let (_t, src) = support::tempdir();
    sample_project(&src);
    std::fs::write(src.join("prefect.yaml"), s3_project(&s3, SECRET_KEY)).unwrap();
    let (code, out, err) =
        run(hoist(&src)
            .current_dir(&src)
            .args(["push", "--allow", &s3.grant()]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"folder\": \"proj/v1\""), "{out}");
    assert!(!err.contains(SECRET_KEY) && !out.contains(SECRET_KEY));

    // What the server holds: everything but the excluded files.
    let stored = tree(&s3.root.join("bkt/proj/v1"));
    let mut expected = tree(&src);
    expected.remove("flows/__pycache__/main.cpython-311.pyc");
    expected.remove("data/run.log");
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert_eq!(stored, expected);

    // Pulled back into a fresh directory: byte-identical.
    let (_t2, dst) = support::tempdir();
    std::fs::write(dst.join("prefect.yaml"), s3_project(&s3, SECRET_KEY)).unwrap();
    let (code, out, err) = run(hoist(&dst).current_dir(&dst).args([
        "pull",
        "--output",
        "json",
        "--allow",
        &s3.grant(),
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("\"directory\":\"{}\"", dst.display())),
        "{out}"
    );
    let mut pulled = tree(&dst);
    pulled.remove("prefect.yaml");
    expected.remove("prefect.yaml");
    assert_eq!(pulled, expected);
    // No partial files left behind.
    assert!(!pulled.keys().any(|k| k.contains("hoist-partial")));
}

#[test]
fn s3_failures_are_clear_and_keep_the_secret_out() {
    let Some(s3) = s3() else { return };
    let (_t, dir) = support::tempdir();
    write(&dir.join("a.txt"), b"a");
    let wrong = "not-the-right-secret-71";
    std::fs::write(dir.join("prefect.yaml"), s3_project(&s3, wrong)).unwrap();
    let (code, out, err) =
        run(hoist(&dir)
            .current_dir(&dir)
            .args(["push", "--allow", &s3.grant()]));
    assert_ne!(code, 0);
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    assert!(err.contains("does not match the access key id"), "{err}");
    assert!(err.contains("push_to_s3"), "{err}");
    assert!(!err.contains(wrong) && !out.contains(wrong), "{err}");
    assert!(tree(&s3.root.join("bkt")).is_empty(), "nothing uploaded");

    // Without the loopback grant the request never leaves the sandbox.
    std::fs::write(dir.join("prefect.yaml"), s3_project(&s3, SECRET_KEY)).unwrap();
    let (code, _, err) = run(hoist(&dir).current_dir(&dir).args(["push"]));
    assert_ne!(code, 0);
    assert!(err.contains(&format!("--allow {}", s3.grant())), "{err}");

    // A bucket that does not exist.
    let missing = s3_project(&s3, SECRET_KEY).replace("bucket: bkt", "bucket: nope");
    std::fs::write(dir.join("prefect.yaml"), missing).unwrap();
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["pull", "--allow", &s3.grant()]));
    assert_ne!(code, 0);
    assert!(
        err.contains("NoSuchBucket") && err.contains("`nope` does not exist"),
        "{err}"
    );

    // A download that cannot complete (the destination has a directory where an object
    // must become a file) fails the step and leaves no partial file behind.
    for i in 0..12 {
        write(&s3.root.join(format!("bkt/clash/f{i:02}.txt")), b"ok");
    }
    write(&s3.root.join("bkt/clash/zz"), b"a file named zz");
    let (_t2, dst) = support::tempdir();
    std::fs::create_dir_all(dst.join("zz/inner")).unwrap();
    let clash = s3_project(&s3, SECRET_KEY).replace("folder: proj/v1", "folder: clash");
    std::fs::write(dst.join("prefect.yaml"), clash).unwrap();
    let (code, _, err) = run(hoist(&dst)
        .current_dir(&dst)
        .args(["pull", "--allow", &s3.grant()]));
    assert_ne!(code, 0);
    assert!(err.contains("zz"), "{err}");
    let left: Vec<String> = tree(&dst).into_keys().collect();
    assert!(
        !left.iter().any(|k| k.contains("hoist-partial")),
        "{left:?}"
    );
}

#[test]
fn pull_from_remote_storage_s3_file_and_http() {
    let (_t, site) = support::tempdir();
    write(&site.join("share/flows/main.py"), b"print('served')\n");
    write(&site.join("share/flows/lib/util.py"), b"X = 1\n");
    write(&site.join("share/readme.md"), b"# readme\n");
    let http = support::http_server(&site);
    let (_t2, dir) = support::tempdir();
    let mut yaml = format!(
        "pull:\n- prefect.deployments.steps.pull_from_remote_storage:\n    url: file://{share}/share/flows\n\
         - prefect.deployments.steps.pull_from_remote_storage:\n    url: http://127.0.0.1:{port}/share/\n",
        share = site.display(),
        port = http.1
    );
    let mut allow = vec![format!("net:http://127.0.0.1:{}", http.1)];
    let s3 = s3();
    if let Some(s3) = &s3 {
        write(&s3.root.join("bkt/folder/sub/x.txt"), b"from s3");
        write(&s3.root.join("bkt/folder/y.txt"), b"y");
        write(&s3.root.join("bkt/folder2/not-this.txt"), b"sibling prefix");
        yaml.push_str(&format!(
            "- prefect.deployments.steps.pull_from_remote_storage:\n    requires: s3fs<3.0\n    \
             url: s3://bkt/folder\n    key: {ACCESS_KEY}\n    secret: {SECRET_KEY}\n    \
             client_kwargs: {{endpoint_url: '{}'}}\n",
            s3.endpoint
        ));
        allow.push(s3.grant());
    }
    std::fs::write(dir.join("prefect.yaml"), yaml).unwrap();
    let mut cmd = hoist(&dir);
    cmd.current_dir(&dir).args(["pull", "--output", "json"]);
    for a in &allow {
        cmd.args(["--allow", a]);
    }
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    let file_dest = format!("{}/share/flows", site.display())
        .trim_start_matches('/')
        .to_string();
    assert!(
        out.contains(&format!("\"directory\":\"{file_dest}\"")),
        "{out}"
    );
    assert!(out.contains("\"directory\":\"127.0.0.1:"), "{out}");
    let got = tree(&dir);
    assert_eq!(got[&format!("{file_dest}/lib/util.py")], b"X = 1\n");
    let served = format!("127.0.0.1:{}/share", http.1);
    assert_eq!(
        got[&format!("{served}/flows/main.py")],
        b"print('served')\n"
    );
    assert_eq!(got[&format!("{served}/flows/lib/util.py")], b"X = 1\n");
    assert_eq!(got[&format!("{served}/readme.md")], b"# readme\n");
    if s3.is_some() {
        assert!(out.contains("\"directory\":\"bkt/folder\""), "{out}");
        assert_eq!(got["bkt/folder/sub/x.txt"], b"from s3");
        assert_eq!(got["bkt/folder/y.txt"], b"y");
        assert!(!got.keys().any(|k| k.contains("not-this")), "{got:?}");
    }

    // An unsupported scheme is refused by name; a missing folder names the URL.
    let (code, _, err) = support::run_project(
        &dir,
        "pull:\n- prefect.deployments.steps.pull_from_remote_storage:\n    url: gs://b/f\n",
        &["pull"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("`gs://` URLs are not supported"), "{err}");
    let (code, _, err) = support::run_project(
        &dir,
        "pull:\n- prefect.deployments.steps.pull_from_remote_storage:\n    url: file:///nonexistent/x\n",
        &["pull"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("Failed to pull contents from remote storage 'file:///nonexistent/x'"),
        "{err}"
    );
}

#[test]
fn literal_secrets_in_the_project_file_are_masked_in_plans_logs_and_errors() {
    let (_t, dir) = support::tempdir();
    let literal = "literal-secret-4242";
    std::fs::write(
        dir.join("prefect.yaml"),
        format!(
            "push:\n- prefect_aws.deployments.steps.push_to_s3:\n    bucket: b\n    folder: f\n    \
             credentials:\n      aws_access_key_id: AKID\n      aws_secret_access_key: {literal}\n"
        ),
    )
    .unwrap();
    {
        let (code, out, err) = run(hoist(&dir).current_dir(&dir).arg("plan"));
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("push_to_s3"), "{out}");
        assert!(
            !out.contains(literal) && !err.contains(literal),
            "{out}{err}"
        );
        assert!(out.contains("********"), "{out}");
    }
    // Running it: the step fails (nothing listens there); neither the log, the error
    // nor the JSON report shows the secret.
    let (code, out, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["push", "--output", "json"]));
    assert_ne!(code, 0);
    assert!(
        !out.contains(literal) && !err.contains(literal),
        "{out}{err}"
    );
}

#[test]
fn an_unresolved_lone_placeholder_is_explained_when_its_key_is_missed() {
    let (_t, dir) = support::tempdir();
    let (code, _, err) = support::run_project(
        &dir,
        "pull:\n- prefect_aws.deployments.steps.pull_from_s3:\n    bucket: '{{ push_code.bucket }}'\n    folder: f\n",
        &["pull"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("missing input `bucket`"), "{err}");
    assert!(
        err.contains("`bucket: {{ push_code.bucket }}` did not resolve, so the key was left out"),
        "{err}"
    );
}
