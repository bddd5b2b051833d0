//! A small S3 client over [`crate::http`]: ListObjectsV2, GetObject (streamed to a
//! writer), PutObject (streamed from a reader), all signed with AWS Signature V4.
//!
//! Enabled by the SDK's `s3` feature. Works against AWS (virtual-hosted addressing) and
//! S3-compatible servers given an endpoint URL (path-style addressing: MinIO, s3s, …).
//! The secret key never leaves the plugin: only the signature is sent.

use crate::StepError;
use crate::http::{self, Body};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// Credentials and where to send requests.
#[derive(Clone, Default)]
pub struct Config {
    /// Access key id; `None` sends unsigned (anonymous) requests.
    pub access_key: Option<String>,
    /// Secret access key.
    pub secret_key: Option<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// Region; `us-east-1` when unset.
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible server (path-style requests), e.g.
    /// `http://127.0.0.1:9000`.
    pub endpoint_url: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret or the token.
        f.debug_struct("Config")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .finish_non_exhaustive()
    }
}

type Map = serde_json::Map<String, serde_json::Value>;

fn text(m: Option<&Map>, key: &str) -> Option<String> {
    m?.get(key)?
        .as_str()
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

impl Config {
    /// The configuration `prefect_aws`'s `push_to_s3` / `pull_from_s3` build from their
    /// `credentials` (an `aws-credentials` or `minio-credentials` block's data) and
    /// `client_parameters`: keys from `aws_access_key_id`/`aws_secret_access_key` or
    /// `minio_root_user`/`minio_root_password`, region and endpoint from the credentials'
    /// `aws_client_parameters` or else `client_parameters`. What is still unset comes
    /// from the environment, as boto3 would take it ([`Config::or_env`]).
    pub fn from_prefect_aws(credentials: Option<&Map>, client_parameters: Option<&Map>) -> Self {
        let params = credentials
            .and_then(|c| c.get("aws_client_parameters"))
            .and_then(|v| v.as_object())
            .or(client_parameters);
        Config {
            access_key: text(credentials, "aws_access_key_id")
                .or_else(|| text(credentials, "minio_root_user")),
            secret_key: text(credentials, "aws_secret_access_key")
                .or_else(|| text(credentials, "minio_root_password")),
            session_token: text(credentials, "aws_session_token"),
            region: text(credentials, "region_name")
                .or_else(|| text(client_parameters, "region_name")),
            endpoint_url: text(params, "endpoint_url"),
        }
        .or_env()
    }

    /// Fill what is unset from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION` and
    /// `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL` (visible only when granted `env:` access).
    pub fn or_env(mut self) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if self.access_key.is_none() && self.secret_key.is_none() {
            self.access_key = env("AWS_ACCESS_KEY_ID");
            self.secret_key = env("AWS_SECRET_ACCESS_KEY");
            if self.session_token.is_none() {
                self.session_token = env("AWS_SESSION_TOKEN");
            }
        }
        self.region = self
            .region
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"));
        self.endpoint_url = self
            .endpoint_url
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        self
    }
}

/// The `env:` capabilities [`Config::or_env`] reads.
pub const ENV_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
];

/// Where a key lands under `root` when `folder` is pulled: the key's path relative to
/// `folder`, component by component. `None` for keys outside `folder` and for
/// "directory" markers; an error for keys that would escape `root` (`..`).
pub fn relative_key<'k>(folder: &str, key: &'k str) -> crate::Result<Option<Vec<&'k str>>> {
    let want: Vec<&str> = folder
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let parts: Vec<&str> = key
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if key.ends_with('/') || parts.len() <= want.len() || parts[..want.len()] != want[..] {
        return Ok(None);
    }
    let rest = parts[want.len()..].to_vec();
    if rest.contains(&"..") {
        return Err(StepError::denied(format!(
            "object key `{key}` contains `..`: refusing to write outside the destination"
        )));
    }
    Ok(Some(rest))
}

