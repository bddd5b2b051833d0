//! git_clone with the real `git`: local repositories over `file://`, and a smart-HTTP
//! server on 127.0.0.1 (`git http-backend` behind a small TLS server, in Python) that
//! requires a token.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::{self, Server, git, hoist, run};

/// A repository with two commits on `main`, a `feature/x` branch, and folders.
fn make_repo(root: &Path, name: &str) -> (PathBuf, String, String) {
    let repo = root.join(name);
    std::fs::create_dir_all(repo.join("src")).unwrap();
    std::fs::create_dir_all(repo.join("docs")).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("src/app.py"), "print('v1')\n").unwrap();
    std::fs::write(repo.join("docs/readme.md"), "docs\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "one"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("src/app.py"), "print('v2')\n").unwrap();
    git(&repo, &["commit", "-qam", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["branch", "feature/x"]);
    (repo, first, second)
}

fn pull(dir: &Path, step: Value) -> (i32, Value, String) {
    let yaml =
        serde_json::to_string(&json!({"pull": [{"prefect.deployments.steps.git_clone": step}]}))
            .unwrap();
    support::write_project(dir, yaml);
    // Hoist's home (where it keeps git directories) outside the project.
    let home = dir.parent().unwrap().join("hoist-home");
    let (code, out, err) = run(hoist(&home).current_dir(dir).args(["pull"]));
    (code, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

#[test]
fn clones_local_repositories_with_every_option() {
    let (_t, root) = support::tempdir();
    let (repo, first, _second) = make_repo(&root, "origin-repo.git");
    let work = root.join("work");
    std::fs::create_dir(&work).unwrap();
    let url = format!("file://{}", repo.display());

    // C35/C36: default name, output relative to the working directory.
    let (code, out, err) = pull(&work, json!({"repository": url}));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["directory"], "origin-repo");
    assert_eq!(
        std::fs::read_to_string(work.join("origin-repo/src/app.py")).unwrap(),
        "print('v2')\n"
    );
    assert_eq!(
        git(
            &work.join("origin-repo"),
            &["rev-parse", "--is-shallow-repository"]
        ),
        "true"
    );

    // Re-run on the existing checkout: same remote → updated in place.
    std::fs::write(repo.join("new.txt"), "new\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "three"]);
    let (code, _, err) = pull(&work, json!({"repository": url}));
    assert_eq!(code, 0, "{err}");
    assert!(
        work.join("origin-repo/new.txt").exists(),
        "pull brought the new commit"
    );

    // Branch with '/' → directory name with '-'.
    let (code, out, err) = pull(&work, json!({"repository": url, "branch": "feature/x"}));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["directory"], "origin-repo-feature-x");
    assert_eq!(
        git(
            &work.join("origin-repo-feature-x"),
            &["rev-parse", "--abbrev-ref", "HEAD"]
        ),
        "feature/x"
    );

    // Commit pinning, and a custom directory name.
    let (code, out, err) = pull(
        &work,
        json!({"repository": url, "commit_sha": first, "clone_directory_name": "pinned"}),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["directory"], "pinned");
    assert_eq!(git(&work.join("pinned"), &["rev-parse", "HEAD"]), first);
    assert_eq!(
        std::fs::read_to_string(work.join("pinned/src/app.py")).unwrap(),
        "print('v1')\n"
    );
    // Again: already at that commit, nothing to do.
    let (code, _, err) = pull(
        &work,
        json!({"repository": url, "commit_sha": first, "clone_directory_name": "pinned"}),
    );
    assert_eq!(code, 0, "{err}");

    // Sparse checkout of one directory.
    let (code, _, err) = pull(
        &work,
        json!({"repository": url, "directories": ["src"], "clone_directory_name": "sparse"}),
    );
    assert_eq!(code, 0, "{err}");
    assert!(work.join("sparse/src/app.py").exists());
    assert!(
        !work.join("sparse/docs/readme.md").exists(),
        "docs/ is outside the sparse set"
    );

    // An existing checkout of another repository is an error, not retried.
    let (other, _, _) = make_repo(&root, "other.git");
    let (code, _, err) = pull(
        &work,
        json!({"repository": format!("file://{}", other.display()), "clone_directory_name": "origin-repo"}),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "The existing repository at {} does not match the configured repository file://{}",
            work.join("origin-repo").display(),
            other.display()
        )),
        "{err}"
    );
    assert!(!err.contains("retrying"), "{err}");
}

