//! A plugin granted nothing (`hostile`), or what a half-trusted one gets
//! (`hostile_granted`), attacks the host's git: planted repository state, gitfiles,
//! alternates, an enclosing repository, `file://` spellings, submodules, loopback
//! remotes. Each attack checks the refusal (or that it was harmless) *and* that nothing
//! happened outside: canaries a planted program would create stay absent, secrets stay
//! unread, servers see no request.
//!
//! Layout of every test: `<root>/work` is the step's working directory (its only
//! preopen), `<root>/outside` is not reachable, `<root>/home` is `HOIST_HOME`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{self, git, hoist, plugins, run};

struct Env {
    _t: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    outside: PathBuf,
    home: PathBuf,
}

fn env() -> Env {
    let (t, root) = support::tempdir();
    let (work, outside, home) = (root.join("work"), root.join("outside"), root.join("home"));
    for d in [&work, &outside] {
        std::fs::create_dir(d).unwrap();
    }
    Env {
        _t: t,
        root,
        work,
        outside,
        home,
    }
}

/// A repository at `path` with one file and two commits; returns the first commit.
fn make_repo(path: &Path, file: &str, contents: &str) -> String {
    std::fs::create_dir_all(path.join("src")).unwrap();
    git(path, &["init", "-q"]);
    std::fs::write(path.join(file), contents).unwrap();
    std::fs::write(path.join("src/app.py"), "v1\n").unwrap();
    git(path, &["add", "."]);
    git(path, &["commit", "-qm", "one"]);
    let first = git(path, &["rev-parse", "HEAD"]);
    std::fs::write(path.join("src/app.py"), "v2\n").unwrap();
    git(path, &["commit", "-qam", "two"]);
    first
}

/// Run a hostile plugin's `actions` in `work`; its per-action results.
fn attack(e: &Env, plugin: &str, allow: &[String], actions: Value) -> Vec<Value> {
    let mut cmd = hoist(&e.home);
    cmd.current_dir(&e.work)
        .args(["step", "run", plugin, "-q", "--inputs-json"])
        .arg(json!({ "actions": actions }).to_string());
    for a in allow {
        cmd.args(["--allow", a]);
    }
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}"));
    v["results"].as_array().unwrap().clone()
}

/// What `hostile_granted` must be granted to run: all it declares (`net:*` included).
fn granted_all() -> Vec<String> {
    ["set-cwd", "process:git", "process:sh", "net:*"]
        .map(String::from)
        .to_vec()
}

#[track_caller]
fn ok(r: &Value) -> &Value {
    assert!(r.get("err").is_none(), "expected success: {r}");
    &r["ok"]
}

