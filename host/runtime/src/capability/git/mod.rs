//! `hoist:step/git`: git operations with the host's real `git`, on the step's terms.
//!
//! - Git directories are Hoist's, not the step's ([`repo`]): cloned with
//!   `--separate-git-dir` into `<HOIST_HOME>/git/<sha256 of the worktree path>` and named
//!   by `GIT_DIR`/`GIT_WORK_TREE` on every later call, derived from the confined worktree
//!   path, never from its `.git`. A repository without one is refused. Before each
//!   operation its config is parsed here and refused outside an allow-list ([`config`]).
//! - git runs with hooks, fsmonitor, redirects, credential helpers, automatic gc and
//!   submodule recursion off, `GIT_CEILING_DIRECTORIES` set, and clones run in Hoist's
//!   own directory.
//! - Argument lists are built here: values that could be read as options are refused,
//!   paths and revisions go after `--` or `--end-of-options`.
//! - Transports: https, http, ssh, git and file only (`GIT_ALLOW_PROTOCOL`); `ext::`-style
//!   remotes are refused.
//! - The remote's `scheme://host:port` must be covered by the step's `net` grant, and a
//!   host resolving to a loopback/link-local/private address must be granted by name
//!   (as for `wasi:http`); git's HTTP connection is pinned to the checked addresses.
//!   Local repositories (`file://` decoded as git decodes it, or a path) must lie in a
//!   directory the step can read, as must their git directory, alternates and symlinks
//!   (unless `net:*`); git is handed the checked git directory itself (`--no-local`,
//!   `url.<dir>.insteadOf`). Destinations and repositories operated on must lie in a
//!   directory the step can write.
//! - Submodules: git never recurses on its own. `submodule init`, then every URL is
//!   checked like a clone's, then a non-recursive `submodule update`, then each
//!   submodule the same way.
//! - Credentials become an `Authorization` header scoped to the remote's origin, passed
//!   through git's environment (`GIT_CONFIG_*`): not in argv (the process list), not in
//!   the repository config; the secret is added to the step's redactor before git runs.
//! - git ignores the system and global configuration, never prompts, and speaks C locale.

mod config;
mod repo;

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use hoist_policy::encoding::base64;
use hoist_policy::{Capability, Grants, HostEnv, split_origin};
use wasmtime::component::{HasData, Linker};

use crate::bindings::StepError;
use crate::bindings::hoist::step::git::{
    self, CloneOptions, Credentials, GitError, GitFailure, Host,
};
use crate::capability::log::StepLog;
use crate::capability::net::{explicitly_granted, special};
use crate::capability::process::{find_program, run_child};
use crate::capability::setup::{Root, StepInfo, StepSetup};
use repo::Repo;

/// The state of `hoist:step/git`: what the step may reach and touch, where git's output
/// is logged (and whose redactor learns the credentials).
pub struct GitCtx {
    info: Arc<StepInfo>,
    grants: Arc<Grants>,
    user_grants: Arc<Grants>,
    roots: Arc<[Root]>,
    log: StepLog,
    env: HostEnv,
}

impl GitCtx {
    /// The git capability of a step.
    pub fn prepare(setup: &StepSetup) -> Self {
        Self {
            info: setup.info.clone(),
            grants: setup.grants.clone(),
            user_grants: setup.user_grants.clone(),
            roots: setup.roots.clone(),
            log: setup.log.clone(),
            env: setup.env.clone(),
        }
    }

    /// The view the host calls run on: this state and the step's working directory.
    pub fn view<'a>(&'a self, cwd: &'a Path) -> GitView<'a> {
        GitView { ctx: self, cwd }
    }
}

/// What `hoist:step/git` sees of a step's store.
pub struct GitView<'a> {
    ctx: &'a GitCtx,
    cwd: &'a Path,
}

struct HasGit;

impl HasData for HasGit {
    type Data<'a> = GitView<'a>;
}

/// Link `hoist:step/git` to the [`GitView`] that `get` makes of the store.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> GitView<'_>,
) -> wasmtime::Result<()> {
    git::add_to_linker::<T, HasGit>(linker, get)
}

const ALLOWED_SCHEMES: &[&str] = &["https", "http", "ssh", "git", "file"];

