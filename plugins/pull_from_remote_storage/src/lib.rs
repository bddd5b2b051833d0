//! `pull_from_remote_storage` (`prefect.deployments.steps.pull_from_remote_storage`):
//! copy a remote folder into `<cwd>/<netloc>/<path>` and return that relative path.
//!
//! Spec §4.3 (fsspec URLs). Supported here: `file://` (a local folder, read through a
//! read-only view of the filesystem), `http(s)://` (one file, or a directory listing page
//! whose links are followed, as fsspec's HTTP filesystem does) and `s3://` (fsspec/s3fs
//! settings `key`, `secret`, `token`, `endpoint_url`, `client_kwargs`). Other schemes
//! are refused by name. Failures read `Failed to pull contents from remote storage
//! '<url>' to <dest>`, with a hint, as in Prefect.

use hoist_sdk::s3::{Client, Config};
use hoist_sdk::{Capability, JsonSchema, Result, StepError, http, log, schemars};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

type Map = serde_json::Map<String, serde_json::Value>;

#[derive(Deserialize, JsonSchema)]
struct Inputs {
    /// An fsspec URL: `file://`, `http(s)://` or `s3://` here.
    url: String,
    /// Settings for the filesystem (for s3: `key`, `secret`, `token`, `endpoint_url`,
    /// `client_kwargs`).
    #[serde(flatten)]
    settings: Map,
}

#[derive(Serialize)]
struct Outputs {
    directory: String,
}

fn text(m: &Map, key: &str) -> Option<String> {
    m.get(key)?
        .as_str()
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

fn s3_config(settings: &Map) -> Config {
    let client_kwargs = settings
        .get("client_kwargs")
        .and_then(|v| v.as_object())
        .cloned()
        .unwrap_or_default();
    Config {
        access_key: text(settings, "key"),
        secret_key: text(settings, "secret"),
        session_token: text(settings, "token"),
        region: text(&client_kwargs, "region_name"),
        endpoint_url: text(settings, "endpoint_url")
            .or_else(|| text(&client_kwargs, "endpoint_url")),
    }
    .or_env()
}

/// Copy the folder (or file) at `src` into `dest`, recursively.
fn copy_local(src: &Path, dest: &Path) -> Result<(usize, u64)> {
    let meta = std::fs::metadata(src)
        .map_err(|e| StepError::not_found(format!("{}: {e}", src.display())))?;
    if meta.is_file() {
        let name = src.file_name().unwrap_or_default();
        let n = std::fs::copy(src, dest.join(name))?;
        return Ok((1, n));
    }
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dest.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&to)?;
            let (f, b) = copy_local(&from, &to)?;
            files += f;
            bytes += b;
        } else {
            bytes += std::fs::copy(&from, &to)?;
            files += 1;
        }
    }
    Ok((files, bytes))
}

/// Relative links of an HTML listing that stay under the listed directory.
fn listing_links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("href=") {
        rest = &rest[i + 5..];
        let quote = rest.chars().next().unwrap_or(' ');
        let link = if quote == '"' || quote == '\'' {
            rest[1..].split(quote).next().unwrap_or("")
        } else {
            rest.split(|c: char| c.is_whitespace() || c == '>')
                .next()
                .unwrap_or("")
        };
        let link = link.split(['?', '#']).next().unwrap_or("");
        let local = !link.is_empty()
            && !link.contains("://")
            && !link.starts_with('/')
            && !link.split('/').any(|s| s == ".." || s == ".")
            && !link.starts_with("mailto:");
        if local && !out.iter().any(|l| l == link) {
            out.push(link.to_string());
        }
    }
    out
}

/// Percent-decode a URL path segment for use as a file name.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn fetch_to(url: &str, target: &Path) -> Result<u64> {
    let resp = http::send("GET", url, &[], http::Body::Empty)?;
    if resp.status != 200 {
        return Err(StepError::failed(format!(
            "GET {url}: HTTP {}",
            resp.status
        )));
    }
    let mut file = std::fs::File::create(target)?;
    resp.copy_to(&mut file)
}