#[track_caller]
fn err(r: &Value) -> String {
    r["err"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error: {r}"))
        .to_string()
}

/// An executable `sh` script at `path` creating `canary` (a hook, or a renamed sample).
fn plant_script(path: &Path, canary: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\ntouch {}\n", canary.display())).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Config that runs `touch <canary>` through every way git runs configured programs.
fn evil_config(canary: &Path, url: &str) -> String {
    let c = canary.display();
    format!(
        "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\
         \tfsmonitor = \"touch {c}; false\"\n\tsshCommand = \"touch {c}; false\"\n\
         \tgitProxy = \"touch {c}; false\"\n\tpager = \"touch {c}; cat\"\n\
         [remote \"origin\"]\n\turl = {url}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n\
         \tuploadpack = \"touch {c}; git-upload-pack\"\n\
         [filter \"x\"]\n\tsmudge = \"touch {c}; cat\"\n\tclean = \"touch {c}; cat\"\n\
         \tprocess = \"touch {c}\"\n\trequired = true\n\
         [credential]\n\thelper = \"!touch {c}; false\"\n\
         [branch \"main\"]\n\tremote = origin\n\tmerge = refs/heads/main\n"
    )
}

/// A real git directory at `dir/.git` with `evil_config` and executable hooks, as a
/// plugin would plant it (the hooks' exec bit simulating renamed `*.sample` files).
fn plant_git_dir(dir: &Path, canary: &Path, url: &str) {
    let tmp = dir.with_extension("planting");
    std::fs::create_dir_all(&tmp).unwrap();
    git(&tmp, &["init", "-q"]);
    let g = tmp.join(".git");
    std::fs::write(g.join("config"), evil_config(canary, url)).unwrap();
    for hook in [
        "post-checkout",
        "post-merge",
        "pre-auto-gc",
        "reference-transaction",
        "post-rewrite",
        "fsmonitor-watchman",
    ] {
        plant_script(&g.join("hooks").join(hook), canary);
    }
    let _ = std::fs::remove_file(dir.join(".git"));
    let _ = std::fs::remove_dir_all(dir.join(".git"));
    std::fs::rename(&g, dir.join(".git")).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(dir.join(".gitattributes"), "* filter=x\n").unwrap();
}

fn url(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// The git directory Hoist keeps for the clone at `work` (from its gitfile).
fn hoist_git_dir(e: &Env, work: &Path) -> PathBuf {
    let text = std::fs::read_to_string(work.join(".git")).unwrap();
    let dir = PathBuf::from(text.trim().strip_prefix("gitdir: ").unwrap());
    assert!(
        dir.starts_with(support::home_of(&e.home).join("git")),
        "{text}"
    );
    dir
}

/// Root cause 1, every operation: a plugin that replaces its clone's `.git` with a git
/// directory of its own (config with fsmonitor, uploadpack, sshCommand, filters, a
/// credential helper; executable hooks; another remote) changes nothing: Hoist uses the
/// git directory it keeps, and nothing planted runs.
#[test]
fn a_planted_git_directory_is_never_used() {
    let e = env();
    let src = e.work.join("src");
    let first = make_repo(&src, "README", "hello\n");
    let canary = e.root.join("canary");
    let wt = e.work.join("wt");
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([{"do": "git_clone", "url": url(&src), "dest": wt}]),
    );
    ok(&r[0]);
    // Hoist's git directory, with its marker; `.git` in the worktree is a gitfile.
    let git_dir = hoist_git_dir(&e, &wt);
    assert_eq!(
        std::fs::read_to_string(git_dir.join("hoist-worktree")).unwrap(),
        wt.display().to_string()
    );

    // The plugin plants a `.git` directory pointing at a repository outside.
    let secret = e.outside.join("secret");
    make_repo(&secret, "SECRET", "top secret\n");
    plant_git_dir(&wt, &canary, &url(&secret));
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([
            {"do": "git_checkout", "repo": wt, "rev": first},
            {"do": "git_sparse", "repo": wt, "dirs": ["src"]},
            {"do": "git_checkout", "repo": wt, "rev": "main"},
            {"do": "git_fetch", "repo": wt},
            {"do": "git_pull", "repo": wt},
            {"do": "git_remote_url", "repo": wt},
            {"do": "git_rev_parse", "repo": wt, "rev": "HEAD"},
            {"do": "git_is_shallow", "repo": wt},
            {"do": "git_is_sparse", "repo": wt},
            {"do": "exists", "path": wt.join("SECRET")},
        ]),
    );
    for x in &r[..5] {
        ok(x);
    }
    assert_eq!(ok(&r[5]), &json!(url(&src)), "the remote Hoist recorded");
    assert_eq!(ok(&r[6]), &json!(git(&src, &["rev-parse", "HEAD"])));
    assert_eq!(ok(&r[7]), &json!(false));
    assert_eq!(ok(&r[8]), &json!(true), "sparse, as Hoist set it");
    assert_eq!(
        ok(&r[9]),
        &json!(false),
        "nothing fetched from the planted remote"
    );
    assert!(!canary.exists(), "a planted hook, filter or config ran");
}

/// Root cause 1: a gitfile is never followed. A directory whose `.git` points at a
/// repository outside (or at another clone's git directory in Hoist's home) is not a
/// repository for any operation, and the other repository's token is not read.
#[test]
fn gitfiles_do_not_lead_to_other_repositories() {
    let e = env();
    // A repository outside, whose remote URL carries a token.
    let secret = e.outside.join("secret");
    make_repo(&secret, "SECRET", "top secret\n");
    let token = "ghp_TOKEN_FROM_ELSEWHERE";
    git(
        &secret,
        &[
            "remote",
            "add",
            "origin",
            &format!("https://x:{token}@example.com/r.git"),
        ],
    );
    let fake = e.work.join("fake");
    std::fs::create_dir(&fake).unwrap();
    let gitfile = format!("gitdir: {}\n", secret.join(".git").display());
    let ops = |repo: &Path| {
        json!([
            {"do": "git_remote_url", "repo": repo},
            {"do": "git_rev_parse", "repo": repo, "rev": "HEAD"},
            {"do": "git_is_shallow", "repo": repo},
            {"do": "git_is_sparse", "repo": repo},
            {"do": "git_fetch", "repo": repo},
            {"do": "git_checkout", "repo": repo, "rev": "main"},
            {"do": "git_pull", "repo": repo},
            {"do": "git_sparse", "repo": repo, "dirs": ["src"]},
        ])
    };
    let mut actions = vec![json!({"do": "write", "path": fake.join(".git"), "contents": gitfile})];
    actions.extend(ops(&fake).as_array().unwrap().iter().cloned());
    let r = attack(&e, plugins::HOSTILE, &[], Value::Array(actions));
    ok(&r[0]);
    for x in &r[1..] {
        let m = err(x);
        assert!(
            m.contains(&format!(
                "`{}` is not a repository cloned by Hoist",
                fake.display()
            )) && m.contains("remove it to clone again"),
            "{m}"
        );
        assert!(!m.contains(token), "{m}");
    }
    assert!(!fake.join("SECRET").exists());

    // Another clone made by Hoist, outside this step's reach, with a token in its URL
    // (as a user might write it). A plugin's clone whose gitfile is rewritten to point
    // at that clone's git directory still reports its own remote.
    let other_cwd = e.outside.join("proj");
    std::fs::create_dir(&other_cwd).unwrap();
    let other_src = other_cwd.join("src");
    make_repo(&other_src, "OTHER", "x\n");
    let out = run(hoist(&e.home)
        .current_dir(&other_cwd)
        .args(["step", "run", plugins::HOSTILE, "-q", "--inputs-json"])
        .arg(
            json!({"actions": [{"do": "git_clone", "url": url(&other_src), "dest": "clone"}]})
                .to_string(),
        ));
    assert!(out.1.contains("\"ok\""), "{out:?}");
    let other_clone = other_cwd.join("clone");
    let other_git_dir = hoist_git_dir(&e, &other_clone);
    git(
        &other_clone,
        &[
            "remote",
            "set-url",
            "origin",
            &format!("https://x:{token}@example.com/r.git"),
        ],
    );
    let mine = e.work.join("mine");
    let src = e.work.join("src");
    make_repo(&src, "README", "hi\n");
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([
            {"do": "git_clone", "url": url(&src), "dest": mine},
            {"do": "write", "path": mine.join(".git"), "contents": format!("gitdir: {}\n", other_git_dir.display())},
            {"do": "git_remote_url", "repo": mine},
            {"do": "git_rev_parse", "repo": mine, "rev": "HEAD"},
            // Cloning the directory whose gitfile points at the other clone's git dir.
            {"do": "git_clone", "url": url(&mine), "dest": e.work.join("stolen")},
        ]),
    );
    ok(&r[0]);
    assert_eq!(ok(&r[2]), &json!(url(&src)));
    assert_eq!(ok(&r[3]), &json!(git(&src, &["rev-parse", "HEAD"])));
    let m = err(&r[4]);
    assert!(
        m.contains("points into another repository's git directory"),
        "{m}"
    );
    assert!(!e.work.join("stolen/OTHER").exists());
}

