//! `hoist:step/git`: git operations with the host's real `git`, on the step's terms.
//!
//! - Argument lists are built here: values that could be read as options are refused,
//!   paths and revisions go after `--` or `--end-of-options`.
//! - Transports: https, http, ssh, git and file only (`GIT_ALLOW_PROTOCOL`, which also
//!   binds submodules); `ext::`-style remotes are refused.
//! - The remote's `scheme://host:port` must be covered by the step's `net` grant; local
//!   repositories must lie in a directory the step can read. Destinations and repositories
//!   operated on must lie in a directory the step can write.
//! - Credentials become an `Authorization` header scoped to the remote's origin, passed
//!   through git's environment (`GIT_CONFIG_*`): not in argv (the process list), not in
//!   `.git/config`; the secret is added to the step's redactor before git runs.
//! - git ignores the system and global configuration, never prompts, and speaks C locale.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::bindings::StepError;
use crate::bindings::hoist::step::git::{CloneOptions, Credentials, GitError, GitFailure, Host};
use crate::capability::process::{find_program, run_child};
use crate::runtime::policy::{Capability, split_origin};
use crate::runtime::state::StepState;

const ALLOWED_SCHEMES: &[&str] = &["https", "http", "ssh", "git", "file"];

/// Where a remote is, once checked.
struct Remote {
    /// `https://host:port` for http(s) remotes (the scope of credentials).
    http_origin: Option<String>,
}

fn refused(e: StepError) -> GitError {
    GitError::Refused(e)
}

