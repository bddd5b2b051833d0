//! Sandbox policy: which capabilities exist, how a user spells them, and whether a
//! grant covers what a step asks for. Default deny: an empty [`Grants`] allows nothing.
//!
//! A crate of its own, below everything else: the prefect.yaml model (grants in the
//! project file) and the runtime both depend on it, and it depends on no wasmtime.
//!
//! ```
//! use hoist_policy::{Capability, Grants};
//! let grants = Grants::new(["net:https://*.github.com".parse::<Capability>().unwrap()]);
//! assert!(grants.allows(&Capability::Net("https://api.github.com:443".into())));
//! assert!(!grants.allows(&Capability::SetCwd));
//! ```
#![deny(missing_docs)]
// No function in library code over 80 lines (clippy.toml): a CI check.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod encoding;
mod env;
pub mod package;
pub mod paths;
pub mod proxy;
pub mod secrets;
pub mod signature;
pub mod text;
pub mod time;
pub mod tls;
pub mod units;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use env::HostEnv;

/// One capability, as declared by a step and granted by a user.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Run a program (`process:<name|/abs/path|*>`).
    Process(String),
    /// See a host environment variable (`env:<NAME|PREFIX*|*>`).
    Env(String),
    /// Change the working directory of later steps (`set-cwd`).
    SetCwd,
    /// Read a directory outside the working directory (`read:<path>`).
    ReadDir(PathBuf),
    /// Read and write a directory outside the working directory (`write:<path>`).
    WriteDir(PathBuf),
    /// Outgoing network (`net:<scheme://host:port>`).
    Net(String),
    /// Build, tag and inspect images on the host's Docker engine (`docker:build`).
    DockerBuild,
    /// Push images to repositories matching a pattern (`docker:push:<registry/repo>`,
    /// `*` any run of characters); see [`docker_repository`].
    DockerPush(String),
}

/// A directory capability whose path is not absolute and plain.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}`: {1}; write the directory as an absolute path without `.` or `..` \
     (e.g. `write:/srv/out`)"
)]
pub struct BadDir(pub String, pub &'static str);

/// Why a directory in a capability is refused: grants and declarations name absolute,
/// plain paths, so what is compared is what is preopened (a `..` would be compared
/// lexically and then opened as something else).
pub fn plain_dir(path: &str) -> Result<PathBuf, &'static str> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err("the path is relative");
    }
    if p.components().any(|c| {
        matches!(
            c,
            std::path::Component::ParentDir | std::path::Component::CurDir
        )
    }) || path.split('/').any(|seg| seg == "." || seg == "..")
    {
        return Err("the path contains `.` or `..`");
    }
    if path.chars().any(|c| c.is_control()) {
        return Err("the path contains control characters");
    }
    Ok(p.to_path_buf())
}

/// A capability string that could not be understood.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a capability; write one of process:<program>, env:<NAME>, set-cwd, \
     read:<dir>, write:<dir>, net:<scheme://host:port>, docker:build, docker:push:<registry/repository> \
     (`*` allowed for program, `*` or PREFIX* for NAME)"
)]
pub struct BadCapability(pub String);