/// Configuration given to every git command (through `GIT_CONFIG_*`, which git passes
/// on to the git commands it starts, submodules included).
const HARDENING: &[(&str, &str)] = &[
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("protocol.ext.allow", "never"),
    ("protocol.fd.allow", "never"),
    ("http.followRedirects", "false"),
    ("credential.helper", ""),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
];

/// Where a remote is, once checked.
#[derive(Default)]
struct Remote {
    /// `https://host:port` for http(s) remotes (the scope of credentials).
    http_origin: Option<String>,
    /// For a local repository: its checked git directory, which git is handed.
    local: Option<PathBuf>,
    /// Configuration that makes git use exactly what was checked.
    config: Vec<(String, String)>,
}

fn refused(e: StepError) -> GitError {
    GitError::Refused(e)
}

fn invalid(msg: String) -> GitError {
    refused(StepError::InvalidInput(msg))
}

fn denied(msg: String) -> GitError {
    refused(StepError::Denied(msg))
}

fn failed(message: String) -> GitError {
    refused(StepError::Failed(crate::bindings::Failure {
        message,
        exit_code: None,
        hint: None,
    }))
}

/// Values that git would read as an option, or that carry control characters.
fn plain_value(what: &str, v: &str) -> Result<(), GitError> {
    if v.starts_with('-') {
        return Err(invalid(format!("{what} `{v}` cannot start with '-'")));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(invalid(format!("{what} contains control characters")));
    }
    Ok(())
}

/// `path` against `base`, with `.`/`..` resolved lexically and the longest existing
/// ancestor resolved on disk (so a symlink cannot lead outside).
fn resolve(base: &Path, path: impl AsRef<Path>) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(path).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    let mut existing = out.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut real = std::fs::canonicalize(&existing).unwrap_or(existing);
    for name in rest.into_iter().rev() {
        real.push(name);
    }
    real
}