/// The key of `relative` (a `/`-separated path) under `folder`, as `Path(folder) / relative`
/// would spell it.
pub fn key_under(folder: &str, relative: &str) -> String {
    let folder = folder.trim_end_matches('/');
    if folder.is_empty() || folder == "." {
        relative.to_string()
    } else {
        format!("{folder}/{relative}")
    }
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// The object's key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// An S3 client.
#[derive(Clone, Debug)]
pub struct Client {
    config: Config,
    region: String,
}

impl Client {
    /// A client for `config`.
    pub fn new(config: Config) -> crate::Result<Self> {
        if config.access_key.is_some() != config.secret_key.is_some() {
            return Err(StepError::invalid_input(
                "S3 credentials need both an access key id and a secret access key",
            ));
        }
        if let Some(e) = &config.endpoint_url
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(StepError::invalid_input(format!(
                "endpoint_url `{e}` must start with http:// or https://"
            )));
        }
        let region = config
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".into());
        Ok(Self { config, region })
    }

    /// `(url without query, canonical URI)` of `key` in `bucket` (`key` may be empty).
    fn locate(&self, bucket: &str, key: &str) -> (String, String) {
        match &self.config.endpoint_url {
            Some(endpoint) => {
                let endpoint = endpoint.trim_end_matches('/');
                let (_, _, base) = http::split_url(endpoint).unwrap_or(("", "", "/"));
                let base = base.trim_end_matches('/');
                let path = format!(
                    "{base}/{}/{}",
                    uri_encode(bucket, false),
                    uri_encode(key, false)
                );
                let origin = &endpoint[..endpoint.len() - base.len()];
                (format!("{origin}{path}"), path)
            }
            None => {
                let path = format!("/{}", uri_encode(key, false));
                (
                    format!("https://{bucket}.s3.{}.amazonaws.com{path}", self.region),
                    path,
                )
            }
        }
    }

    fn start(
        &self,
        method: &str,
        bucket: &str,
        key: &str,
        query: &[(&str, &str)],
        body: Body<'_>,
        payload_sha256: &str,
    ) -> crate::Result<http::Pending> {
        let (url, canonical_uri) = self.locate(bucket, key);
        let mut query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
            .collect();
        query.sort();
        let query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let full_url = if query.is_empty() {
            url.clone()
        } else {
            format!("{url}?{query}")
        };
        let (_, authority, _) = http::split_url(&url)?;
        let mut headers: Vec<(String, String)> = Vec::new();
        if let (Some(ak), Some(sk)) = (&self.config.access_key, &self.config.secret_key) {
            let amz_date = amz_date(std::time::SystemTime::now());
            let mut signed = vec![
                ("host".to_string(), authority.to_string()),
                ("x-amz-content-sha256".into(), payload_sha256.to_string()),
                ("x-amz-date".into(), amz_date.clone()),
            ];
            if let Some(t) = &self.config.session_token {
                signed.push(("x-amz-security-token".into(), t.clone()));
            }
            let auth = authorization(&SigningInput {
                method,
                canonical_uri: &canonical_uri,
                canonical_query: &query,
                headers: &signed,
                payload_sha256,
                amz_date: &amz_date,
                region: &self.region,
                access_key: ak,
                secret_key: sk,
            });
            headers.extend(signed.into_iter().filter(|(k, _)| k != "host"));
            headers.push(("authorization".into(), auth));
        }
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        http::start(method, &full_url, &refs, body)
    }

    /// Every object whose key starts with `prefix`, following continuation tokens.
    pub fn list(&self, bucket: &str, prefix: &str) -> crate::Result<Vec<Object>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                query.push(("continuation-token", t));
            }
            let resp = self
                .start("GET", bucket, "", &query, Body::Empty, EMPTY_SHA256)
                .and_then(http::Pending::wait)?;
            let status = resp.status;
            let body = resp.bytes()?;
            let text = String::from_utf8_lossy(&body);
            if status != 200 {
                return Err(s3_error("list", bucket, prefix, status, &text));
            }
            let page = parse_list(&text);
            out.extend(page.objects);
            match page.next {
                Some(t) if page.truncated => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Stream object `key` into `out`; returns its size.
    pub fn get(&self, bucket: &str, key: &str, out: &mut dyn Write) -> crate::Result<u64> {
        let resp = self
            .start("GET", bucket, key, &[], Body::Empty, EMPTY_SHA256)
            .and_then(http::Pending::wait)?;
        if resp.status != 200 {
            let status = resp.status;
            let text = String::from_utf8_lossy(&resp.bytes()?).into_owned();
            return Err(s3_error("download", bucket, key, status, &text));
        }
        resp.copy_to(out)
    }

    /// Upload `len` bytes from `data` as `key`. `payload_sha256` is the hex SHA-256 of
    /// the data (see [`sha256_hex_reader`]), which S3 checks.
    pub fn put(
        &self,
        bucket: &str,
        key: &str,
        data: &mut dyn Read,
        len: u64,
        payload_sha256: &str,
    ) -> crate::Result<()> {
        let resp = match self
            .start(
                "PUT",
                bucket,
                key,
                &[],
                Body::Reader(data, len),
                payload_sha256,
            )
            .and_then(http::Pending::wait)
        {
            Ok(r) => r,
            Err(e) => {
                // A server that refuses a request (bad signature, no bucket) may answer and
                // close before reading the body, and the answer is lost with the
                // connection. Ask again without a body to learn why.
                let query = [("list-type", "2"), ("max-keys", "1"), ("prefix", key)];
                if let Ok(probe) = self
                    .start("GET", bucket, "", &query, Body::Empty, EMPTY_SHA256)
                    .and_then(http::Pending::wait)
                    && probe.status >= 400
                {
                    let status = probe.status;
                    let text = String::from_utf8_lossy(&probe.bytes()?).into_owned();
                    return Err(s3_error("upload", bucket, key, status, &text));
                }
                return Err(e);
            }
        };
        let status = resp.status;
        let text = String::from_utf8_lossy(&resp.bytes()?).into_owned();
        if !(200..300).contains(&status) {
            return Err(s3_error("upload", bucket, key, status, &text));
        }
        Ok(())
    }
}