/// Why a capability string was refused.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// Not a capability at all.
    #[error(transparent)]
    Unknown(#[from] BadCapability),
    /// A directory capability with a path that is not absolute and plain.
    #[error(transparent)]
    Dir(#[from] BadDir),
}

impl FromStr for Capability {
    type Err = CapabilityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CapabilityError::Unknown(BadCapability(s.to_string()));
        if s == "set-cwd" {
            return Ok(Capability::SetCwd);
        }
        if s == "docker:build" {
            return Ok(Capability::DockerBuild);
        }
        if let Some(pattern) = s.strip_prefix("docker:push:") {
            if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad());
            }
            return Ok(Capability::DockerPush(pattern.into()));
        }
        let (kind, value) = s.split_once(':').ok_or_else(bad)?;
        if value.is_empty() {
            return Err(bad());
        }
        Ok(match kind {
            "process" => Capability::Process(value.into()),
            "env" => Capability::Env(value.into()),
            "read" | "write" => {
                let dir = plain_dir(value).map_err(|why| BadDir(s.to_string(), why))?;
                if kind == "read" {
                    Capability::ReadDir(dir)
                } else {
                    Capability::WriteDir(dir)
                }
            }
            "net" => Capability::Net(value.into()),
            _ => return Err(bad()),
        })
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::Process(p) => write!(f, "process:{p}"),
            Capability::Env(e) => write!(f, "env:{e}"),
            Capability::SetCwd => f.write_str("set-cwd"),
            Capability::ReadDir(d) => write!(f, "read:{}", d.display()),
            Capability::WriteDir(d) => write!(f, "write:{}", d.display()),
            Capability::Net(n) => write!(f, "net:{n}"),
            Capability::DockerBuild => f.write_str("docker:build"),
            Capability::DockerPush(p) => write!(f, "docker:push:{p}"),
        }
    }
}

impl Capability {
    /// Whether holding `self` allows what `wanted` asks for.
    pub fn covers(&self, wanted: &Capability) -> bool {
        use Capability::*;
        match (self, wanted) {
            (Process(g), Process(w)) => g == "*" || g == w,
            // `env:AWS_*`: every name with that prefix.
            (Env(g), Env(w)) => match g.strip_suffix('*') {
                Some(prefix) => w.starts_with(prefix),
                None => g == w,
            },
            (Net(g), Net(w)) => net_covers(g, w),
            (SetCwd, SetCwd) | (DockerBuild, DockerBuild) => true,
            (DockerPush(g), DockerPush(w)) => docker_push_covers(g, w),
            (ReadDir(g) | WriteDir(g), ReadDir(w)) | (WriteDir(g), WriteDir(w)) => w.starts_with(g),
            _ => false,
        }
    }
}

/// The port a scheme uses when a URL or pattern names none.
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" => Some(443),
        "http" => Some(80),
        "ssh" => Some(22),
        "git" => Some(9418),
        _ => None,
    }
}

/// Split `scheme://host[:port][/...]` into its parts (port defaulted by scheme).
pub fn split_origin(s: &str) -> Option<(String, String, Option<u16>)> {
    let (scheme, rest) = s.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h, Some(p)),
            Err(_) if p == "*" => (h, None),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    };
    let port = port.or_else(|| default_port(scheme));
    Some((scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), port))
}

/// Whether a `net:` grant pattern (`*`, `scheme://host[:port]` with `*` for the scheme,
/// a leading `*.` host wildcard, `*` host or port) covers a wanted `scheme://host:port`.
fn net_covers(pattern: &str, wanted: &str) -> bool {
    if pattern == "*" || pattern == wanted {
        return true;
    }
    let (Some((ps, ph, pp)), Some((ws, wh, wp))) = (split_origin(pattern), split_origin(wanted))
    else {
        return false;
    };
    let any_port = pattern.rsplit_once(':').is_some_and(|(_, p)| p == "*");
    let scheme_ok = ps == "*" || ps == ws;
    let host_ok = host_covers(&ph, &wh);
    let port_ok = any_port || pp == wp || (ps == "*" && pattern_has_no_port(pattern));
    scheme_ok && host_ok && port_ok
}

/// Whether a grant's host (`name`, `*.base`, `*`) covers the host `wanted`.
fn host_covers(pattern: &str, wanted: &str) -> bool {
    pattern == "*"
        || pattern == wanted
        || pattern
            .strip_prefix("*.")
            .is_some_and(|base| wanted.ends_with(&format!(".{base}")))
}

fn pattern_has_no_port(pattern: &str) -> bool {
    let rest = pattern.split_once("://").map(|(_, r)| r).unwrap_or(pattern);
    !rest.split('/').next().unwrap_or("").contains(':')
}

