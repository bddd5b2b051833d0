//! Blobs in an S3 bucket (`--blob-store s3://BUCKET[/PREFIX]?endpoint=URL&region=R`), so
//! several registry replicas behind a load balancer share one blob store (and one
//! PostgreSQL). Objects are `PREFIX/sha256/<hex>`, written once a blob is whole and
//! checked; reads are checked against the digest again (a bucket is someone else's
//! disk). Requests are signed with AWS Signature V4 (the SDK's signer, the one the S3
//! steps use); the credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
//! and are never printed.

use hoist_sdk::s3::{SigningInput, amz_date, authorization, uri_encode};
use reqwest::StatusCode;

use crate::blobs::BlobError;
use crate::oci::digest_of;

/// A bucket (and a key prefix) on an S3-compatible endpoint.
#[derive(Clone)]
pub struct S3Blobs {
    http: reqwest::Client,
    /// `http://127.0.0.1:9000` (path-style addressing).
    endpoint: String,
    bucket: String,
    /// The key prefix, without a trailing `/` (may be empty).
    prefix: String,
    region: String,
    access_key: String,
    secret_key: String,
}

impl std::fmt::Debug for S3Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

fn io(e: impl std::fmt::Display) -> BlobError {
    BlobError::Io(std::io::Error::other(e.to_string()))
}

impl S3Blobs {
    /// From `s3://BUCKET[/PREFIX]?endpoint=URL[&region=R]` and the environment's keys.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let usage = "a blob store is s3://BUCKET[/PREFIX]?endpoint=http(s)://HOST:PORT[&region=REGION], \
                     with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment";
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{url}`: {usage}"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let ok_bucket = !bucket.is_empty()
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !ok_bucket {
            return Err(format!(
                "`{url}`: the bucket name `{bucket}` is not valid; {usage}"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == ".." || p == ".") {
            return Err(format!("`{url}`: the prefix has `.` or `..`; {usage}"));
        }
        let mut endpoint = None;
        let mut region = "us-east-1".to_string();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("endpoint", v)) => endpoint = Some(v.trim_end_matches('/').to_string()),
                Some(("region", v)) if !v.is_empty() => region = v.to_string(),
                _ => return Err(format!("`{url}`: unknown parameter `{pair}`; {usage}")),
            }
        }
        let endpoint = endpoint
            .filter(|e| e.starts_with("http://") || e.starts_with("https://"))
            .ok_or_else(|| format!("`{url}`: no endpoint; {usage}"))?;
        let key = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{name} is not set; {usage}"))
        };
        Ok(Self {
            http: reqwest::Client::new(),
            endpoint,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            region,
            access_key: key("AWS_ACCESS_KEY_ID")?,
            secret_key: key("AWS_SECRET_ACCESS_KEY")?,
        })
    }

    /// `s3://bkt/prefix at http://...` (no credentials).
    pub fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }

    fn key(&self, digest: &str) -> String {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        if self.prefix.is_empty() {
            format!("sha256/{hex}")
        } else {
            format!("{}/sha256/{hex}", self.prefix)
        }
    }

    /// A signed request for `key` (`None`: the bucket itself).
    fn request(
        &self,
        method: reqwest::Method,
        key: Option<&str>,
        payload_sha256: &str,
    ) -> reqwest::RequestBuilder {
        let uri = match key {
            Some(k) => format!("/{}/{}", self.bucket, uri_encode(k, false)),
            None => format!("/{}", self.bucket),
        };
        let host = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, h)| h)
            .to_string();
        let date = amz_date(std::time::SystemTime::now());
        let headers = vec![
            ("host".to_string(), host),
            (
                "x-amz-content-sha256".to_string(),
                payload_sha256.to_string(),
            ),
            ("x-amz-date".to_string(), date.clone()),
        ];
        let auth = authorization(&SigningInput {
            method: method.as_str(),
            canonical_uri: &uri,
            canonical_query: "",
            headers: &headers,
            payload_sha256,
            amz_date: &date,
            region: &self.region,
            access_key: &self.access_key,
            secret_key: &self.secret_key,
        });
        self.http
            .request(method, format!("{}{uri}", self.endpoint))
            .header("x-amz-content-sha256", payload_sha256)
            .header("x-amz-date", date)
            .header("authorization", auth)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, BlobError> {
        req.send()
            .await
            .map_err(|e| io(format!("{}: {e}", self.describe())))
    }

    fn refused(&self, what: &str, status: StatusCode) -> BlobError {
        io(format!("{}: {what} answered {status}", self.describe()))
    }

    /// The bucket answers to these credentials (checked when the registry starts).
    pub async fn check(&self) -> Result<(), BlobError> {
        const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let res = self
            .send(self.request(reqwest::Method::HEAD, None, EMPTY))
            .await?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(self.refused("the bucket", res.status()))
        }
    }

    /// Store `bytes` (already checked to hash to `digest`).
    pub async fn put(&self, digest: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest).to_string();
        let key = self.key(digest);
        let res = self
            .send(
                self.request(reqwest::Method::PUT, Some(&key), &hex)
                    .body(bytes),
            )
            .await?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(self.refused(&format!("PUT {key}"), res.status()))
        }
    }

    /// The object's size, if there is one.
    pub async fn size(&self, digest: &str) -> Result<Option<u64>, BlobError> {
        let key = self.key(digest);
        let res = self
            .send(self.request(reqwest::Method::HEAD, Some(&key), UNSIGNED))
            .await?;
        match res.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(res.content_length()),
            s => Err(self.refused(&format!("HEAD {key}"), s)),
        }
    }

    /// The object's bytes, if there is one, checked against `digest`.
    pub async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let key = self.key(digest);
        let res = self
            .send(self.request(reqwest::Method::GET, Some(&key), UNSIGNED))
            .await?;
        match res.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if !s.is_success() => return Err(self.refused(&format!("GET {key}"), s)),
            _ => {}
        }
        let bytes = res.bytes().await.map_err(io)?.to_vec();
        let actual = digest_of(&bytes);
        if actual != digest {
            return Err(io(format!(
                "{}: object {key} hashes to {actual}, not {digest}: the bucket was altered",
                self.describe()
            )));
        }
        Ok(Some(bytes))
    }
}

const UNSIGNED: &str = "UNSIGNED-PAYLOAD";