impl Client {
    /// Download every object under `folder/` into `dest` (paths relative to `folder`),
    /// [`PARALLEL`] objects at a time, each to a temporary name first and renamed when
    /// complete, so a failure never leaves a truncated file under its real name.
    /// Returns (files, bytes).
    pub fn download_folder(
        &self,
        bucket: &str,
        folder: &str,
        dest: &std::path::Path,
    ) -> crate::Result<(usize, u64)> {
        let mut queue = Vec::new();
        for object in self.list(bucket, folder)? {
            match relative_key(folder, &object.key)? {
                Some(parts) => {
                    let target = parts.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
                    queue.push((object.key, target));
                }
                None if !object.key.ends_with('/') => crate::log::warn!(
                    "skipping s3://{bucket}/{}: not under the folder `{folder}`",
                    object.key
                ),
                None => {}
            }
        }
        queue.reverse();
        let mut flying: Vec<Transfer> = Vec::new();
        let (mut files, mut bytes) = (0usize, 0u64);
        let result = (|| {
            loop {
                while flying.len() < PARALLEL
                    && let Some((key, target)) = queue.pop()
                {
                    flying.push(Transfer::start(self, bucket, key, target)?);
                }
                if flying.is_empty() {
                    return Ok(());
                }
                let pollables: Vec<http::Pollable> =
                    flying.iter().map(Transfer::pollable).collect();
                let refs: Vec<&http::Pollable> = pollables.iter().collect();
                let mut ready = http::poll(&refs);
                drop(pollables);
                // Highest index first, so removing one keeps the others' indices valid.
                ready.sort_unstable_by(|a, b| b.cmp(a));
                ready.dedup();
                for i in ready {
                    if let Some(n) = flying[i as usize].advance(bucket)? {
                        let done = flying.swap_remove(i as usize);
                        crate::log::debug!("s3://{bucket}/{} ({n} bytes)", done.key);
                        done.complete()?;
                        files += 1;
                        bytes += n;
                    }
                }
            }
        })();
        if result.is_err() {
            for t in flying {
                t.abandon();
            }
        }
        result.map(|()| (files, bytes))
    }