/// A Docker image reference's repository as Docker normalises it, without tag or
/// digest: `registry/path` (`app:1` is `docker.io/library/app`, `me/app` is
/// `docker.io/me/app`, `127.0.0.1:5000/team/app:1` is `127.0.0.1:5000/team/app`).
/// The first component is a registry when it holds a `.` or a `:` or is `localhost`.
/// `None` for what is not a reference: empty, upper case, spaces or control characters.
pub fn docker_repository(reference: &str) -> Option<String> {
    let name = reference.split('@').next()?;
    // A tag is a `:` after the last `/`.
    let name = match name.rsplit_once('/') {
        Some((head, last)) => match last.split_once(':') {
            Some((repo, _tag)) => format!("{head}/{repo}"),
            None => name.to_string(),
        },
        None => name.split(':').next()?.to_string(),
    };
    if name.is_empty()
        || name.starts_with('/')
        || name.ends_with('/')
        || name.contains("//")
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c.is_ascii_uppercase())
    {
        return None;
    }
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (name.as_str(), None),
    };
    Some(match rest {
        Some(rest) if first.contains(['.', ':']) || first == "localhost" => {
            format!("{}/{rest}", first.to_ascii_lowercase())
        }
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    })
}

/// Whether a `docker:push:` pattern covers a repository (normalised, see
/// [`docker_repository`]). The pattern is normalised the same way; `*` matches any run
/// of characters, `/` included.
fn docker_push_covers(pattern: &str, wanted: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (Some(p), Some(w)) = (docker_repository(pattern), docker_repository(wanted)) else {
        return false;
    };
    glob(p.as_bytes(), w.as_bytes())
}

/// `*`-only glob over bytes (any run, `/` included).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// `path` with symlinks resolved and made absolute; as given if it does not exist (it
/// then fails when it is opened).
pub fn canonical_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A capability with its directory (if any) canonical: grants and declarations are
/// compared, and directories preopened, as what they are on disk.
pub fn canonical(c: &Capability) -> Capability {
    match c {
        Capability::ReadDir(d) => Capability::ReadDir(canonical_path(d)),
        Capability::WriteDir(d) => Capability::WriteDir(canonical_path(d)),
        other => other.clone(),
    }
}

/// A set of granted capabilities. Empty means nothing is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants(Vec<Capability>);

impl Grants {
    /// No capability at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Grant exactly these.
    pub fn new(caps: impl IntoIterator<Item = Capability>) -> Self {
        let mut v: Vec<Capability> = caps.into_iter().collect();
        v.sort();
        v.dedup();
        Self(v)
    }

    /// Add one grant.
    pub fn add(&mut self, cap: Capability) {
        if !self.0.contains(&cap) {
            self.0.push(cap);
        }
    }

    /// Whether some grant covers `wanted`.
    pub fn allows(&self, wanted: &Capability) -> bool {
        self.0.iter().any(|g| g.covers(wanted))
    }

    /// The granted capabilities.
    pub fn iter(&self) -> impl Iterator<Item = &Capability> {
        self.0.iter()
    }

    /// Whether a step holding these grants may ask the resolver for `name` (a lookup
    /// is traffic, and a name can carry data out): a `net` grant names that host, or a
    /// wildcard host covering it (`*.example.com`; a `*` host or `net:*` covers every
    /// name, as such a grant already lets the step connect anywhere). Case and a
    /// trailing dot do not matter; an address literal needs no lookup and is allowed.
    pub fn allows_lookup(&self, name: &str) -> bool {
        if name.parse::<std::net::IpAddr>().is_ok() {
            return true;
        }
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.is_empty() {
            return false;
        }
        self.iter().any(|c| match c {
            Capability::Net(p) if p == "*" => true,
            Capability::Net(p) => split_origin(p)
                .is_some_and(|(_, host, _)| host_covers(host.trim_matches(['[', ']']), &name)),
            _ => false,
        })
    }