/// A clone that cannot succeed (no such repository, no such commit) fails at once with
/// git's own `fatal:` line, and leaves no partial directory; only network failures are
/// retried.
#[test]
fn permanent_clone_failures_are_not_retried_and_leave_nothing() {
    let (_t, root) = support::tempdir();
    let dir = root.join("work");
    std::fs::create_dir(&dir).unwrap();
    let (repo, _, _) = make_repo(&root, "src");
    let url = format!("file://{}", repo.display());
    let missing = format!("{url}-missing");
    let (code, _, err) = pull(&dir, json!({"repository": missing}));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not a git repository"), "{err}");
    assert!(!err.contains("attempt 1 of 3"), "retried:\n{err}");
    let (code, _, err) = pull(
        &dir,
        json!({"repository": url, "commit_sha": "0123456789abcdef0123456789abcdef01234567"}),
    );
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("attempt 1 of 3"), "retried:\n{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("fatal: ") || last.contains("error: "),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "prefect.yaml")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A network failure (nothing listening) is retried, three attempts in all.
#[test]
fn network_failures_are_retried() {
    let (_t, root) = support::tempdir();
    let dir = root.join("work");
    std::fs::create_dir(&dir).unwrap();
    let port = support::free_port();
    let url = format!("https://127.0.0.1:{port}/r.git");
    support::write_project(
        &dir,
        serde_json::to_string(
            &json!({"pull": [{"prefect.deployments.steps.git_clone": {"repository": url}}]}),
        )
        .unwrap(),
    );
    let home = root.join("hoist-home");
    let (code, _, err) = run(hoist(&home)
        .current_dir(&dir)
        .args(["pull", "--allow"])
        .arg(format!("net:https://127.0.0.1:{port}")));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("attempt 1 of 3") && err.contains("attempt 2 of 3"),
        "{err}"
    );
    assert!(err.contains("fatal: unable to access"), "{err}");
}

#[test]
fn submodules_are_cloned_when_asked() {
    let (_t, root) = support::tempdir();
    let (lib, _, _) = make_repo(&root, "lib.git");
    let (app, _, _) = make_repo(&root, "app.git");
    git(
        &app,
        &[
            "submodule",
            "add",
            "-q",
            &format!("file://{}", lib.display()),
            "vendor/lib",
        ],
    );
    git(&app, &["commit", "-qm", "add submodule"]);
    let work = root.join("work");
    std::fs::create_dir(&work).unwrap();
    let (code, _, err) = pull(
        &work,
        json!({"repository": format!("file://{}", app.display()), "include_submodules": true}),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        work.join("app/vendor/lib/src/app.py").exists(),
        "submodule checked out"
    );
}

#[test]
fn validation_happens_before_any_git_command() {
    let (_t, root) = support::tempdir();
    let dir = root.join("work");
    std::fs::create_dir(&dir).unwrap();
    for (step, msg) in [
        (
            json!({"repository": "https://github.com/org/repo.git", "branch": "--upload-pack=touch /tmp/pwned"}),
            "Branch names cannot start with '-'.",
        ),
        (
            json!({"repository": "https://github.com/org/repo.git", "branch": "main", "commit_sha": "1234567890"}),
            "Cannot provide both a branch and a commit SHA. Please provide only one.",
        ),
        (
            json!({"repository": "https://github.com/org/repo.git", "commit_sha": "-c core.sshCommand=evil"}),
            "Invalid commit SHA: '-c core.sshCommand=evil'.",
        ),
        (
            json!({"repository": "https://github.com/org/repo.git", "access_token": "t", "credentials": {"token": "u"}}),
            "Please provide either an access token or credentials but not both.",
        ),
        (
            json!({"repository": "https://github.com/org/repo.git", "credentials": {"username": "u"}}),
            "If a username is provided, an access token or password must also be provided.",
        ),
        (
            json!({"repository": "ext::sh -c touch% /tmp/pwned"}),
            "the `ext::` git transport is not allowed",
        ),
        (
            json!({"repository": "--upload-pack=touch /tmp/pwned"}),
            "repository URL `--upload-pack=touch /tmp/pwned` cannot start with '-'",
        ),
    ] {
        let (code, _, err) = pull(&dir, step.clone());
        assert_eq!(code, 1, "{step}");
        assert!(err.contains(msg), "{step}: {err}");
    }
    assert!(!Path::new("/tmp/pwned").exists());
}