    /// Upload the file at `path` as `key` (hashed first: SigV4 signs the payload).
    pub fn upload_file(
        &self,
        bucket: &str,
        key: &str,
        path: &std::path::Path,
    ) -> crate::Result<u64> {
        let open = || {
            std::fs::File::open(path)
                .map_err(|e| StepError::failed(format!("reading {}: {e}", path.display())))
        };
        let (sha, len) = sha256_hex_reader(&mut open()?)
            .map_err(|e| StepError::failed(format!("reading {}: {e}", path.display())))?;
        self.put(bucket, key, &mut open()?, len, &sha)?;
        Ok(len)
    }
}

/// How many objects [`Client::download_folder`] downloads at once.
pub const PARALLEL: usize = 8;

/// One object being downloaded: waiting for its response, then streaming its body into a
/// temporary file.
struct Transfer {
    key: String,
    target: std::path::PathBuf,
    partial: std::path::PathBuf,
    file: Option<std::fs::File>,
    state: TransferState,
    written: u64,
}

enum TransferState {
    Waiting(Option<http::Pending>),
    Streaming(http::Incoming),
}

impl Transfer {
    fn start(
        client: &Client,
        bucket: &str,
        key: String,
        target: std::path::PathBuf,
    ) -> crate::Result<Self> {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StepError::failed(format!("creating {}: {e}", parent.display())))?;
        }
        let partial = target.with_file_name(format!(
            ".{}.hoist-partial",
            target
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("object")
        ));
        let pending = client.start("GET", bucket, &key, &[], Body::Empty, EMPTY_SHA256)?;
        Ok(Transfer {
            key,
            target,
            partial,
            file: None,
            state: TransferState::Waiting(Some(pending)),
            written: 0,
        })
    }

    fn pollable(&self) -> http::Pollable {
        match &self.state {
            TransferState::Waiting(p) => p.as_ref().expect("pending request").pollable(),
            TransferState::Streaming(i) => i.pollable(),
        }
    }

    /// Make progress without blocking; `Some(size)` once the whole body is written.
    fn advance(&mut self, bucket: &str) -> crate::Result<Option<u64>> {
        if let TransferState::Waiting(pending) = &mut self.state {
            let incoming = pending.take().expect("pending request").wait()?;
            if incoming.status != 200 {
                let status = incoming.status;
                let text = String::from_utf8_lossy(&incoming.bytes()?).into_owned();
                return Err(s3_error("download", bucket, &self.key, status, &text));
            }
            let file = std::fs::File::create(&self.partial).map_err(|e| {
                StepError::failed(format!("creating {}: {e}", self.partial.display()))
            })?;
            self.file = Some(file);
            self.state = TransferState::Streaming(incoming);
        }
        let TransferState::Streaming(body) = &mut self.state else {
            unreachable!("the response arrived above")
        };
        loop {
            let Some(chunk) = body.read_some(1 << 20)? else {
                return Ok(Some(self.written));
            };
            if chunk.is_empty() {
                return Ok(None);
            }
            let file = self.file.as_mut().expect("file open while streaming");
            file.write_all(&chunk).map_err(|e| {
                StepError::failed(format!("writing {}: {e}", self.partial.display()))
            })?;
            self.written += chunk.len() as u64;
        }
    }

    /// Move the finished file to its real name.
    fn complete(mut self) -> crate::Result<()> {
        drop(self.file.take());
        std::fs::rename(&self.partial, &self.target).map_err(|e| {
            let _ = std::fs::remove_file(&self.partial);
            StepError::failed(format!("writing {}: {e}", self.target.display()))
        })
    }

    /// Forget a transfer cut short by another's failure: no partial file stays.
    fn abandon(mut self) {
        drop(self.file.take());
        let _ = std::fs::remove_file(&self.partial);
    }
}

/// Hex SHA-256 of the empty payload.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Hex SHA-256 of everything `r` yields, and its length.
pub fn sha256_hex_reader(r: &mut dyn Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf)?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((hex(&h.finalize()), n))
}