fn invalid(msg: String) -> GitError {
    refused(StepError::InvalidInput(msg))
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

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `path` against `base`, with `.`/`..` resolved lexically and the longest existing
/// ancestor resolved on disk (so a symlink cannot lead outside).
fn resolve(base: &Path, path: &str) -> PathBuf {
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

impl StepState {
    /// A path the step may touch: inside a preopened directory (writable if asked).
    fn confined(&self, path: &str, write: bool) -> Result<PathBuf, GitError> {
        let p = resolve(&self.cwd, path);
        let inside = self.roots.iter().any(|(root, writable)| {
            (!write || *writable)
                && p.starts_with(std::fs::canonicalize(root).unwrap_or_else(|_| root.clone()))
        });
        if inside {
            Ok(p)
        } else {
            let what = if write { "write" } else { "read" };
            let cap = if write {
                Capability::WriteDir(p.clone())
            } else {
                Capability::ReadDir(p.clone())
            };
            Err(refused(StepError::Denied(
                self.denial(&cap, &format!("{what} {} with git", p.display())),
            )))
        }
    }

    /// Check a remote URL's form, transport and grant.
    fn remote(&self, url: &str) -> Result<Remote, GitError> {
        plain_value("repository URL", url)?;
        let transport = url
            .split_once("::")
            .map(|(t, _)| t)
            .filter(|t| !t.contains('/') && !t.contains(':'));
        if let Some(t) = transport {
            return Err(refused(StepError::Denied(format!(
                "the `{t}::` git transport is not allowed"
            ))));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            if !ALLOWED_SCHEMES.contains(&scheme.as_str()) {
                return Err(refused(StepError::Denied(format!(
                    "the `{scheme}` git transport is not allowed (only {})",
                    ALLOWED_SCHEMES.join(", ")
                ))));
            }
            if scheme == "file" {
                if !self.grants.allows(&Capability::Net("*".into())) {
                    self.confined(&url["file://".len()..], false)?;
                }
                return Ok(Remote { http_origin: None });
            }
            let (s, host, port) =
                split_origin(url).ok_or_else(|| invalid(format!("`{url}` is not a valid URL")))?;
            let origin = match port {
                Some(p) => format!("{s}://{host}:{p}"),
                None => format!("{s}://{host}"),
            };
            self.allow_net(&origin)?;
            let http_origin = matches!(s.as_str(), "http" | "https").then(|| {
                let default = crate::runtime::policy::default_port(&s);
                match port {
                    Some(p) if Some(p) != default => format!("{s}://{host}:{p}"),
                    _ => format!("{s}://{host}"),
                }
            });
            return Ok(Remote { http_origin });
        }
        // scp-like `user@host:path` is ssh; anything else is a local path.
        if let Some((before, _)) = url.split_once(':')
            && !before.contains('/')
        {
            let host = before
                .rsplit('@')
                .next()
                .unwrap_or(before)
                .to_ascii_lowercase();
            self.allow_net(&format!("ssh://{host}:22"))?;
            return Ok(Remote { http_origin: None });
        }
        if !self.grants.allows(&Capability::Net("*".into())) {
            self.confined(url, false)?;
        }
        Ok(Remote { http_origin: None })
    }

    fn allow_net(&self, origin: &str) -> Result<(), GitError> {
        let cap = Capability::Net(origin.to_string());
        if self.grants.allows(&cap) {
            Ok(())
        } else {
            Err(refused(StepError::Denied(
                self.denial(&cap, &format!("reach {origin}")),
            )))
        }
    }

    /// Run git in `dir` with `args`; credentials scoped to the remote's origin.
    async fn git(
        &mut self,
        dir: &Path,
        args: Vec<OsString>,
        remote: Option<&Remote>,
        creds: Option<&Credentials>,
    ) -> Result<String, GitError> {
        let path_var = std::env::var_os("PATH");
        let git = find_program("git", dir, path_var.as_deref()).ok_or_else(|| {
            refused(StepError::NotFound(
                "`git` is not installed on this machine (not found on PATH)".into(),
            ))
        })?;
        let mut cmd = tokio::process::Command::new(git);
        cmd.arg0("git").args(&args).current_dir(dir).env_clear();
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
            if let Some(v) = std::env::var_os(keep) {
                cmd.env(keep, v);
            }
        }
        cmd.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .env("GIT_ALLOW_PROTOCOL", ALLOWED_SCHEMES.join(":"))
            .env("LC_ALL", "C");
        if let (Some(c), Some(origin)) = (creds, remote.and_then(|r| r.http_origin.as_ref())) {
            let token = base64(format!("{}:{}", c.username, c.secret).as_bytes());
            let redactor = self.log.redactor();
            redactor.add(&c.secret);
            redactor.add(&token);
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", format!("http.{origin}/.extraHeader"))
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: Basic {token}"),
                );
        }
        let (code, out, err) = run_child(cmd, &self.log, true).await.map_err(|e| {
            refused(StepError::Failed(crate::bindings::Failure {
                message: format!("cannot run git: {e}"),
                exit_code: None,
                hint: None,
            }))
        })?;
        let redactor = self.log.redactor();
        if code == Some(0) {
            Ok(redactor.redact(&String::from_utf8_lossy(&out)).into_owned())
        } else {
            Err(GitError::Failed(GitFailure {
                exit_code: code,
                stderr: redactor.redact(&String::from_utf8_lossy(&err)).into_owned(),
            }))
        }
    }

    /// The origin remote of a repository the step may write, checked like a clone's.
    async fn origin_of(&mut self, repo: &Path) -> Result<Option<Remote>, GitError> {
        let url = self
            .git(
                repo,
                args(["config", "--get", "remote.origin.url"]),
                None,
                None,
            )
            .await
            .ok();
        match url.map(|u| u.trim().to_string()).filter(|u| !u.is_empty()) {
            Some(u) => Ok(Some(self.remote(&u)?)),
            None => Ok(None),
        }
    }
}

