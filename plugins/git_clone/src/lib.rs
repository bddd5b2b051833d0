//! `git_clone`: clone a repository (or update an existing checkout), Prefect-style.
//!
//! Semantics of spec §4.2: validation before any git command, the directory-naming rule,
//! the credentials formatting matrix, existing-checkout handling (same remote → update,
//! other remote → error), `commit_sha` pinning, submodules, sparse `directories`, three
//! attempts with backoff on git failures, and error hints chosen from git's stderr.
//! git itself runs on the host through the `git` interface: credentials never reach its
//! argv or `.git/config`.

use hoist_sdk::git::{self, CloneOptions, Credentials, GitError};
use hoist_sdk::{Capability, JsonSchema, Result, StepError, context, log, schemars};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Inputs {
    /// Clone URL (https, http, ssh, scp-style, file).
    repository: String,
    /// Branch or tag to clone (default: the remote's default branch).
    #[serde(default)]
    branch: Option<String>,
    /// Exact commit to check out (4 to 64 hex characters).
    #[serde(default)]
    commit_sha: Option<String>,
    /// Clone submodules too.
    #[serde(default)]
    include_submodules: bool,
    /// An access token (usually `{{ prefect.blocks.secret.<name> }}`).
    #[serde(default)]
    access_token: Option<String>,
    /// A credentials block's data (`username`, `access_token`/`token`/`password`).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    credentials: Option<Value>,
    /// Only check out these directories (sparse checkout).
    #[serde(default)]
    directories: Option<Vec<String>>,
    /// Name of the local directory (default: from the URL and branch).
    #[serde(default)]
    clone_directory_name: Option<String>,
}

#[derive(Serialize)]
struct Outputs {
    /// The checkout, relative to the working directory.
    directory: String,
}

fn truthy(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(_)) => true,
    }
}

fn invalid(msg: impl Into<String>) -> StepError {
    StepError::invalid_input(msg)
}

fn validate(i: &Inputs) -> Result<()> {
    let token = i.access_token.as_deref().is_some_and(|t| !t.is_empty());
    if token && truthy(&i.credentials) {
        return Err(invalid(
            "Please provide either an access token or credentials but not both.",
        ));
    }
    if i.branch.is_some() && i.commit_sha.is_some() {
        return Err(invalid(
            "Cannot provide both a branch and a commit SHA. Please provide only one.",
        ));
    }
    if i.branch.as_deref().is_some_and(|b| b.starts_with('-')) {
        return Err(invalid("Branch names cannot start with '-'."));
    }
    if let Some(sha) = &i.commit_sha {
        let ok = (4..=64).contains(&sha.len()) && sha.chars().all(|c| c.is_ascii_hexdigit());
        if !ok {
            return Err(invalid(format!(
                "Invalid commit SHA: '{sha}'. A commit SHA is 4 to 64 hexadecimal characters; to check out a branch or tag, use the 'branch' parameter instead."
            )));
        }
    }
    if let Some(Value::Object(c)) = &i.credentials
        && c.get("username").is_some_and(|u| truthy(&Some(u.clone())))
        && !c
            .get("access_token")
            .is_some_and(|v| truthy(&Some(v.clone())))
        && !c.get("password").is_some_and(|v| truthy(&Some(v.clone())))
    {
        return Err(invalid(
            "If a username is provided, an access token or password must also be provided.",
        ));
    }
    for d in i.directories.iter().flatten() {
        if d.starts_with("--") {
            log::warn!(
                "directory `{d}` starts with '--'; it is passed to git after `--`, as a path"
            );
        }
    }
    Ok(())
}

/// The local directory name (§4.2): the URL's last path segment with every `.git`
/// removed, plus `-<branch>` with `/` turned into `-`.
fn directory_name(repository: &str, branch: Option<&str>) -> String {
    let path = match repository.split_once("://") {
        Some((_, rest)) => rest.find('/').map(|i| &rest[i..]).unwrap_or(""),
        None => repository,
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let mut name = path.rsplit('/').next().unwrap_or("").replace(".git", "");
    if let Some(b) = branch {
        name.push('-');
        name.push_str(&b.replace('/', "-"));
    }
    name
}

/// Python's `urllib.parse.quote(s, safe="")`.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn dec(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A credential value: a string, or a secret wrapper `{"value": ...}`.
fn secret_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(m) => secret_str(m.get("value")),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit('@')
        .next()
        .unwrap_or(authority)
        .to_ascii_lowercase()
}