/// An S3 error response turned into a step error with a hint for the usual causes.
fn s3_error(what: &str, bucket: &str, key: &str, status: u16, body: &str) -> StepError {
    let code = xml_text(body, "Code").unwrap_or_default();
    let message = xml_text(body, "Message").unwrap_or_default();
    let detail = match (code.is_empty(), message.is_empty()) {
        (true, _) => format!("HTTP {status}"),
        (false, true) => format!("{code} (HTTP {status})"),
        (false, false) => format!("{code}: {message} (HTTP {status})"),
    };
    let target = if key.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{key}")
    };
    let message = format!("S3 {what} of {target} failed: {detail}");
    let hint = match (code.as_str(), status) {
        ("NoSuchBucket", _) => Some(format!("the bucket `{bucket}` does not exist")),
        ("NoSuchKey", _) => Some("the object does not exist".to_string()),
        ("SignatureDoesNotMatch", _) => {
            Some("the secret access key does not match the access key id".to_string())
        }
        ("InvalidAccessKeyId", _) => Some("the access key id is not known to the server".into()),
        (_, 403) => Some("check the credentials and the bucket's permissions".to_string()),
        _ => None,
    };
    StepError::failure(message, None, hint)
}

/// One page of ListObjectsV2.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// The objects.
    pub objects: Vec<Object>,
    /// `IsTruncated`.
    pub truncated: bool,
    /// `NextContinuationToken`.
    pub next: Option<String>,
}

/// Parse a ListObjectsV2 response body.
pub fn parse_list(xml: &str) -> ListPage {
    let mut page = ListPage {
        truncated: xml_text(xml, "IsTruncated").as_deref() == Some("true"),
        next: xml_text(xml, "NextContinuationToken"),
        ..Default::default()
    };
    let mut rest = xml;
    while let Some(start) = rest.find("<Contents>") {
        let after = &rest[start + "<Contents>".len()..];
        let end = after.find("</Contents>").unwrap_or(after.len());
        let item = &after[..end];
        if let Some(key) = xml_text(item, "Key") {
            let size = xml_text(item, "Size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            page.objects.push(Object { key, size });
        }
        rest = &after[end..];
    }
    page
}

/// The unescaped text of the first `<tag>…</tag>` in `xml`.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml_unescape(&xml[start..end]))
}

fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(semi) = rest.find(';') else { break };
        let entity = &rest[1..semi];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What a SigV4 signature covers.
#[derive(Debug)]
pub struct SigningInput<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The URI-encoded path.
    pub canonical_uri: &'a str,
    /// The sorted, encoded query string.
    pub canonical_query: &'a str,
    /// Headers to sign, names lower-case.
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the payload (or `UNSIGNED-PAYLOAD`).
    pub payload_sha256: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    /// Region.
    pub region: &'a str,
    /// Access key id.
    pub access_key: &'a str,
    /// Secret access key.
    pub secret_key: &'a str,
}

