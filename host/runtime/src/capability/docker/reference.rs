//! Docker image references as the engine reads them (`[registry/]path[:tag][@digest]`),
//! and plain text for the values a build's query carries.

use crate::bindings::StepError;

/// A name component of a repository: `[a-z0-9]+` joined by `.`, `_`, `__` or `-`s.
pub(super) fn name_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut prev_sep = false;
    for (i, &x) in b.iter().enumerate() {
        let sep = matches!(x, b'.' | b'_' | b'-');
        if !(x.is_ascii_lowercase() || x.is_ascii_digit() || sep) {
            return false;
        }
        if sep && prev_sep && !(x == b'_' && b[i - 1] == b'_' || x == b'-') {
            return false;
        }
        prev_sep = sep;
    }
    true
}

/// A registry host: labels of `[A-Za-z0-9-]`, dots between, an optional `:port`.
pub(super) fn domain(c: &str) -> bool {
    let (host, port) = match c.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (c, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
        });
    host_ok
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

pub(super) fn tag_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.as_bytes()[0] != b'.'
        && t.as_bytes()[0] != b'-'
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A reference checked against Docker's grammar: `(name, tag)`; ids (`sha256:<hex>` or
/// hex) are `(id, None)`. Nothing else reaches a URL.
pub(super) fn reference(what: &str, r: &str) -> Result<(String, Option<String>), StepError> {
    let bad = |why: &str| {
        StepError::InvalidInput(format!(
            "{what} `{}` is not an image reference ({why}); write `[registry/]name[:tag]`, lower case",
            hoist_policy::text::sanitize(r)
        ))
    };
    if let Some(hex) = r.strip_prefix("sha256:")
        && hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok((r.to_string(), None));
    }
    if r.contains('@') {
        return Err(bad("digests are not accepted here"));
    }
    let (name, tag) = match r.rsplit_once('/') {
        Some((head, last)) => match last.split_once(':') {
            Some((repo, tag)) => (format!("{head}/{repo}"), Some(tag.to_string())),
            None => (r.to_string(), None),
        },
        None => match r.split_once(':') {
            Some((repo, tag)) => (repo.to_string(), Some(tag.to_string())),
            None => (r.to_string(), None),
        },
    };
    if name.len() > 255 {
        return Err(bad("too long"));
    }
    let parts: Vec<&str> = name.split('/').collect();
    let (first, rest) = parts.split_first().ok_or_else(|| bad("empty"))?;
    let registry = !rest.is_empty() && (first.contains(['.', ':']) || *first == "localhost");
    let ok = if registry {
        domain(first) && rest.iter().all(|c| name_component(c))
    } else {
        parts.iter().all(|c| name_component(c))
    };
    if !ok {
        return Err(bad(
            "each part is lower-case letters and digits, separated by `.`, `_` or `-`",
        ));
    }
    if let Some(t) = &tag
        && !tag_ok(t)
    {
        return Err(bad("a tag is up to 128 letters, digits, `_`, `.` and `-`"));
    }
    Ok((name, tag))
}

/// `name:tag` (a missing tag is `latest`).
pub(super) fn full(name: &str, tag: &Option<String>) -> String {
    if name.starts_with("sha256:") {
        return name.to_string();
    }
    format!("{name}:{}", tag.as_deref().unwrap_or("latest"))
}

pub(super) fn plain(what: &str, v: &str) -> Result<(), StepError> {
    if v.chars().any(|c| c.is_control()) {
        return Err(StepError::InvalidInput(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}