/// The userinfo Prefect would put in the URL (the formatting matrix of §4.2).
fn userinfo(url: &str, creds: &serde_json::Map<String, Value>) -> Result<String> {
    let token = secret_str(creds.get("access_token"))
        .or_else(|| secret_str(creds.get("token")))
        .or_else(|| secret_str(creds.get("password")))
        .ok_or_else(|| {
            invalid(
                "Please provide a `token` or `password` in your Credentials block to clone a repo.",
            )
        })?;
    if let Some(user) = secret_str(creds.get("username")) {
        return Ok(format!("{}:{}", enc(&user), enc(&token)));
    }
    let host = host_of(url);
    let split = |t: &str| {
        t.split_once(':')
            .map(|(u, p)| format!("{}:{}", enc(u), enc(p)))
    };
    if host.contains("bitbucketserver") {
        return split(&token).ok_or_else(|| {
            invalid("Please provide a `username` and a `password` or `token` in your Credentials block to clone a repo from Bitbucket Server (a token in the form `username:token`).")
        });
    }
    for (marker, prefix) in [("bitbucket", "x-token-auth"), ("gitlab", "oauth2")] {
        if host.contains(marker) {
            if let Some(rest) = token.strip_prefix(&format!("{prefix}:")) {
                return Ok(format!("{prefix}:{}", enc(rest)));
            }
            return Ok(split(&token).unwrap_or_else(|| format!("{prefix}:{}", enc(&token))));
        }
    }
    Ok(enc(&token))
}

/// The URL with any userinfo removed (for comparisons and messages).
fn strip_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

const HINTS: &[(&str, &str)] = &[
    (
        "authentication failed",
        "Authentication failed: check that the credentials or access token are valid and can read this repository.",
    ),
    (
        "repository not found",
        "The repository was not found: Verify the repository URL and that your credentials can access it.",
    ),
    (
        "could not resolve host",
        "The host could not be reached: check network connectivity and the repository URL.",
    ),
    (
        "connection refused",
        "The connection was refused: check network connectivity and the repository URL.",
    ),
    (
        "permission denied",
        "Permission denied: check the SSH key or token permissions for this repository.",
    ),
    (
        "destination path",
        "The destination already exists: remove the stale working directory or set `clone_directory_name`.",
    ),
    (
        "not found",
        "Not found: Verify the repository URL and that your credentials can access it.",
    ),
];

/// git's decisive line: the first `fatal:` (else `error:`) line of its stderr.
fn decisive(stderr: &str) -> Option<&str> {
    let lines = || stderr.lines().map(str::trim);
    lines()
        .find(|l| l.starts_with("fatal:"))
        .or_else(|| lines().find(|l| l.starts_with("error:")))
}

/// Failures a new attempt cannot fix: the repository, revision or credentials are
/// wrong, not the network.
const PERMANENT: &[&str] = &[
    "not found",
    "does not appear to be a git repository",
    "does not exist",
    "authentication failed",
    "could not read username",
    "could not read password",
    "invalid username or password",
    "permission denied",
    "couldn't find remote ref",
    "did not match any",
    "not a valid object name",
    "not our ref",
    "unadvertised object",
    "reference is not a tree",
    "destination path",
    "unknown revision",
];

/// Whether git's failure may pass on a new attempt (a network or server hiccup).
fn transient(stderr: &str) -> bool {
    let lower = stderr.to_lowercase();
    !PERMANENT.iter().any(|p| lower.contains(p))
}

fn clone_failure(url: &str, f: git::GitFailure) -> StepError {
    let code = f.exit_code.unwrap_or(-1);
    let lower = f.stderr.to_lowercase();
    let detail = match HINTS.iter().find(|(needle, _)| lower.contains(needle)) {
        Some((_, hint)) => match decisive(&f.stderr) {
            Some(line) => format!(" {line} {hint}"),
            None => format!(" {hint}"),
        },
        None => {
            let lines: Vec<&str> = f
                .stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let tail = &lines[lines.len().saturating_sub(3)..];
            format!(" git stderr: {}", tail.join(" | "))
        }
    };
    StepError::failure(
        format!(
            "Failed to clone repository '{}' with exit code {code}.{detail}",
            strip_userinfo(url)
        ),
        f.exit_code,
        None,
    )
}

enum Attempt {
    /// Worth retrying (git failed).
    Retry(StepError),
    /// Not (invalid input, denied, mismatched remote).
    Fatal(StepError),
}

fn from_git(url: &str) -> impl Fn(GitError) -> Attempt + '_ {
    move |e| match e {
        GitError::Refused(e) => Attempt::Fatal(e.into()),
        GitError::Failed(f) if transient(&f.stderr) => Attempt::Retry(clone_failure(url, f)),
        GitError::Failed(f) => Attempt::Fatal(clone_failure(url, f)),
    }
}

struct Plan<'a> {
    url: &'a str,
    dest: String,
    inputs: &'a Inputs,
    creds: Option<Credentials>,
}

