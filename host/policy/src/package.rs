//! Registry package names (`namespace/name`) and what an install asks for
//! (`namespace/name@req`): the registry's server and client, and step-name resolution.
//!
//! A name is plain ASCII on purpose: lowercase letters and digits in runs joined by one
//! `-` or `_`, at most 64 characters a part. No `.` (so no `..`), no `/` inside a part, no
//! Unicode look-alikes (`аcme` with a Cyrillic `а` is refused, not normalised). The same
//! string is the OCI repository (`HOST/namespace/name`), whose grammar it fits.

use std::fmt;
use std::str::FromStr;

/// `namespace/name`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageName {
    /// The publisher's namespace (`acme`); a token publishes into one namespace.
    pub namespace: String,
    /// The package within it (`s3-sync`).
    pub name: String,
}

/// Why a package name or requirement is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "package name `{given}`: {why} (a name is NAMESPACE/NAME, each lowercase ASCII letters and digits joined by single `-` or `_`, at most 64 characters, e.g. acme/s3-sync)"
)]
pub struct NameError {
    /// The name as given (control characters escaped).
    pub given: String,
    /// What is wrong with it.
    pub why: String,
}

const MAX_PART: usize = 64;

fn check_part(part: &str, what: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if part.len() > MAX_PART {
        return Err(format!("the {what} is longer than {MAX_PART} characters"));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(if c.is_ascii_uppercase() {
            format!("the {what} has an uppercase letter `{c}`")
        } else if c.is_ascii() {
            format!("the {what} has the character {c:?}")
        } else {
            format!(
                "the {what} has the non-ASCII character {c:?} (U+{:04X})",
                u32::from(c)
            )
        });
    }
    let bytes = part.as_bytes();
    let sep = |b: u8| b == b'-' || b == b'_';
    if sep(bytes[0]) || sep(bytes[bytes.len() - 1]) {
        return Err(format!("the {what} starts or ends with `-` or `_`"));
    }
    if bytes.windows(2).any(|w| sep(w[0]) && sep(w[1])) {
        return Err(format!("the {what} has two separators in a row"));
    }
    Ok(())
}

impl PackageName {
    /// Validate `namespace` and `name` as parts of a package name.
    pub fn new(namespace: &str, name: &str) -> Result<Self, NameError> {
        let err = |why: String| NameError {
            given: format!("{namespace}/{name}").escape_debug().to_string(),
            why,
        };
        check_part(namespace, "namespace").map_err(err)?;
        check_part(name, "name").map_err(err)?;
        Ok(Self {
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    /// Whether `s` is written as a package name (`ns/name`), valid or not: one `/`, no
    /// `.wasm`, not a path (`./`, `/`, `~`). Used to tell an installed package from a
    /// plugin file in a step's name.
    pub fn looks_like(s: &str) -> bool {
        s.matches('/').count() == 1
            && !s.ends_with(".wasm")
            && !s.starts_with(['.', '/', '~'])
            && !s.contains(char::is_whitespace)
    }

    /// `namespace/name`, the OCI repository.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Where the package lives once installed in the plugins directory `plugins`: its
    /// component `NS/NAME.wasm` and the record beside it, `NS/NAME.json` (the one
    /// layout: the package manager writes it, the runner's plan reads it).
    pub fn installed_in(
        &self,
        plugins: &std::path::Path,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = plugins.join(&self.namespace);
        (
            dir.join(format!("{}.wasm", self.name)),
            dir.join(format!("{}.json", self.name)),
        )
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for PackageName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        match s.split_once('/') {
            Some((ns, name)) => Self::new(ns, name),
            None => Err(NameError {
                given: s.escape_debug().to_string(),
                why: "there is no `/` between namespace and name".into(),
            }),
        }
    }
}

/// What an install asks for: `ns/name` (the newest version), `ns/name@^1.2`, `ns/name@1.2.0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The package.
    pub package: PackageName,
    /// The versions that satisfy it (`*` when none was written).
    pub versions: semver::VersionReq,
}

impl FromStr for Requirement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, req) = match s.split_once('@') {
            Some((name, req)) => (name, req),
            None => (s, "*"),
        };
        let package: PackageName = name.parse().map_err(|e: NameError| e.to_string())?;
        let versions = semver::VersionReq::parse(req).map_err(|e| {
            format!("version requirement `{req}` of {package}: {e} (e.g. ^1.2, =1.2.0, >=1, *)")
        })?;
        Ok(Self { package, versions })
    }
}

/// A published version: strict semver (`1.2.0`, `1.2.0-rc.1`), no build metadata (it
/// is not part of the ordering, so two versions differing only there would collide).
pub fn parse_version(s: &str) -> Result<semver::Version, String> {
    let v = semver::Version::parse(s).map_err(|e| {
        format!(
            "version `{}`: {e} (a version is semver: MAJOR.MINOR.PATCH, e.g. 1.2.0)",
            s.escape_debug()
        )
    })?;
    if !v.build.is_empty() {
        return Err(format!(
            "version `{s}`: build metadata (`+{}`) is not allowed in a published version",
            v.build
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_ascii_parts() {
        let ok: PackageName = "acme/s3-sync".parse().unwrap();
        assert_eq!(ok.repository(), "acme/s3-sync");
        assert!("acme/s3_sync2".parse::<PackageName>().is_ok());
        for (bad, why) in [
            ("acme", "no `/`"),
            ("acme/../x", "character '.'"),
            ("../acme", "character '.'"),
            ("acme/", "name is empty"),
            ("/x", "namespace is empty"),
            ("Acme/x", "uppercase"),
            ("\u{430}cme/x", "non-ASCII character 'а' (U+0430)"),
            ("acme/x--y", "two separators"),
            ("acme/-x", "starts or ends"),
            ("acme/x/y", "character '/'"),
            ("acme/x y", "character ' '"),
        ] {
            let e = bad.parse::<PackageName>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("acme/{}", "a".repeat(65));
        assert!(
            long.parse::<PackageName>()
                .unwrap_err()
                .to_string()
                .contains("longer than 64")
        );
    }

    #[test]
    fn requirements_and_versions() {
        let r: Requirement = "acme/x@^1.2".parse().unwrap();
        assert!(r.versions.matches(&"1.3.0".parse().unwrap()));
        assert!(!r.versions.matches(&"2.0.0".parse().unwrap()));
        let any: Requirement = "acme/x".parse().unwrap();
        assert_eq!(any.versions, semver::VersionReq::STAR);
        assert!(
            "acme/x@bogus"
                .parse::<Requirement>()
                .unwrap_err()
                .contains("version requirement `bogus`")
        );
        assert!(parse_version("1.2.0").is_ok());
        assert!(parse_version("1.2").is_err());
        assert!(
            parse_version("1.2.0+build5")
                .unwrap_err()
                .contains("build metadata")
        );
        assert!(PackageName::looks_like("acme/x"));
        assert!(!PackageName::looks_like("./x/y"));
        assert!(!PackageName::looks_like("plugins/x.wasm"));
        assert!(!PackageName::looks_like("a/b/c"));
    }
}