/// `p`'s directory entry exists (a dangling symlink too).
fn present(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

fn args<const N: usize>(a: [&str; N]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

impl GitView<'_> {
    /// A path the step may touch: inside a preopened directory (writable if asked).
    fn confined(&self, path: impl AsRef<Path>, write: bool) -> Result<PathBuf, GitError> {
        let p = resolve(self.cwd, path);
        if self.inside_roots(&p, write) {
            Ok(p)
        } else {
            let what = if write { "write" } else { "read" };
            let cap = if write {
                Capability::WriteDir(p.clone())
            } else {
                Capability::ReadDir(p.clone())
            };
            Err(denied(
                self.ctx
                    .info
                    .denial(&cap, &format!("{what} {} with git", p.display())),
            ))
        }
    }

    fn inside_roots(&self, p: &Path, write: bool) -> bool {
        self.ctx.roots.iter().any(|(root, writable)| {
            (!write || *writable)
                && p.starts_with(std::fs::canonicalize(root).unwrap_or_else(|_| root.clone()))
        })
    }

    /// Whether the step may read any local repository (`net:*`, as git_clone has).
    fn reads_any_repository(&self) -> bool {
        self.ctx.grants.allows(&Capability::Net("*".into()))
    }

    /// Hoist's git directory store, refused if a step could reach into it.
    fn store(&self) -> Result<PathBuf, GitError> {
        let store = repo::store_root().map_err(|e| {
            failed(format!(
                "cannot create Hoist's git directory store under {}: {e}",
                hoist_policy::paths::home().display()
            ))
        })?;
        for (root, _) in self.ctx.roots.iter() {
            let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
            if store.starts_with(&root) || root.starts_with(&store) {
                return Err(denied(format!(
                    "Hoist keeps git directories in {}, which step `{}` can reach through {}; \
                     git would obey what the step writes there. Set HOIST_HOME to a directory \
                     outside the project and the step's directories",
                    store.display(),
                    self.ctx.info.name,
                    root.display()
                )));
            }
        }
        Ok(store)
    }

    /// The Hoist-owned repository at `path` (confined), its configuration checked.
    fn open_repo(&self, path: &str, write: bool) -> Result<Repo, GitError> {
        let work = self.confined(path, write)?;
        let store = self.store()?;
        let git_dir = repo::git_dir_for(&store, &work);
        if !work.is_dir() || !repo::marked_for(&git_dir, &work) {
            return Err(refused(StepError::InvalidInput(format!(
                "`{}` is not a repository cloned by Hoist (Hoist keeps the git directory of \
                 each repository it clones, and does not use one found in the directory); \
                 remove it to clone again",
                work.display()
            ))));
        }
        let repo = Repo { work, git_dir };
        check_git_dir(&repo, false)?;
        Ok(repo)
    }

    /// Check a remote URL's form, transport and grant.
    async fn remote(&mut self, url: &str) -> Result<Remote, GitError> {
        plain_value("repository URL", url)?;
        let transport = url
            .split_once("::")
            .map(|(t, _)| t)
            .filter(|t| !t.contains('/') && !t.contains(':'));
        if let Some(t) = transport {
            return Err(denied(format!("the `{t}::` git transport is not allowed")));
        }
        if let Some((scheme, rest)) = url.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            if !ALLOWED_SCHEMES.contains(&scheme.as_str()) {
                return Err(denied(format!(
                    "the `{scheme}` git transport is not allowed (only {})",
                    ALLOWED_SCHEMES.join(", ")
                )));
            }
            if scheme == "file" {
                // git ignores a `file://` authority and percent-decodes the path: check
                // what it would open, not the text.
                if !rest.starts_with('/') {
                    return Err(invalid(format!(
                        "`{url}`: a file:// URL must have an empty host (file:///path)"
                    )));
                }
                let decoded = repo::percent_decode(rest)
                    .ok_or_else(|| invalid(format!("`{url}` has a malformed percent-encoding")))?;
                let path = PathBuf::from(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                    decoded,
                ));
                return self.local(url, &path);
            }
            return self.network_remote(url).await;
        }
        // scp-like `user@host:path` is ssh; anything else is a local path.
        if let Some((before, _)) = url.split_once(':')
            && !before.contains('/')
        {
            let host = before
                .rsplit('@')
                .next()
                .unwrap_or(before)
                .trim_matches(['[', ']'])
                .to_ascii_lowercase();
            self.allow_net(&format!("ssh://{host}:22"))?;
            self.allow_address("ssh", &host, 22).await?;
            return Ok(Remote::default());
        }
        self.local(url, Path::new(url))
    }

    /// A `scheme://host[:port]/...` remote: the `net` grant, the address rule, and for
    /// http(s) the origin credentials are scoped to and the addresses git must connect
    /// to (the ones just checked: DNS rebinding).
    async fn network_remote(&mut self, url: &str) -> Result<Remote, GitError> {
        let (s, host, port) =
            split_origin(url).ok_or_else(|| invalid(format!("`{url}` is not a valid URL")))?;
        let origin = match port {
            Some(p) => format!("{s}://{host}:{p}"),
            None => format!("{s}://{host}"),
        };
        self.allow_net(&origin)?;
        let mut remote = Remote::default();
        let port = port.unwrap_or(0);
        let addrs = self.allow_address(&s, &host, port).await?;
        if matches!(s.as_str(), "http" | "https") {
            let default = hoist_policy::default_port(&s);
            remote.http_origin = Some(match Some(port) {
                p if p != default => format!("{s}://{host}:{port}"),
                _ => format!("{s}://{host}"),
            });
            let list: Vec<String> = addrs
                .iter()
                .map(|a| match a {
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                })
                .collect();
            if !list.is_empty() && host.parse::<IpAddr>().is_err() {
                remote.config.push((
                    "http.curloptResolve".into(),
                    format!(
                        "{}:{port}:{}",
                        host.trim_matches(['[', ']']),
                        list.join(",")
                    ),
                ));
            }
        }
        Ok(remote)
    }

    fn allow_net(&self, origin: &str) -> Result<(), GitError> {
        let cap = Capability::Net(origin.to_string());
        if self.ctx.grants.allows(&cap) {
            Ok(())
        } else {
            Err(denied(
                self.ctx.info.denial(&cap, &format!("reach {origin}")),
            ))
        }
    }

    /// Resolve `host`; a loopback, link-local or private address needs a grant of that
    /// host by name from the user (the rule of `wasi:http`, capability/net.rs).
    async fn allow_address(
        &mut self,
        scheme: &str,
        host: &str,
        port: u16,
    ) -> Result<Vec<IpAddr>, GitError> {
        let bare = host.trim_matches(['[', ']']);
        let addrs: Vec<IpAddr> = match tokio::net::lookup_host((bare, port)).await {
            Ok(a) => a.map(|s| s.ip()).collect(),
            Err(e) => {
                return Err(refused(StepError::NotFound(format!(
                    "cannot resolve git host `{host}`: {e}"
                ))));
            }
        };
        if let Some(ip) = addrs.iter().find(|a| special(**a))
            && !explicitly_granted(&self.ctx.user_grants, host, &addrs)
        {
            return Err(denied(format!(
                "step `{}` ({}) may not reach {scheme}://{host}:{port} with git: `{host}` \
                 resolves to {ip}, a loopback, link-local, private or metadata address; grant \
                 it by name to allow it: `net:{scheme}://{ip}:{port}`",
                self.ctx.info.name, self.ctx.info.plugin
            )));
        }
        Ok(addrs)
    }

    /// A local repository at `path` (the URL as given is `url`): readable, and so is
    /// everything git would open for it. git is handed its git directory.
    fn local(&self, url: &str, path: &Path) -> Result<Remote, GitError> {
        let any = self.reads_any_repository();
        let p = if any {
            resolve(self.cwd, path)
        } else {
            self.confined(path, false)?
        };
        let not_repo = || invalid(format!("`{url}` is not a git repository"));
        let store = repo::store_root().ok();
        let dot_git = p.join(".git");
        let git_dir = match std::fs::symlink_metadata(&dot_git) {
            Ok(m) if m.is_file() => {
                resolve(&p, repo::gitfile_target(&dot_git).ok_or_else(not_repo)?)
            }
            Ok(_) => resolve(&p, ".git"),
            Err(_) if p.join("HEAD").is_file() && p.join("objects").is_dir() => p.clone(),
            Err(_) => return Err(not_repo()),
        };
        // A repository Hoist cloned: its git directory is ours, and that is fine only
        // through its own worktree (not a gitfile pointing at another one).
        let hoist_owned = store.as_ref().is_some_and(|s| git_dir.starts_with(s));
        if let Some(store) = store.filter(|_| hoist_owned)
            && (git_dir != repo::git_dir_for(&store, &p) || !repo::marked_for(&git_dir, &p))
        {
            return Err(denied(format!(
                "`{url}` points into another repository's git directory"
            )));
        }
        if !hoist_owned && !any {
            self.confined(&git_dir, false)?;
            // git's own lookup would try `<dir>/.git` before `<dir>`.
            if present(&git_dir.join(".git")) {
                return Err(denied(format!(
                    "`{url}`: {} contains a `.git`",
                    git_dir.display()
                )));
            }
            if present(&git_dir.join("commondir")) {
                return Err(denied(format!(
                    "`{url}` is a linked worktree of another repository"
                )));
            }
            self.check_alternates(url, &git_dir, 0)?;
            let links =
                repo::symlinks_under(&git_dir).map_err(|e| invalid(format!("`{url}`: {e}")))?;
            for link in links {
                let target = resolve(Path::new("/"), &link);
                if !self.inside_roots(&target, false) {
                    return Err(denied(format!(
                        "`{url}`: {} leads outside the directories the step may read",
                        link.display()
                    )));
                }
            }
        }
        let key = format!("url.{}.insteadOf", git_dir.display());
        Ok(Remote {
            http_origin: None,
            local: Some(git_dir),
            config: vec![(key, url.to_string())],
        })
    }

    /// `objects/info/alternates` of a local repository: each must be readable too.
    fn check_alternates(&self, url: &str, git_dir: &Path, depth: u32) -> Result<(), GitError> {
        let objects = git_dir.join("objects");
        let Ok(text) = std::fs::read_to_string(objects.join("info/alternates")) else {
            return Ok(());
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let alt = resolve(&objects, line);
            if depth >= 5 || !self.inside_roots(&alt, false) {
                return Err(denied(format!(
                    "`{url}` borrows objects from {}, outside the directories the step may read",
                    alt.display()
                )));
            }
            if let Some(parent) = alt.parent() {
                self.check_alternates(url, parent, depth + 1)?;
            }
        }
        Ok(())
    }

    /// Run git with `args`: in `repo` (explicit `GIT_DIR`/`GIT_WORK_TREE`) or, without
    /// one, in Hoist's store; with what makes git use exactly the checked `remotes`, and
    /// credentials scoped to the first one's origin.
    async fn git(
        &mut self,
        repo: Option<&Repo>,
        args: Vec<OsString>,
        remotes: &[&Remote],
        creds: Option<&Credentials>,
    ) -> Result<String, GitError> {
        self.run_git(repo, args, remotes, creds, true).await
    }

    /// [`Self::git`]; `stream`: whether what git prints goes to the step's log (not for
    /// a query, whose answer is the host's, not the user's).
    async fn run_git(
        &mut self,
        repo: Option<&Repo>,
        args: Vec<OsString>,
        remotes: &[&Remote],
        creds: Option<&Credentials>,
        stream: bool,
    ) -> Result<String, GitError> {
        let dir = match repo {
            Some(r) => r.work.clone(),
            None => self.store()?,
        };
        let path_var = self.ctx.env.get("PATH").map(OsString::from);
        let git = find_program("git", &dir, path_var.as_deref()).ok_or_else(|| {
            refused(StepError::NotFound(
                "`git` is not installed on this machine (not found on PATH)".into(),
            ))
        })?;
        let mut cmd = hardened_git(git, &dir, &args, repo, &self.ctx.env);
        if remotes.is_empty() {
            // Without a checked remote, a partial clone must not fetch on its own.
            cmd.env("GIT_NO_LAZY_FETCH", "1");
        }
        let mut config: Vec<(String, String)> = HARDENING
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for r in remotes {
            config.extend(r.config.iter().cloned());
        }
        if let (Some(c), Some(origin)) =
            (creds, remotes.first().and_then(|r| r.http_origin.as_ref()))
        {
            let token = base64(format!("{}:{}", c.username, c.secret).as_bytes());
            let redactor = self.ctx.log.redactor();
            redactor.add(&c.secret);
            redactor.add(&token);
            config.push((
                format!("http.{origin}/.extraHeader"),
                format!("Authorization: Basic {token}"),
            ));
        }
        cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
        for (i, (k, v)) in config.iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), k)
                .env(format!("GIT_CONFIG_VALUE_{i}"), v);
        }
        let (code, out, err) = run_child(cmd, &self.ctx.log, stream)
            .await
            .map_err(|e| failed(format!("cannot run git: {e}")))?;
        let redactor = self.ctx.log.redactor();
        if code == Some(0) {
            Ok(redactor.redact(&String::from_utf8_lossy(&out)).into_owned())
        } else {
            Err(GitError::Failed(GitFailure {
                exit_code: code,
                stderr: redactor.redact(&String::from_utf8_lossy(&err)).into_owned(),
            }))
        }
    }

    /// The origin remote of a repository, checked like a clone's.
    async fn origin_of(&mut self, repo: &Repo) -> Result<Option<Remote>, GitError> {
        match origin_url(repo)? {
            Some(u) => Ok(Some(self.remote(&u).await?)),
            None => Ok(None),
        }
    }

    /// The origin, if the repository is a partial clone (git fetches missing objects
    /// from it during checkout); none otherwise.
    async fn promisor_of(&mut self, repo: &Repo) -> Result<Option<Remote>, GitError> {
        let partial = read_config(&repo.git_dir)?
            .iter()
            .any(|e| e.is("extensions", None, "partialclone"));
        if partial {
            self.origin_of(repo).await
        } else {
            Ok(None)
        }
    }

    /// Initialise, check and update the submodules of `repo`, then theirs, never
    /// letting git recurse on its own.
    async fn submodules(&mut self, repo: &Repo, depth: u32) -> Result<(), GitError> {
        if !repo.work.join(".gitmodules").is_file() {
            return Ok(());
        }
        if depth >= repo::MAX_SUBMODULE_DEPTH {
            return Err(invalid(format!(
                "submodules of {} nest deeper than {} levels",
                repo.work.display(),
                repo::MAX_SUBMODULE_DEPTH
            )));
        }
        self.git(Some(repo), args(["submodule", "init", "--"]), &[], None)
            .await?;
        // `.gitmodules` is the step's file: only used to map names to paths, which are
        // checked; the URLs checked are those git copied into our own config.
        let modules = config::read(&repo.work.join(".gitmodules")).map_err(|e| {
            invalid(format!(
                "{}: cannot read .gitmodules: {e}",
                repo.work.display()
            ))
        })?;
        let cfg = check_git_dir(repo, depth > 0)?;
        let mut subs = Vec::new();
        let mut remotes = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for e in cfg.iter().rev() {
            let (Some(name), Some(url)) = (e.sub.as_deref(), e.value.as_deref()) else {
                continue;
            };
            if e.section != "submodule" || e.key != "url" || !seen.insert(name.to_string()) {
                continue;
            }
            remotes.push(self.remote(url).await?);
            let path = modules
                .iter()
                .rev()
                .find(|m| m.is("submodule", Some(name), "path"))
                .and_then(|m| m.value.clone())
                .ok_or_else(|| invalid(format!("submodule `{name}` has no path")))?;
            let sub = sub_repo(repo, name, &path)?;
            // An existing submodule fetches from its own origin, which may predate the
            // URL in `.gitmodules`: checked too.
            if sub.git_dir.is_dir()
                && let Some(own) = origin_url(&sub)?
            {
                remotes.push(self.remote(&own).await?);
            }
            subs.push(sub);
        }
        let refs: Vec<&Remote> = remotes.iter().collect();
        if !subs.is_empty() {
            self.git(Some(repo), args(["submodule", "update", "--"]), &refs, None)
                .await?;
        }
        for sub in subs {
            if sub.git_dir.is_dir() {
                Box::pin(self.submodules(&sub, depth + 1)).await?;
            }
        }
        Ok(())
    }
}