    /// Whether the program may be run. A bare-name grant matches the same bare name
    /// (looked up on PATH by the host); a path grant matches that exact path.
    pub fn allows_program(&self, program: &str) -> bool {
        self.allows(&Capability::Process(program.to_string()))
    }

    /// Whether the host environment variable may be seen.
    pub fn allows_env(&self, name: &str) -> bool {
        self.allows(&Capability::Env(name.to_string()))
    }

    /// The variables of the host environment `env` the step (and the processes it runs)
    /// may see.
    pub fn visible_env(&self, env: &HostEnv) -> Vec<(String, String)> {
        if !self.0.iter().any(|c| matches!(c, Capability::Env(_))) {
            return Vec::new();
        }
        env.iter()
            .filter(|(k, _)| self.allows_env(k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Extra directories to preopen, with whether they are writable.
    pub fn dirs(&self) -> impl Iterator<Item = (&Path, bool)> {
        self.0.iter().filter_map(|c| match c {
            Capability::ReadDir(d) => Some((d.as_path(), false)),
            Capability::WriteDir(d) => Some((d.as_path(), true)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_needs_a_grant_naming_the_host() {
        let net = |p: &str| Grants::new(vec![Capability::Net(p.into())]);
        let api = net("https://api.example.invalid");
        assert!(api.allows_lookup("api.example.invalid"));
        assert!(api.allows_lookup("API.example.invalid."));
        assert!(!api.allows_lookup("secret-value.attacker.example"));
        assert!(!api.allows_lookup("x.api.example.invalid"));
        assert!(!api.allows_lookup(""));
        assert!(api.allows_lookup("10.0.0.5"), "an address is no lookup");
        let sub = net("https://*.example.com");
        assert!(sub.allows_lookup("a.b.example.com"));
        assert!(!sub.allows_lookup("example.com.attacker.net"));
        assert!(net("tcp://db.internal:5432").allows_lookup("db.internal"));
        assert!(net("*").allows_lookup("anything.at.all"));
        assert!(net("tcp://*:5432").allows_lookup("anything.at.all"));
        assert!(!Grants::new(vec![Capability::Env("HOME".into())]).allows_lookup("a.example"));
    }

    #[test]
    fn visible_env_selects_from_the_given_environment_only() {
        let env: HostEnv = [("AWS_REGION", "eu"), ("AWS_KEY", "k"), ("HOME", "/root")]
            .into_iter()
            .collect();
        let grants = Grants::new(vec![Capability::Env("AWS_*".into())]);
        let mut seen = grants.visible_env(&env);
        seen.sort();
        assert_eq!(
            seen,
            [
                ("AWS_KEY".into(), "k".into()),
                ("AWS_REGION".into(), "eu".into())
            ]
        );
        assert!(Grants::none().visible_env(&env).is_empty());
        assert!(grants.visible_env(&HostEnv::empty()).is_empty());
    }

    #[test]
    fn parses_and_prints_every_kind() {
        for s in [
            "process:git",
            "process:*",
            "env:HOME",
            "set-cwd",
            "read:/data",
            "write:/out",
            "net:https://*.github.com:443",
            "docker:build",
            "docker:push:127.0.0.1:5000/*",
            "docker:push:*",
        ] {
            let c: Capability = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
        }
        for bad in [
            "git",
            "process:",
            "fs:/x",
            "",
            "docker:",
            "docker:push:",
            "docker:run",
        ] {
            assert!(bad.parse::<Capability>().is_err(), "{bad}");
        }
    }

    #[test]
    fn directory_grants_are_absolute_and_plain() {
        for bad in [
            "write:/srv/../../..",
            "write:/srv/..",
            "read:/srv/./x",
            "read:srv",
            "write:.",
            "read:../x",
            "write:/srv/a/../b",
        ] {
            let e = bad.parse::<Capability>().unwrap_err().to_string();
            assert!(e.contains("absolute path without"), "{bad}: {e}");
        }
        assert!(plain_dir("/tmp/granted/../../..").is_err());
        assert!(plain_dir("relative").is_err());
        assert_eq!(plain_dir("/srv/out").unwrap(), PathBuf::from("/srv/out"));
    }

    #[test]
    fn network_patterns() {
        let g = |p: &str| Grants::new([Capability::Net(p.into())]);
        let want = |w: &str| Capability::Net(w.into());
        assert!(g("*").allows(&want("https://github.com:443")));
        assert!(g("https://github.com").allows(&want("https://github.com:443")));
        assert!(!g("https://github.com").allows(&want("http://github.com:80")));
        assert!(!g("https://github.com").allows(&want("https://github.com:8443")));
        assert!(g("https://*.example.com").allows(&want("https://git.example.com:443")));
        assert!(!g("https://*.example.com").allows(&want("https://example.com.evil.org:443")));
        assert!(g("http://127.0.0.1:*").allows(&want("http://127.0.0.1:8123")));
        assert!(g("*://gitlab.com").allows(&want("ssh://gitlab.com:22")));
    }

    #[test]
    fn docker_references_and_push_patterns() {
        let repo = |r: &str| docker_repository(r);
        assert_eq!(repo("app").as_deref(), Some("docker.io/library/app"));
        assert_eq!(repo("app:1.0").as_deref(), Some("docker.io/library/app"));
        assert_eq!(repo("me/app:1").as_deref(), Some("docker.io/me/app"));
        assert_eq!(
            repo("127.0.0.1:5000/team/app:1").as_deref(),
            Some("127.0.0.1:5000/team/app")
        );
        assert_eq!(
            repo("localhost/app@sha256:ab").as_deref(),
            Some("localhost/app")
        );
        assert_eq!(repo("ghcr.io/org/app").as_deref(), Some("ghcr.io/org/app"));
        for bad in ["", "/app", "app/", "a//b", "App", "a b", "a\nb"] {
            assert_eq!(repo(bad), None, "{bad:?}");
        }
        let g = |p: &str| Grants::new([format!("docker:push:{p}").parse::<Capability>().unwrap()]);
        let push = |r: &str| Capability::DockerPush(r.into());
        assert!(g("127.0.0.1:5000/*").allows(&push("127.0.0.1:5000/team/app:1")));
        assert!(!g("127.0.0.1:5000/*").allows(&push("127.0.0.1:5001/team/app")));
        assert!(!g("127.0.0.1:5000/*").allows(&push("127.0.0.1:5000.evil.org/app")));
        assert!(g("me/*").allows(&push("docker.io/me/app")));
        assert!(g("me/*").allows(&push("me/app:2")));
        assert!(!g("me/*").allows(&push("mel/app")));
        assert!(!g("me/app").allows(&push("me/app2")));
        assert!(g("*").allows(&push("anything.example/x")));
        assert!(!Grants::new([Capability::DockerBuild]).allows(&push("me/app")));
        assert!(!g("*").allows(&Capability::DockerBuild));
    }

    #[test]
    fn default_denies_and_wildcards_cover() {
        let none = Grants::none();
        assert!(!none.allows_program("true"));
        assert!(!none.allows_env("HOME"));
        let g = Grants::new([
            "process:git".parse().unwrap(),
            "env:*".parse().unwrap(),
            "write:/srv".parse().unwrap(),
        ]);
        assert!(g.allows_program("git"));
        assert!(!g.allows_program("/usr/bin/git"));
        assert!(!g.allows_program("sh"));
        assert!(g.allows_env("ANYTHING"));
        assert!(g.allows(&"read:/srv/data".parse().unwrap()));
        assert!(!g.allows(&"read:/srvx".parse().unwrap()));
        assert!(!g.allows(&Capability::SetCwd));
        let aws = Grants::new(["env:AWS_*".parse().unwrap()]);
        assert!(aws.allows_env("AWS_SECRET_ACCESS_KEY"));
        assert!(!aws.allows_env("HOME"));
        assert!(!aws.allows_env("XAWS_"));
    }
}