/// Root cause 1: a directory with its own `.git` (made by `git init`, or by the plugin)
/// is not a repository Hoist cloned: refused with what to do, and its planted config
/// never runs.
#[test]
fn a_repository_hoist_did_not_clone_is_refused() {
    let e = env();
    let canary = e.root.join("canary");
    let mine = e.work.join("mine");
    make_repo(&mine, "README", "x\n");
    plant_git_dir(&mine, &canary, "file:///nowhere");
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([
            {"do": "git_checkout", "repo": mine, "rev": "main"},
            {"do": "git_is_sparse", "repo": mine},
        ]),
    );
    for x in &r {
        let m = err(x);
        assert!(
            m.contains("is not a repository cloned by Hoist") && m.contains("remove it"),
            "{m}"
        );
    }
    assert!(!canary.exists());
}

/// Root cause 1 (defence in depth): configuration outside the allow-list in Hoist's own
/// git directory (which no step can write; here the test writes it) is refused before
/// git runs, and hooks there never run.
#[test]
fn configuration_outside_the_allow_list_is_refused() {
    let e = env();
    let src = e.work.join("src");
    make_repo(&src, "README", "x\n");
    let canary = e.root.join("canary");
    let wt = e.work.join("wt");
    ok(&attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([{"do": "git_clone", "url": url(&src), "dest": wt}]),
    )[0]);
    let git_dir = hoist_git_dir(&e, &wt);
    // A renamed hook sample: with the exec bit it would run on checkout.
    plant_script(&git_dir.join("hooks/post-checkout"), &canary);
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([{"do": "git_checkout", "repo": wt, "rev": "HEAD~1"}]),
    );
    ok(&r[0]);
    assert!(!canary.exists(), "a hook in Hoist's git directory ran");

    let config = std::fs::read_to_string(git_dir.join("config")).unwrap();
    std::fs::write(
        git_dir.join("config"),
        format!(
            "{config}[remote \"origin\"]\n\tuploadpack = \"touch {}; git-upload-pack\"\n",
            canary.display()
        ),
    )
    .unwrap();
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([
            {"do": "git_fetch", "repo": wt},
            {"do": "git_pull", "repo": wt},
            {"do": "git_remote_url", "repo": wt},
        ]),
    );
    for x in &r {
        let m = err(x);
        assert!(
            m.contains("has configuration Hoist does not allow (`remote.origin.uploadpack`)"),
            "{m}"
        );
    }
    assert!(!canary.exists(), "the configured upload-pack ran");
}