/// The repository's configuration (and its `config.worktree`), parsed.
fn read_config(git_dir: &Path) -> Result<Vec<config::Entry>, GitError> {
    let mut all = Vec::new();
    for file in ["config", "config.worktree"] {
        let entries = config::read(&git_dir.join(file))
            .map_err(|e| invalid(format!("cannot read {}: {e}", git_dir.join(file).display())))?;
        all.extend(entries);
    }
    Ok(all)
}

/// Refuse a git directory whose configuration or layout makes git do more than Hoist
/// asked: every key outside the allow-list, alternates, a `commondir`. A submodule's
/// git directory may name its own worktree (`core.worktree`, written by git).
fn check_git_dir(repo: &Repo, submodule: bool) -> Result<Vec<config::Entry>, GitError> {
    let entries = read_config(&repo.git_dir)?;
    for e in &entries {
        let worktree_ok = submodule
            && e.is("core", None, "worktree")
            && e.value
                .as_deref()
                .is_some_and(|v| resolve(&repo.git_dir, v) == repo.work);
        if !config::allowed(e) && !worktree_ok {
            let sub = e
                .sub
                .as_deref()
                .map(|s| format!(".{s}"))
                .unwrap_or_default();
            return Err(denied(format!(
                "repository `{}` has configuration Hoist does not allow (`{}{sub}.{}`); \
                 remove it to clone again",
                repo.work.display(),
                e.section,
                e.key
            )));
        }
    }
    for extra in ["objects/info/alternates", "commondir"] {
        if present(&repo.git_dir.join(extra)) {
            return Err(denied(format!(
                "repository `{}` has `{extra}`, which Hoist does not allow; remove it to clone again",
                repo.work.display()
            )));
        }
    }
    Ok(entries)
}