/// Download `url` into `dest`: a directory listing (a URL ending in `/` answered with
/// HTML) is walked link by link, anything else is saved under its last segment.
fn copy_http(url: &str, dest: &Path, depth: usize) -> Result<(usize, u64)> {
    if depth > 32 {
        return Err(StepError::failed(format!("{url}: listing nested too deep")));
    }
    let resp = http::send("GET", url, &[], http::Body::Empty)?;
    if resp.status != 200 {
        let hint = match resp.status {
            401 | 403 => Some("the server refused access: check the URL's credentials".to_string()),
            404 => Some("nothing at that URL".to_string()),
            _ => None,
        };
        return Err(StepError::failure(
            format!("GET {url}: HTTP {}", resp.status),
            None,
            hint,
        ));
    }
    let is_html = resp
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html"));
    if url.ends_with('/') && is_html {
        let page = String::from_utf8_lossy(&resp.bytes()?).into_owned();
        let (mut files, mut bytes) = (0, 0);
        for link in listing_links(&page) {
            let child = format!("{url}{link}");
            let name = decode(link.trim_end_matches('/'));
            let target = dest.join(&name);
            if link.ends_with('/') {
                std::fs::create_dir_all(&target)?;
                let (f, b) = copy_http(&child, &target, depth + 1)?;
                files += f;
                bytes += b;
            } else {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                bytes += fetch_to(&child, &target)?;
                files += 1;
            }
        }
        return Ok((files, bytes));
    }
    let name = url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("index");
    let mut file = std::fs::File::create(dest.join(decode(name)))?;
    Ok((1, resp.copy_to(&mut file)?))
}

fn pull(url: &str, settings: &Map, netloc: &str, path: &str, dest: &Path) -> Result<(usize, u64)> {
    let scheme = url.split("://").next().unwrap_or("");
    match scheme {
        "file" | "local" => copy_local(Path::new(&format!("/{path}")), dest),
        "http" | "https" => copy_http(url, dest, 0),
        "s3" | "s3a" => {
            let client = Client::new(s3_config(settings))?;
            client.download_folder(netloc, path, dest)
        }
        _ => unreachable!("checked in run"),
    }
}

fn run(i: Inputs) -> Result<Outputs> {
    let url = i.url.trim();
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        StepError::invalid_input(format!("`{url}` is not a URL (expected scheme://...)"))
    })?;
    if !matches!(scheme, "file" | "local" | "http" | "https" | "s3" | "s3a") {
        return Err(StepError::invalid_input(format!(
            "pull_from_remote_storage: `{scheme}://` URLs are not supported by Hoist yet \
             (supported: file://, http://, https://, s3://)"
        )));
    }
    let (netloc, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let netloc = netloc.rsplit('@').next().unwrap_or(netloc);
    let path = path.trim_start_matches('/');
    let relative: PathBuf = [netloc, path].iter().filter(|s| !s.is_empty()).collect();
    if relative
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(StepError::invalid_input(format!(
            "`{url}`: `..` is not allowed in the path"
        )));
    }
    let dest = std::env::current_dir()?.join(&relative);
    std::fs::create_dir_all(&dest)?;
    let settings: Map = i
        .settings
        .into_iter()
        .filter(|(k, _)| k != "pull_interval")
        .collect();
    match pull(url, &settings, netloc, path, &dest) {
        Ok((files, bytes)) => {
            log::info!(
                "pulled {files} files ({bytes} bytes) from {url} into {}",
                dest.display()
            );
            Ok(Outputs {
                directory: relative.display().to_string(),
            })
        }
        Err(e) => {
            let hint = match e.message() {
                m if m.contains("NoSuchBucket") => " Hint: the bucket does not exist.",
                m if m.contains("AccessDenied")
                    || m.contains("403")
                    || m.contains("SignatureDoesNotMatch")
                    || m.contains("InvalidAccessKeyId") =>
                {
                    " Hint: access was denied: check the credentials."
                }
                m if m.contains("connection refused") || m.contains("host not found") => {
                    " Hint: the server could not be reached."
                }
                _ => "",
            };
            Err(StepError::failed(format!(
                "Failed to pull contents from remote storage '{url}' to {}: {}.{hint}",
                dest.display(),
                e.message().trim_end_matches('.')
            )))
        }
    }
}

hoist_sdk::step! {
    name: "pull_from_remote_storage",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Copy a file://, http(s):// or s3:// folder into the working directory",
    capabilities: [
        Capability::Net("*".into()),
        Capability::Env("AWS_*".into()),
        // file:// sources anywhere on the machine, read-only (the URL is the user's own).
        Capability::ReadDir("/".into()),
    ],
    run: run,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_of_a_listing() {
        let html = r#"<ul><li><a href="a.py">a.py</a><li><a href='sub/'>sub/</a>
            <a href="../up">up</a><a href="/abs">x</a><a href="http://x/y">y</a>
            <a href="b%20c.txt?x=1">b</a><a href=plain.txt>p</a><a href="a.py">dup</a></ul>"#;
        assert_eq!(
            listing_links(html),
            vec!["a.py", "sub/", "b%20c.txt", "plain.txt"]
        );
        assert_eq!(decode("b%20c.txt"), "b c.txt");
        assert_eq!(decode("100%"), "100%");
    }
}