/// Root cause 1: Hoist refuses to keep git directories where a step can reach them.
#[test]
fn a_git_store_inside_the_steps_directories_is_refused() {
    let e = env();
    let src = e.work.join("src");
    make_repo(&src, "README", "x\n");
    let mut cmd = hoist(&e.work.join(".hoist"));
    cmd.current_dir(&e.work)
        .args(["step", "run", plugins::HOSTILE, "-q", "--inputs-json"])
        .arg(json!({"actions": [{"do": "git_clone", "url": url(&src), "dest": "wt"}]}).to_string());
    // The runtime refuses first: a plugin is never given a directory holding Hoist's
    // home. (The git capability checks the same again, for embedders.)
    let (code, out, errs) = run(&mut cmd);
    assert_eq!(code, 1, "{out}");
    assert!(
        errs.contains("which is or holds Hoist's own directory"),
        "{errs}"
    );
    assert!(!e.work.join("wt").exists());
}

/// Clones onto a path whose worktree was deleted work (the stale git directory is
/// replaced), and git directories of deleted worktrees are collected.
#[test]
fn stale_git_directories_are_replaced_and_collected() {
    let e = env();
    let src = e.work.join("src");
    make_repo(&src, "README", "x\n");
    let (a, b) = (e.work.join("a"), e.work.join("b"));
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([
            {"do": "git_clone", "url": url(&src), "dest": a},
            {"do": "git_clone", "url": url(&src), "dest": b},
        ]),
    );
    ok(&r[0]);
    ok(&r[1]);
    let (ga, gb) = (hoist_git_dir(&e, &a), hoist_git_dir(&e, &b));
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([
            // `a` emptied (its git directory is stale), `b` deleted (collected).
            {"do": "remove", "path": a},
            {"do": "mkdir", "path": a},
            {"do": "remove", "path": b},
            {"do": "git_clone", "url": url(&src), "dest": a},
            {"do": "git_rev_parse", "repo": a, "rev": "HEAD"},
        ]),
    );
    for x in &r {
        ok(x);
    }
    assert_eq!(hoist_git_dir(&e, &a), ga);
    assert!(
        !gb.exists(),
        "the git directory of the deleted `b` was collected"
    );
}