impl Plan<'_> {
    fn fresh(&self) -> std::result::Result<(), Attempt> {
        let i = self.inputs;
        git::clone(&CloneOptions {
            url: self.url.to_string(),
            destination: self.dest.clone(),
            branch: if i.commit_sha.is_some() {
                None
            } else {
                i.branch.clone()
            },
            depth: if i.commit_sha.is_some() {
                None
            } else {
                Some(1)
            },
            submodules: i.include_submodules,
            sparse: i.directories.is_some(),
            blobless_no_checkout: i.commit_sha.is_some(),
            credentials: self.creds.clone(),
        })
        .map_err(from_git(self.url))?;
        if let Some(sha) = &i.commit_sha {
            git::fetch(&self.dest, Some(sha), false, self.creds.as_ref())
                .map_err(from_git(self.url))?;
            git::checkout(&self.dest, sha).map_err(from_git(self.url))?;
        }
        if let Some(dirs) = &i.directories {
            git::sparse_checkout_set(&self.dest, dirs).map_err(from_git(self.url))?;
        }
        Ok(())
    }

    fn existing(&self) -> std::result::Result<(), Attempt> {
        let i = self.inputs;
        let on_disk = git::remote_url(&self.dest)
            .map_err(from_git(self.url))?
            .unwrap_or_default();
        if strip_userinfo(&on_disk) != strip_userinfo(self.url) {
            return Err(Attempt::Fatal(invalid(format!(
                "The existing repository at {} does not match the configured repository {}",
                self.dest,
                strip_userinfo(self.url)
            ))));
        }
        if let Some(dirs) = &i.directories
            && !git::is_sparse(&self.dest).map_err(from_git(self.url))?
        {
            git::sparse_checkout_set(&self.dest, dirs).map_err(from_git(self.url))?;
        }
        let updated = match &i.commit_sha {
            Some(sha) => {
                if git::rev_parse(&self.dest, sha)
                    .map_err(from_git(self.url))?
                    .as_deref()
                    == Some(sha.as_str())
                {
                    return Ok(());
                }
                let shallow = git::is_shallow(&self.dest).map_err(from_git(self.url))?;
                let refspec = if shallow { None } else { Some(sha.as_str()) };
                git::fetch(&self.dest, refspec, shallow, self.creds.as_ref())
            }
            None => git::pull(
                &self.dest,
                i.branch.as_deref(),
                i.include_submodules,
                Some(1),
                self.creds.as_ref(),
            ),
        };
        if let Err(e) = updated {
            if let GitError::Refused(e) = e {
                return Err(Attempt::Fatal(e.into()));
            }
            log::warn!("updating the existing checkout failed; cloning it again");
            std::fs::remove_dir_all(&self.dest).map_err(|e| Attempt::Fatal(e.into()))?;
            return self.fresh();
        }
        if let Some(sha) = &i.commit_sha {
            git::checkout(&self.dest, sha).map_err(from_git(self.url))?;
        }
        Ok(())
    }
}

/// Seconds to wait before retry `attempt` (0-based): min(2^attempt, 10) ± 30 %.
fn backoff(attempt: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let base = f64::from(2u32.pow(attempt).min(10));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let jitter = (h.finish() % 600) as f64 / 1000.0 - 0.3;
    std::time::Duration::from_secs_f64(base * (1.0 + jitter))
}

const ATTEMPTS: u32 = 3;

fn run(inputs: Inputs) -> Result<Outputs> {
    validate(&inputs)?;
    let url = inputs.repository.as_str();
    let creds_map = match (&inputs.access_token, &inputs.credentials) {
        (Some(t), _) if !t.is_empty() => Some(serde_json::Map::from_iter([(
            "access_token".to_string(),
            Value::String(t.clone()),
        )])),
        (_, Some(Value::Object(m))) if !m.is_empty() => Some(m.clone()),
        _ => None,
    };
    let creds = match &creds_map {
        Some(m) => {
            let info = userinfo(url, m)?;
            url.to_ascii_lowercase().starts_with("https://").then(|| {
                let (user, pass) = info.split_once(':').unwrap_or((&info, ""));
                Credentials {
                    username: dec(user),
                    secret: dec(pass),
                }
            })
        }
        None => None,
    };
    let name = match &inputs.clone_directory_name {
        Some(n) => n.clone(),
        None => directory_name(url, inputs.branch.as_deref()),
    };
    let cwd = context::working_directory();
    let dest = cwd.join(&name);
    let plan = Plan {
        url,
        dest: dest.to_string_lossy().into_owned(),
        inputs: &inputs,
        creds,
    };
    // A clone that fails leaves nothing behind where there was nothing before.
    let existed = dest.exists();
    let clean = || {
        if !existed && dest.exists() {
            let _ = std::fs::remove_dir_all(&dest);
        }
    };
    let mut attempt = 0;
    loop {
        let result = if dest.join(".git").exists() {
            plan.existing()
        } else {
            plan.fresh()
        };
        if result.is_err() {
            clean();
        }
        match result {
            Ok(()) => break,
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) if attempt + 1 < ATTEMPTS => {
                let wait = backoff(attempt);
                log::warn!(
                    "{} (attempt {} of {ATTEMPTS}; retrying in {:.1} s)",
                    e.message(),
                    attempt + 1,
                    wait.as_secs_f64()
                );
                std::thread::sleep(wait);
                attempt += 1;
            }
            Err(Attempt::Retry(e)) => return Err(e),
        }
    }
    let directory = if name.is_empty() {
        ".".to_string()
    } else {
        name
    };
    Ok(Outputs { directory })
}