fn origin_url(repo: &Repo) -> Result<Option<String>, GitError> {
    Ok(read_config(&repo.git_dir)?
        .into_iter()
        .rev()
        .find(|e| e.is("remote", Some("origin"), "url"))
        .and_then(|e| e.value)
        .filter(|u| !u.is_empty()))
}

/// Submodule `name` at `path` of `repo`: a plain relative path inside the worktree (no
/// symlink on the way), its `.git` absent or the gitfile git writes, pointing at
/// `modules/<name>` of our git directory.
fn sub_repo(repo: &Repo, name: &str, path: &str) -> Result<Repo, GitError> {
    let bad = |what: &str| invalid(format!("submodule `{name}`: {what}"));
    let plain = |s: &str| {
        !s.is_empty()
            && !s.starts_with('/')
            && !s.starts_with('-')
            && !s.chars().any(|c| c.is_control() || c == '\\')
            && Path::new(s)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
    };
    if !plain(name) {
        return Err(bad("its name is not a plain relative path"));
    }
    if !plain(path) {
        return Err(bad("its path is not a plain relative path"));
    }
    let work = repo.work.join(path);
    let mut at = repo.work.clone();
    for c in Path::new(path).components() {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(bad("its path goes through a symlink"));
        }
    }
    let git_dir = repo.git_dir.join("modules").join(name);
    let dot_git = work.join(".git");
    if let Ok(m) = std::fs::symlink_metadata(&dot_git) {
        let ours = m.is_file()
            && repo::gitfile_target(&dot_git)
                .is_some_and(|t| resolve(&work, t) == resolve(&git_dir, ""));
        if !ours {
            return Err(bad(&format!(
                "{} is not the gitfile Hoist wrote; remove the submodule's directory",
                dot_git.display()
            )));
        }
    }
    let sub = Repo { work, git_dir };
    if sub.git_dir.is_dir() {
        check_git_dir(&sub, true)?;
    }
    Ok(sub)
}