/// Root cause 2: git never walks up into an enclosing repository the step cannot
/// reach, and its configuration never runs.
#[test]
fn an_enclosing_repository_is_not_used() {
    let e = env();
    let canary = e.root.join("canary");
    let src = e.work.join("src");
    make_repo(&src, "README", "x\n");
    // `<root>` itself is a repository (not preopened), with planted config and hooks.
    std::fs::write(e.root.join("top.txt"), "top\n").unwrap();
    git(&e.root, &["init", "-q"]);
    git(&e.root, &["add", "top.txt"]);
    git(&e.root, &["commit", "-qm", "top"]);
    let top = git(&e.root, &["rev-parse", "HEAD"]);
    let config = std::fs::read_to_string(e.root.join(".git/config")).unwrap();
    std::fs::write(
        e.root.join(".git/config"),
        format!("{config}{}", evil_config(&canary, "file:///nowhere")),
    )
    .unwrap();
    plant_script(&e.root.join(".git/hooks/post-checkout"), &canary);
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([
            {"do": "git_rev_parse", "repo": e.work, "rev": "HEAD"},
            {"do": "git_remote_url", "repo": e.work},
            {"do": "git_checkout", "repo": e.work, "rev": "HEAD"},
            {"do": "git_clone", "url": url(&src), "dest": "wt"},
            {"do": "git_checkout", "repo": "wt", "rev": "HEAD~1"},
        ]),
    );
    for x in &r[..3] {
        let m = err(x);
        assert!(m.contains("is not a repository cloned by Hoist"), "{m}");
        assert!(!m.contains(&top), "{m}");
    }
    ok(&r[3]);
    ok(&r[4]);
    assert!(!canary.exists());
}

/// Root cause 3: a `file://` URL is checked as git reads it: an authority and
/// percent-encoded `..` are refused, as is a plain path outside, and nothing outside
/// is cloned.
#[test]
fn file_urls_are_checked_as_git_reads_them() {
    let e = env();
    let secret = e.outside.join("secret");
    make_repo(&secret, "SECRET", "top secret\n");
    let s = secret.display().to_string();
    let w = e.work.display().to_string();
    let rel = "../outside/secret".to_string();
    let cases: Vec<(String, String)> = vec![
        (
            format!("file://x{s}"),
            "a file:// URL must have an empty host".into(),
        ),
        (
            format!("file://localhost{s}"),
            "a file:// URL must have an empty host".into(),
        ),
        (
            format!("file://{w}/%2e%2e/outside/secret"),
            format!("may not read {s} with git"),
        ),
        (
            format!("file://{w}/%2E%2E/outside/%73ecret"),
            format!("may not read {s} with git"),
        ),
        (rel, format!("may not read {s} with git")),
        (
            format!("file://{w}/%zz"),
            "malformed percent-encoding".into(),
        ),
    ];
    let actions: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (u, _))| json!({"do": "git_clone", "url": u, "dest": format!("c{i}")}))
        .collect();
    let r = attack(&e, plugins::HOSTILE, &[], Value::Array(actions));
    for (i, (u, want)) in cases.iter().enumerate() {
        let m = err(&r[i]);
        assert!(m.contains(want.as_str()), "{u}: {m}");
        assert!(!e.work.join(format!("c{i}")).exists(), "{u}");
    }
}