/// A TLS smart-HTTP git server that serves `root` and requires Basic auth with `token`
/// as the user name or the password (as GitHub takes a token as the user name). Python's standard library, git's own http-backend.
struct GitServer {
    server: Server,
    ca: PathBuf,
}

const SERVER: &str = r#"
import base64, http.server, os, ssl, subprocess, sys
root, token, cert, key = sys.argv[1:5]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def handle_any(self):
        auth = self.headers.get("Authorization", "")
        ok = auth.startswith("Basic ") and token in base64.b64decode(auth[6:]).decode().split(":", 1)
        if not ok:
            self.send_response(401); self.send_header("WWW-Authenticate", 'Basic realm="git"'); self.end_headers(); return
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1", PATH_INFO=path, QUERY_STRING=query,
                   REQUEST_METHOD=self.command, CONTENT_TYPE=self.headers.get("Content-Type", ""), REMOTE_USER="u")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, rest = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "status": status = int(v.strip().split()[0])
            elif k: headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Length", str(len(rest))); self.end_headers(); self.wfile.write(rest)
    do_GET = do_POST = handle_any
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

impl GitServer {
    fn start(root: &Path, token: &str, tmp: &Path) -> GitServer {
        let (cert, key) = (tmp.join("cert.pem"), tmp.join("key.pem"));
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl");
        let mut child = Command::new("python3")
            .args(["-c", SERVER])
            .arg(root)
            .arg(token)
            .arg(&cert)
            .arg(&key)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line.trim().parse().unwrap();
        GitServer {
            server: Server(child, port),
            ca: cert,
        }
    }
}

#[test]
fn a_token_protected_https_server_needs_the_token_and_never_sees_it_leak() {
    let (_t, root) = support::tempdir();
    let served = root.join("served");
    std::fs::create_dir(&served).unwrap();
    let (repo, _, _) = make_repo(&root, "src-repo");
    git(
        &root,
        &[
            "clone",
            "-q",
            "--bare",
            repo.to_str().unwrap(),
            served.join("proj.git").to_str().unwrap(),
        ],
    );
    let token = "tok-SUPER-SECRET-42";
    let server = GitServer::start(&served, token, &root);
    let url = format!("https://127.0.0.1:{}/proj.git", server.server.1);
    let work = root.join("work");
    std::fs::create_dir(&work).unwrap();
    let (_h, home) = support::tempdir();
    let (code, _, err) = run(hoist(&home).args(["block", "set", "secret", "gh", "--value", token]));
    assert_eq!(code, 0, "{err}");

    let run_pull = |step: Value| {
        let yaml = serde_json::to_string(
            &json!({"pull": [{"prefect.deployments.steps.git_clone": step}]}),
        )
        .unwrap();
        std::fs::write(work.join("prefect.yaml"), yaml).unwrap();
        // The server is on loopback: granted by name, as a user would.
        run(hoist(&home)
            .current_dir(&work)
            .env("GIT_SSL_CAINFO", &server.ca)
            .arg("pull")
            .arg("--allow")
            .arg(format!("net:https://127.0.0.1:{}", server.server.1)))
    };

    // Without the token: refused by the server, git's line and a hint, no retry (a new
    // attempt cannot fix credentials).
    let (code, _, err) = run_pull(json!({"repository": url}));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "Failed to clone repository '{url}' with exit code 128. fatal: Authentication failed for '{url}/'"
        )),
        "{err}"
    );
    assert!(!err.contains("attempt 1 of 3"), "{err}");

    // With it (from a secret block): cloned; the token is nowhere.
    let (code, out, err) = run_pull(
        json!({"repository": url, "access_token": "{{ prefect.blocks.secret.gh }}", "clone_directory_name": "proj"}),
    );
    assert_eq!(code, 0, "{err}");
    assert!(work.join("proj/src/app.py").exists());
    // `.git` is a gitfile: the git directory is Hoist's, in its home.
    let gitfile = std::fs::read_to_string(work.join("proj/.git")).unwrap();
    let git_dir = PathBuf::from(gitfile.trim().strip_prefix("gitdir: ").unwrap());
    assert!(
        git_dir.starts_with(support::home_of(&home).join("git")),
        "{gitfile}"
    );
    let config = std::fs::read_to_string(git_dir.join("config")).unwrap();
    for text in [&out, &err, &config] {
        assert!(!text.contains(token), "token leaked: {text}");
    }
    // And an update of the existing checkout authenticates the same way.
    let (code, _, err) = run_pull(
        json!({"repository": url, "access_token": "{{ prefect.blocks.secret.gh }}", "clone_directory_name": "proj"}),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains(token));
}