/// `git args` in `dir` with only what git needs of the user's environment, never
/// prompting, in C locale, no repository looked for above `dir`, and `repo`'s
/// directories named explicitly.
fn hardened_git(
    git: PathBuf,
    dir: &Path,
    args: &[OsString],
    repo: Option<&Repo>,
    env: &HostEnv,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(git);
    cmd.arg0("git").args(args).current_dir(dir).env_clear();
    // What git needs from the user's environment to reach servers: keys and agent for
    // ssh, CA bundles and proxies for https.
    for keep in [
        "PATH",
        "HOME",
        "SSH_AUTH_SOCK",
        "GIT_SSL_CAINFO",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        if let Some(v) = env.get(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .env("GIT_EDITOR", "true")
        .env("GIT_MERGE_AUTOEDIT", "no")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .env("GIT_ALLOW_PROTOCOL", ALLOWED_SCHEMES.join(":"))
        .env("LC_ALL", "C");
    // Never look for a repository above the directory git runs in.
    if let Some(parent) = dir.parent() {
        cmd.env("GIT_CEILING_DIRECTORIES", parent);
    }
    if let Some(r) = repo {
        cmd.env("GIT_DIR", &r.git_dir).env("GIT_WORK_TREE", &r.work);
    }
    cmd
}

impl Host for GitView<'_> {
    async fn clone(&mut self, opts: CloneOptions) -> Result<(), GitError> {
        let dest = self.confined(&opts.destination, true)?;
        let remote = self.remote(&opts.url).await?;
        let store = self.store()?;
        repo::collect_garbage(&store);
        let git_dir = repo::git_dir_for(&store, &dest);
        // A git directory left by an earlier clone of this path whose worktree was
        // removed or emptied: stale. (A non-empty destination makes git refuse anyway.)
        let empty = std::fs::read_dir(&dest).map_or(true, |mut d| d.next().is_none());
        if present(&git_dir) && empty {
            std::fs::remove_dir_all(&git_dir)
                .map_err(|e| failed(format!("cannot remove stale {}: {e}", git_dir.display())))?;
        }
        let mut a = args(["clone", "--no-local", "--no-recurse-submodules"]);
        a.push("--separate-git-dir".into());
        a.push(git_dir.clone().into_os_string());
        if let Some(b) = &opts.branch {
            plain_value("branch", b)?;
            a.extend(args(["--branch", b]));
        }
        if let Some(d) = opts.depth {
            a.push("--depth".into());
            a.push(d.to_string().into());
        }
        if opts.sparse {
            a.push("--sparse".into());
        }
        if opts.blobless_no_checkout {
            a.extend(args(["--filter=blob:none", "--no-checkout"]));
        }
        a.push("--".into());
        // A local repository: the git directory that was checked, not the URL's text.
        let source = match &remote.local {
            Some(dir) => dir.clone().into_os_string(),
            None => opts.url.clone().into(),
        };
        a.push(source);
        a.push(dest.clone().into_os_string());
        // The clone is handed the checked directory itself: its `insteadOf` rule (for later
        // fetches of the URL as written) must not apply here, or a directory that starts
        // with the URL's text (`/r` → `/r/.git`) is rewritten once more (`/r/.git/.git`).
        let no_rewrite = Remote::default();
        let clone_remote = if remote.local.is_some() {
            &no_rewrite
        } else {
            &remote
        };
        self.git(None, a, &[clone_remote], opts.credentials.as_ref())
            .await?;
        let repo = Repo {
            work: std::fs::canonicalize(&dest).unwrap_or(dest),
            git_dir,
        };
        repo::write_marker(&repo.git_dir, &repo.work)
            .map_err(|e| failed(format!("cannot write {}: {e}", repo.git_dir.display())))?;
        if remote.local.is_some() {
            // Record the URL as the user wrote it (fetches are rewritten to the checked
            // git directory again, after checking it again).
            // As git records a path: absolute, as written.
            let recorded = if opts.url.contains("://") || Path::new(&opts.url).is_absolute() {
                opts.url.clone()
            } else {
                self.cwd.join(&opts.url).display().to_string()
            };
            self.git(
                Some(&repo),
                vec!["config".into(), "remote.origin.url".into(), recorded.into()],
                &[],
                None,
            )
            .await?;
        }
        if opts.submodules {
            check_git_dir(&repo, false)?;
            self.submodules(&repo, 0).await?;
        }
        Ok(())
    }

    async fn fetch(
        &mut self,
        repo: String,
        refspec: Option<String>,
        unshallow: bool,
        credentials: Option<Credentials>,
    ) -> Result<(), GitError> {
        let repo = self.open_repo(&repo, true)?;
        let remote = self.origin_of(&repo).await?;
        let mut a = args(["fetch", "--no-recurse-submodules"]);
        if unshallow {
            a.push("--unshallow".into());
        }
        a.push("origin".into());
        if let Some(r) = &refspec {
            plain_value("revision", r)?;
            a.push(r.into());
        }
        let remotes: Vec<&Remote> = remote.iter().collect();
        self.git(Some(&repo), a, &remotes, credentials.as_ref())
            .await
            .map(|_| ())
    }

    async fn checkout(&mut self, repo: String, rev: String) -> Result<(), GitError> {
        let repo = self.open_repo(&repo, true)?;
        plain_value("revision", &rev)?;
        let promisor = self.promisor_of(&repo).await?;
        let remotes: Vec<&Remote> = promisor.iter().collect();
        self.git(Some(&repo), args(["checkout", &rev, "--"]), &remotes, None)
            .await
            .map(|_| ())
    }

    async fn pull(
        &mut self,
        repo: String,
        branch: Option<String>,
        submodules: bool,
        depth: Option<u32>,
        credentials: Option<Credentials>,
    ) -> Result<(), GitError> {
        let repo = self.open_repo(&repo, true)?;
        let remote = self.origin_of(&repo).await?;
        let mut a = args(["pull", "--no-recurse-submodules"]);
        if let Some(d) = depth {
            a.push("--depth".into());
            a.push(d.to_string().into());
        }
        a.push("origin".into());
        if let Some(b) = &branch {
            plain_value("branch", b)?;
            a.push(b.into());
        }
        let remotes: Vec<&Remote> = remote.iter().collect();
        self.git(Some(&repo), a, &remotes, credentials.as_ref())
            .await?;
        if submodules {
            self.submodules(&repo, 0).await?;
        }
        Ok(())
    }

    async fn sparse_checkout_set(
        &mut self,
        repo: String,
        directories: Vec<String>,
    ) -> Result<(), GitError> {
        let repo = self.open_repo(&repo, true)?;
        for d in &directories {
            if d.chars().any(|c| c.is_control()) {
                return Err(invalid("directory contains control characters".into()));
            }
        }
        let promisor = self.promisor_of(&repo).await?;
        let remotes: Vec<&Remote> = promisor.iter().collect();
        let mut a = args(["sparse-checkout", "set", "--"]);
        a.extend(directories.into_iter().map(OsString::from));
        self.git(Some(&repo), a, &remotes, None).await.map(|_| ())
    }

    async fn remote_url(&mut self, repo: String) -> Result<Option<String>, GitError> {
        let repo = self.open_repo(&repo, false)?;
        origin_url(&repo)
    }

    async fn rev_parse(&mut self, repo: String, rev: String) -> Result<Option<String>, GitError> {
        let repo = self.open_repo(&repo, false)?;
        plain_value("revision", &rev)?;
        let spec = format!("{rev}^{{commit}}");
        let query = args([
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ]);
        match self.run_git(Some(&repo), query, &[], None, false).await {
            Ok(out) => Ok(Some(out.trim().to_string())),
            Err(GitError::Failed(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn is_shallow(&mut self, repo: String) -> Result<bool, GitError> {
        let repo = self.open_repo(&repo, false)?;
        // What `rev-parse --is-shallow-repository` reads, without running git.
        Ok(std::fs::metadata(repo.git_dir.join("shallow")).is_ok_and(|m| m.len() > 0))
    }

    async fn is_sparse(&mut self, repo: String) -> Result<bool, GitError> {
        let repo = self.open_repo(&repo, false)?;
        Ok(read_config(&repo.git_dir)?
            .iter()
            .rev()
            .find(|e| e.is("core", None, "sparsecheckout"))
            .is_some_and(|e| e.truthy()))
    }
}