/// Root cause 3: what git would open for a local repository is checked too: a gitfile
/// leading outside, alternates borrowing objects from outside, a symlink in the git
/// directory leading outside.
#[test]
fn local_sources_cannot_borrow_from_outside() {
    let e = env();
    let secret = e.outside.join("secret");
    make_repo(&secret, "SECRET", "top secret\n");
    let secret_head = git(&secret, &["rev-parse", "HEAD"]);

    // A gitfile.
    let via_gitfile = e.work.join("via-gitfile");
    std::fs::create_dir(&via_gitfile).unwrap();
    // Alternates (written by the plugin) plus a ref to the secret commit.
    let via_alt = e.work.join("via-alternates");
    make_repo(&via_alt, "README", "x\n");
    // A symlinked objects directory (as a plugin could make with a relative link).
    let via_link = e.work.join("via-symlink");
    make_repo(&via_link, "README", "x\n");
    std::fs::remove_dir_all(via_link.join(".git/objects")).unwrap();
    std::os::unix::fs::symlink(
        "../../../outside/secret/.git/objects",
        via_link.join(".git/objects"),
    )
    .unwrap();
    std::fs::write(
        via_link.join(".git/refs/heads/main"),
        format!("{secret_head}\n"),
    )
    .unwrap();

    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([
            {"do": "write", "path": via_gitfile.join(".git"),
             "contents": format!("gitdir: {}\n", secret.join(".git").display())},
            {"do": "write", "path": via_alt.join(".git/objects/info/alternates"),
             "contents": format!("{}\n", secret.join(".git/objects").display())},
            {"do": "write", "path": via_alt.join(".git/refs/heads/stolen"),
             "contents": format!("{secret_head}\n")},
            {"do": "git_clone", "url": url(&via_gitfile), "dest": "c1"},
            {"do": "git_clone", "url": url(&via_alt), "dest": "c2"},
            {"do": "git_clone", "url": via_link, "dest": "c3"},
        ]),
    );
    for x in &r[..3] {
        ok(x);
    }
    let m = err(&r[3]);
    assert!(
        m.contains(&format!("may not read {}/.git with git", secret.display())),
        "{m}"
    );
    let m = err(&r[4]);
    assert!(m.contains("borrows objects from"), "{m}");
    let m = err(&r[5]);
    assert!(m.contains("leads outside the directories"), "{m}");
    for d in ["c1", "c2", "c3"] {
        assert!(!e.work.join(d).exists(), "{d}");
    }
}