hoist_sdk::step! {
    name: "git_clone",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Clone a git repository (or update a checkout), Prefect-style",
    capabilities: [Capability::Net("*".into())],
    run: run,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_network_failures_are_retried_and_the_fatal_line_is_kept() {
        let missing = "Cloning into 'r'...\nfatal: repository 'https://h/r.git/' not found\n";
        assert!(!transient(missing));
        assert_eq!(
            decisive(missing),
            Some("fatal: repository 'https://h/r.git/' not found")
        );
        assert!(!transient("fatal: reference is not a tree: 1234abcd"));
        assert!(!transient(
            "error: pathspec 'x' did not match any file(s) known to git"
        ));
        assert!(!transient(
            "fatal: Authentication failed for 'https://h/r.git/'"
        ));
        assert!(transient(
            "fatal: unable to access 'https://h/': Could not resolve host: h"
        ));
        assert!(transient(
            "error: RPC failed; curl 56 Recv failure\nfatal: early EOF"
        ));
        assert_eq!(decisive("warning: x\nerror: y\n"), Some("error: y"));
        assert_eq!(decisive("nothing decisive"), None);
    }
    use serde_json::json;

    #[test]
    fn directory_names() {
        assert_eq!(
            directory_name("https://github.com/org/repo.git", None),
            "repo"
        );
        assert_eq!(
            directory_name("https://github.com/org/repo.git", Some("dev")),
            "repo-dev"
        );
        assert_eq!(
            directory_name(
                "https://github.com/org/repo.git",
                Some("feature/test-branch")
            ),
            "repo-feature-test-branch"
        );
        assert_eq!(directory_name("git@github.com:org/repo.git", None), "repo");
        assert_eq!(
            directory_name("https://bitbucket.test.com/scm/test/test.git", None),
            "test"
        );
        assert_eq!(
            directory_name("https://github.com/org/my.github.io.git", None),
            "myhub.io"
        );
        assert_eq!(directory_name("https://github.com/org/", None), "");
    }

    #[test]
    fn credential_matrix_c38() {
        let m = |v: Value| v.as_object().unwrap().clone();
        let cases = [
            (
                "https://github.com/org/repo.git",
                json!({"username": "oauth2", "access_token": "token"}),
                "oauth2:token",
            ),
            (
                "https://github.com/org/repo.git",
                json!({"username": "username", "password": "password"}),
                "username:password",
            ),
            (
                "https://github.com/org/repo.git",
                json!({"token": "my-github-token"}),
                "my-github-token",
            ),
            (
                "https://gitlab.com/org/repo.git",
                json!({"token": "my-gitlab-token"}),
                "oauth2:my-gitlab-token",
            ),
            (
                "https://gitlab.com/org/repo.git",
                json!({"token": "deploy-user:deploy-token"}),
                "deploy-user:deploy-token",
            ),
            (
                "https://bitbucket.org/org/repo.git",
                json!({"token": "my-bitbucket-token"}),
                "x-token-auth:my-bitbucket-token",
            ),
            (
                "https://bitbucket.test.com/scm/test/test.git",
                json!({"username": "user@domain.com", "password": "p@ss!word#123"}),
                "user%40domain.com:p%40ss%21word%23123",
            ),
            (
                "https://bitbucketserver.example.com/scm/project/repo.git",
                json!({"token": "user@corp.com:token!with#special"}),
                "user%40corp.com:token%21with%23special",
            ),
            (
                "https://github.com/org/repo.git",
                json!({"token": "ghp_token/with+special=chars"}),
                "ghp_token%2Fwith%2Bspecial%3Dchars",
            ),
        ];
        for (url, creds, want) in cases {
            assert_eq!(userinfo(url, &m(creds)).unwrap(), want, "{url}");
        }
        assert!(
            userinfo(
                "https://bitbucketserver.example.com/x/repo.git",
                &m(json!({"token": "plain"}))
            )
            .is_err()
        );
        let e = userinfo("https://github.com/org/repo.git", &m(json!({"other": "x"}))).unwrap_err();
        assert_eq!(
            e.message(),
            "Please provide a `token` or `password` in your Credentials block to clone a repo."
        );
        assert_eq!(dec("user%40domain.com"), "user@domain.com");
    }
}