fn args<const N: usize>(a: [&str; N]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

impl Host for StepState {
    async fn clone(&mut self, opts: CloneOptions) -> Result<(), GitError> {
        let remote = self.remote(&opts.url)?;
        let dest = self.confined(&opts.destination, true)?;
        let mut a = args(["clone"]);
        if let Some(b) = &opts.branch {
            plain_value("branch", b)?;
            a.extend(args(["--branch", b]));
        }
        if let Some(d) = opts.depth {
            a.push("--depth".into());
            a.push(d.to_string().into());
        }
        if opts.submodules {
            a.push("--recurse-submodules".into());
        }
        if opts.sparse {
            a.push("--sparse".into());
        }
        if opts.blobless_no_checkout {
            a.extend(args(["--filter=blob:none", "--no-checkout"]));
        }
        a.push("--".into());
        a.push(opts.url.clone().into());
        a.push(dest.into_os_string());
        let cwd = self.cwd.clone();
        self.git(&cwd, a, Some(&remote), opts.credentials.as_ref())
            .await
            .map(|_| ())
    }

    async fn fetch(
        &mut self,
        repo: String,
        refspec: Option<String>,
        unshallow: bool,
        credentials: Option<Credentials>,
    ) -> Result<(), GitError> {
        let repo = self.confined(&repo, true)?;
        let remote = self.origin_of(&repo).await?;
        let mut a = args(["fetch"]);
        if unshallow {
            a.push("--unshallow".into());
        }
        a.push("origin".into());
        if let Some(r) = &refspec {
            plain_value("revision", r)?;
            a.push(r.into());
        }
        self.git(&repo, a, remote.as_ref(), credentials.as_ref())
            .await
            .map(|_| ())
    }

    async fn checkout(&mut self, repo: String, rev: String) -> Result<(), GitError> {
        let repo = self.confined(&repo, true)?;
        plain_value("revision", &rev)?;
        self.git(&repo, args(["checkout", &rev, "--"]), None, None)
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
        let repo = self.confined(&repo, true)?;
        let remote = self.origin_of(&repo).await?;
        let mut a = args(["pull"]);
        if submodules {
            a.push("--recurse-submodules".into());
        }
        if let Some(d) = depth {
            a.push("--depth".into());
            a.push(d.to_string().into());
        }
        a.push("origin".into());
        if let Some(b) = &branch {
            plain_value("branch", b)?;
            a.push(b.into());
        }
        self.git(&repo, a, remote.as_ref(), credentials.as_ref())
            .await
            .map(|_| ())
    }

    async fn sparse_checkout_set(
        &mut self,
        repo: String,
        directories: Vec<String>,
    ) -> Result<(), GitError> {
        let repo = self.confined(&repo, true)?;
        let mut a = args(["sparse-checkout", "set", "--"]);
        a.extend(directories.into_iter().map(OsString::from));
        self.git(&repo, a, None, None).await.map(|_| ())
    }

    async fn remote_url(&mut self, repo: String) -> Result<Option<String>, GitError> {
        let repo = self.confined(&repo, false)?;
        match self
            .git(
                &repo,
                args(["config", "--get", "remote.origin.url"]),
                None,
                None,
            )
            .await
        {
            Ok(out) => Ok(Some(out.trim().to_string()).filter(|u| !u.is_empty())),
            Err(GitError::Failed(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn rev_parse(&mut self, repo: String, rev: String) -> Result<Option<String>, GitError> {
        let repo = self.confined(&repo, false)?;
        plain_value("revision", &rev)?;
        let spec = format!("{rev}^{{commit}}");
        match self
            .git(
                &repo,
                args([
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    "--end-of-options",
                    &spec,
                ]),
                None,
                None,
            )
            .await
        {
            Ok(out) => Ok(Some(out.trim().to_string())),
            Err(GitError::Failed(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn is_shallow(&mut self, repo: String) -> Result<bool, GitError> {
        let repo = self.confined(&repo, false)?;
        Ok(self
            .git(
                &repo,
                args(["rev-parse", "--is-shallow-repository"]),
                None,
                None,
            )
            .await?
            .trim()
            == "true")
    }

    async fn is_sparse(&mut self, repo: String) -> Result<bool, GitError> {
        let repo = self.confined(&repo, false)?;
        match self
            .git(
                &repo,
                args(["config", "--get", "core.sparseCheckout"]),
                None,
                None,
            )
            .await
        {
            Ok(out) => Ok(out.trim() == "true"),
            Err(GitError::Failed(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("user:p@ss", "dXNlcjpwQHNz"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
    }
}