/// A loopback HTTP server that counts requests (a line per request in `log`).
fn counting_server(log: &Path) -> support::Server {
    let port = support::free_port();
    let script = format!(
        "import http.server\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       open({log:?}, 'a').write(self.path + '\\n'); self.send_response(404); self.end_headers()\n\
         \x20   do_POST = do_GET\n\
         \x20   def log_message(self, *a): pass\n\
         http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n",
        log = log.display().to_string()
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    support::Server::start(cmd, port, "counting http server")
}

fn requests(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// A remote on loopback needs a grant of that host by name, even with `net:*`; then
/// (and only then) git reaches it.
#[test]
fn loopback_remotes_need_a_grant_by_name() {
    let e = env();
    let log = e.root.join("requests.log");
    let server = counting_server(&log);
    let port = server.1;
    let r = attack(
        &e,
        plugins::HOSTILE_GRANTED,
        &granted_all(),
        json!([
            {"do": "git_clone", "url": format!("http://127.0.0.1:{port}/r.git"), "dest": "a"},
            {"do": "git_clone", "url": format!("http://localhost:{port}/r.git"), "dest": "b"},
        ]),
    );
    for x in &r {
        let m = err(x);
        assert!(
            m.contains("a loopback, link-local, private or metadata address")
                && m.contains("grant it by name to allow it: `net:http://"),
            "{m}"
        );
    }
    assert!(err(&r[0]).contains(&format!("`net:http://127.0.0.1:{port}`")));
    // The plugin without any grant is stopped earlier, by the net grant itself.
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([{"do": "git_clone", "url": format!("http://127.0.0.1:{port}/r.git"), "dest": "a"}]),
    );
    assert!(err(&r[0]).contains("was not granted"), "{r:?}");
    assert_eq!(requests(&log), "", "no request reached the server");

    let mut allow = granted_all();
    allow.push(format!("net:http://127.0.0.1:{port}"));
    let r = attack(
        &e,
        plugins::HOSTILE_GRANTED,
        &allow,
        json!([{"do": "git_clone", "url": format!("http://127.0.0.1:{port}/r.git"), "dest": "a"}]),
    );
    assert!(err(&r[0]).contains("git failed"), "{r:?}");
    assert!(
        !requests(&log).is_empty(),
        "granted by name, git reached it"
    );
}

/// An application repository in `work` whose submodule `vendor/lib` is `lib`, with
/// `.gitmodules` then pointing at `sub_url`.
fn app_with_submodule(e: &Env, lib: &Path, sub_url: &str) -> PathBuf {
    let app = e.work.join("app");
    make_repo(&app, "README", "app\n");
    git(&app, &["submodule", "add", "-q", &url(lib), "vendor/lib"]);
    git(
        &app,
        &[
            "config",
            "-f",
            ".gitmodules",
            "submodule.vendor/lib.url",
            sub_url,
        ],
    );
    git(&app, &["commit", "-qam", "submodule"]);
    app
}

/// Root cause 4: a submodule URL is checked like a clone's: `file://` outside the
/// step's directories and HTTP to loopback are refused (clone and pull), and the
/// server sees no request.
#[test]
fn submodule_urls_are_checked_like_clone_urls() {
    let e = env();
    let secret = e.outside.join("secret");
    make_repo(&secret, "SECRET", "top secret\n");
    let app = app_with_submodule(&e, &secret, &url(&secret));
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([
            {"do": "git_clone", "url": url(&app), "dest": "c1", "submodules": true},
            {"do": "git_clone", "url": url(&app), "dest": "c2"},
            {"do": "git_pull", "repo": "c2", "submodules": true},
        ]),
    );
    for x in [&r[0], &r[2]] {
        let m = err(x);
        assert!(
            m.contains(&format!("may not read {} with git", secret.display())),
            "{m}"
        );
    }
    ok(&r[1]);
    for d in ["c1", "c2"] {
        assert!(!e.work.join(d).join("vendor/lib/SECRET").exists(), "{d}");
    }

    // HTTP on loopback: refused for the plugin with no grant and for one with `net:*`.
    let log = e.root.join("requests.log");
    let server = counting_server(&log);
    let e2 = env();
    let lib = e2.root.join("lib");
    make_repo(&lib, "LIB", "lib\n");
    let app = app_with_submodule(&e2, &lib, &format!("http://127.0.0.1:{}/lib.git", server.1));
    let actions = json!([
        {"do": "git_clone", "url": url(&app), "dest": "c1", "submodules": true},
        {"do": "git_clone", "url": url(&app), "dest": "c2"},
        {"do": "git_pull", "repo": "c2", "submodules": true},
    ]);
    let r = attack(&e2, plugins::HOSTILE, &[], actions.clone());
    assert!(err(&r[0]).contains("was not granted"), "{r:?}");
    assert!(err(&r[2]).contains("was not granted"), "{r:?}");
    let r = attack(&e2, plugins::HOSTILE_GRANTED, &granted_all(), {
        let mut a = actions.clone();
        for x in a.as_array_mut().unwrap() {
            if let Some(d) = x.get_mut("dest") {
                *d = json!(format!("g-{}", d.as_str().unwrap()));
            }
            if let Some(d) = x.get_mut("repo") {
                *d = json!(format!("g-{}", d.as_str().unwrap()));
            }
        }
        a
    });
    assert!(err(&r[0]).contains("loopback"), "{r:?}");
    assert!(err(&r[2]).contains("loopback"), "{r:?}");
    assert_eq!(requests(&log), "", "no request reached the server");
}