/// The `Authorization` header value of AWS Signature Version 4 for service `s3`.
pub fn authorization(i: &SigningInput<'_>) -> String {
    let mut headers: Vec<(String, String)> = i
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        i.method,
        i.canonical_uri,
        i.canonical_query,
        canonical_headers,
        signed_headers,
        i.payload_sha256
    );
    let date = &i.amz_date[..8];
    let scope = format!("{date}/{}/s3/aws4_request", i.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        i.amz_date,
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{}", i.secret_key).as_bytes(), date.as_bytes());
    for part in [i.region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        i.access_key
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SigV4 URI encoding: everything but `A-Z a-z 0-9 - _ . ~` is percent-encoded; `/` is
/// kept in paths and encoded in query components.
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` of `t` (UTC).
pub fn amz_date(t: std::time::SystemTime) -> String {
    let u = crate::time::utc(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        u.year, u.month, u.day, u.hour, u.minute, u.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's published example: "GET Object" in the SigV4 documentation for S3.
    #[test]
    fn signs_the_aws_documentation_example() {
        let headers = vec![
            (
                "host".to_string(),
                "examplebucket.s3.amazonaws.com".to_string(),
            ),
            ("range".into(), "bytes=0-9".into()),
            ("x-amz-content-sha256".into(), EMPTY_SHA256.into()),
            ("x-amz-date".into(), "20130524T000000Z".into()),
        ];
        let auth = authorization(&SigningInput {
            method: "GET",
            canonical_uri: "/test.txt",
            canonical_query: "",
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
            amz_date: "20130524T000000Z",
            region: "us-east-1",
            access_key: "AKIAIOSFODNN7EXAMPLE",
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        });
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn dates_and_encoding() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_369_353_600);
        assert_eq!(amz_date(t), "20130524T000000Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 3_661);
        assert_eq!(amz_date(t), "20000229T010101Z");
        assert_eq!(uri_encode("a b/ü~", false), "a%20b/%C3%BC~");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
    }

    #[test]
    fn parses_a_listing() {
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated>\
            <Contents><Key>f/a&amp;b.txt</Key><Size>3</Size></Contents>\
            <Contents><Key>f/c</Key><Size>10</Size></Contents>\
            <NextContinuationToken>tok&lt;</NextContinuationToken></ListBucketResult>";
        let page = parse_list(xml);
        assert_eq!(
            page.objects,
            vec![
                Object {
                    key: "f/a&b.txt".into(),
                    size: 3
                },
                Object {
                    key: "f/c".into(),
                    size: 10
                }
            ]
        );
        assert!(page.truncated);
        assert_eq!(page.next.as_deref(), Some("tok<"));
        assert_eq!(xml_unescape("&#65;&#x42;&bogus"), "AB&bogus");
    }

    #[test]
    fn addressing() {
        let c = Client::new(Config {
            endpoint_url: Some("http://127.0.0.1:9000/".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.locate("bkt", "a b/c"),
            (
                "http://127.0.0.1:9000/bkt/a%20b/c".into(),
                "/bkt/a%20b/c".into()
            )
        );
        let c = Client::new(Config::default()).unwrap();
        assert_eq!(
            c.locate("bkt", "k").0,
            "https://bkt.s3.us-east-1.amazonaws.com/k"
        );
        assert!(
            Client::new(Config {
                access_key: Some("a".into()),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn keys_and_folders() {
        assert_eq!(
            relative_key("proj", "proj/a/b.py").unwrap(),
            Some(vec!["a", "b.py"])
        );
        assert_eq!(relative_key("proj/", "proj/a").unwrap(), Some(vec!["a"]));
        assert_eq!(relative_key("", "a").unwrap(), Some(vec!["a"]));
        assert_eq!(relative_key("proj", "project2/a").unwrap(), None);
        assert_eq!(relative_key("proj", "proj/dir/").unwrap(), None);
        assert_eq!(relative_key("proj", "proj").unwrap(), None);
        assert!(relative_key("proj", "proj/../../etc/x").is_err());
        assert_eq!(key_under("proj/", "a/b"), "proj/a/b");
        assert_eq!(key_under("", "a"), "a");
    }

    #[test]
    fn prefect_aws_credentials() {
        let creds: Map = serde_json::from_str(
            r#"{"minio_root_user": "u", "minio_root_password": "p",
                "aws_client_parameters": {"endpoint_url": "http://h:9000"}}"#,
        )
        .unwrap();
        let c = Config::from_prefect_aws(Some(&creds), None);
        assert_eq!(c.access_key.as_deref(), Some("u"));
        assert_eq!(c.secret_key.as_deref(), Some("p"));
        assert_eq!(c.endpoint_url.as_deref(), Some("http://h:9000"));
        let params: Map =
            serde_json::from_str(r#"{"endpoint_url": "http://x", "region_name": "eu-west-1"}"#)
                .unwrap();
        let creds: Map =
            serde_json::from_str(r#"{"aws_access_key_id": "a", "aws_secret_access_key": "s"}"#)
                .unwrap();
        let c = Config::from_prefect_aws(Some(&creds), Some(&params));
        assert_eq!(
            (c.endpoint_url.as_deref(), c.region.as_deref()),
            (Some("http://x"), Some("eu-west-1"))
        );
        let c = Config {
            secret_key: Some("topsecret".into()),
            session_token: Some("tok123".into()),
            ..c
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("topsecret") && !shown.contains("tok123"),
            "{shown}"
        );
    }
}