#[test]
fn plugins_need_a_network_grant_for_the_repository_host() {
    let (_t, dir) = support::tempdir();
    let grants = ["--allow", "process:*", "--allow", "env:*"];
    let probe = |url: &str, extra: &[&str]| {
        run(hoist(&dir)
            .current_dir(&dir)
            .args([
                "step",
                "run",
                support::plugins::PROBE,
                "-i",
                "action=git_clone",
                "-i",
            ])
            .arg(format!("url={url}"))
            .args(["-i", "dest=out"])
            .args(grants)
            .args(extra))
    };
    let (code, _, err) = probe("https://github.com/org/repo.git", &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("may not reach https://github.com:443"),
        "{err}"
    );
    assert!(
        err.contains("capability `net:https://github.com:443` was not granted"),
        "{err}"
    );
    let (code, _, err) = probe("git@github.com:org/repo.git", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("may not reach ssh://github.com:22"), "{err}");
    // A local repository outside the directories the plugin can read is denied too.
    let (code, _, err) = probe("file:///etc", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("may not read /etc with git"), "{err}");
    // So is a destination outside its writable directories.
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args([
            "step",
            "run",
            support::plugins::PROBE,
            "-i",
            "action=git_clone",
            "-i",
        ])
        .arg(format!("url=file://{}/repo", dir.display()))
        .args(["-i", "dest=/tmp/elsewhere"])
        .args(grants));
    assert_eq!(code, 1);
    assert!(
        err.contains("may not write /tmp/elsewhere with git"),
        "{err}"
    );
}

/// C27: git_clone's output feeds pip_install_requirements' `directory`.
#[test]
fn c27_clone_then_install_requirements_from_the_clone() {
    let (_t, root) = support::tempdir();
    let python = support::venv(&root);
    // A repository whose requirements.txt installs nothing from the network: an empty
    // requirements file, so pip succeeds offline; what is checked is where it ran.
    let repo = root.join("hello-projects");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("requirements.txt"), "# nothing to install\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "reqs"]);
    let work = root.join("x");
    std::fs::create_dir(&work).unwrap();
    let yaml = format!(
        "pull:\n  - prefect.deployments.steps.git_clone:\n      id: clone-step\n      repository: file://{}\n  - prefect.deployments.steps.pip_install_requirements:\n      id: pip-install-step\n      directory: \"{{{{ clone-step.directory }}}}\"\n      requirements_file: requirements.txt\n",
        repo.display()
    );
    std::fs::write(work.join("prefect.yaml"), yaml).unwrap();
    let (code, out, err) = run(hoist(&root.join("hoist-home"))
        .current_dir(&work)
        .env("HOIST_PYTHON", &python)
        .arg("pull"));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clone-step"], json!({"directory": "hello-projects"}));
    assert_eq!(v["directory"], "hello-projects");
    assert_eq!(v["pip-install-step"]["stderr"], "");
    // The working directory is the clone, as a worker would run the flow there.
    assert!(
        err.contains(&format!(
            "working directory: {}",
            work.join("hello-projects").display()
        )),
        "{err}"
    );
}

/// A local repository written as a plain path (not `file://`), as Prefect users write
/// it: git is handed the checked git directory as a `file://` URL, so the rule that
/// rewrites the user's path to it cannot rewrite it a second time (`/r/.git/.git`).
#[test]
fn clones_a_local_repository_given_as_a_plain_path() {
    let (_t, root) = support::tempdir();
    let (repo, _first, second) = make_repo(&root, "plain-path-repo");
    let work = root.join("work");
    std::fs::create_dir(&work).unwrap();
    let (code, out, err) = pull(&work, json!({"repository": repo.display().to_string()}));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["directory"], "plain-path-repo");
    assert_eq!(
        std::fs::read_to_string(work.join("plain-path-repo/src/app.py")).unwrap(),
        "print('v2')\n"
    );
    assert_eq!(
        git(&work.join("plain-path-repo"), &["rev-parse", "HEAD"]),
        second
    );
}