/// Root cause 4: submodules the step may read are cloned, into Hoist's git directory;
/// a submodule whose `.git` the plugin rewrote is refused, and its planted config never
/// runs.
#[test]
fn submodules_live_in_hoists_git_directory() {
    let e = env();
    let canary = e.root.join("canary");
    let lib = e.work.join("lib");
    make_repo(&lib, "LIB", "lib\n");
    let app = app_with_submodule(&e, &lib, &url(&lib));
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([{"do": "git_clone", "url": url(&app), "dest": "c", "submodules": true}]),
    );
    ok(&r[0]);
    let c = e.work.join("c");
    assert!(c.join("vendor/lib/LIB").exists());
    let git_dir = hoist_git_dir(&e, &c);
    let sub_gitfile = std::fs::read_to_string(c.join("vendor/lib/.git")).unwrap();
    assert!(
        sub_gitfile.contains(&format!("{}", git_dir.join("modules").display()))
            || sub_gitfile.contains("modules/vendor/lib"),
        "{sub_gitfile}"
    );
    assert!(git_dir.join("modules/vendor/lib/HEAD").exists());

    // The plugin points the submodule's `.git` at a git directory of its own.
    let evil = e.work.join("evil");
    std::fs::create_dir(&evil).unwrap();
    plant_git_dir(&evil, &canary, &url(&lib));
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([
            // An update of the existing checkout and its submodule works.
            {"do": "git_pull", "repo": c, "submodules": true},
            {"do": "write", "path": c.join("vendor/lib/.git"),
             "contents": format!("gitdir: {}\n", evil.join(".git").display())},
            {"do": "git_pull", "repo": c, "submodules": true},
        ]),
    );
    ok(&r[0]);
    ok(&r[1]);
    let m = err(&r[2]);
    assert!(m.contains("is not the gitfile Hoist wrote"), "{m}");
    assert!(!canary.exists());
}

/// Root cause 4: a `.gitmodules` asking for a command as the update mode never runs
/// it (git does not copy it, and Hoist's allow-list would refuse it in its config).
#[test]
fn a_submodule_update_command_never_runs() {
    let e = env();
    let canary = e.root.join("canary");
    let lib = e.work.join("lib");
    make_repo(&lib, "LIB", "lib\n");
    let app = app_with_submodule(&e, &lib, &url(&lib));
    git(
        &app,
        &[
            "config",
            "-f",
            ".gitmodules",
            "submodule.vendor/lib.update",
            &format!("!touch {}", canary.display()),
        ],
    );
    git(&app, &["commit", "-qam", "update command"]);
    let r = attack(
        &e,
        plugins::HOSTILE,
        &[],
        json!([
            {"do": "git_clone", "url": url(&app), "dest": "c", "submodules": true},
            {"do": "git_pull", "repo": "c", "submodules": true},
        ]),
    );
    for x in &r {
        let m = err(x);
        assert!(
            m.contains("invalid value for 'submodule.vendor/lib.update'")
                || m.contains("Hoist does not allow"),
            "{m}"
        );
    }
    assert!(!canary.exists(), "the update command ran");
}
