//! The registry client `hoist plugin publish/install/search/info/yank` use: the OCI
//! distribution API for blobs and manifests, the JSON API for versions and search.
//! Proxies from `HTTPS_PROXY`/`NO_PROXY` and extra roots from `SSL_CERT_FILE` (reqwest's
//! system proxy and native roots). The token is sent, never printed.

use std::time::Duration;

use crate::db::VersionRecord;
use crate::name::{PackageName, Requirement};
use crate::oci;

/// A client error: which registry, what happened.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered.
    #[error("cannot reach the registry at {url}: {why}")]
    Unreachable {
        /// The registry.
        url: String,
        /// Why (connection refused, DNS, TLS).
        why: String,
    },
    /// The registry answered with an error.
    #[error("the registry at {url} answered {status}: {message}")]
    Status {
        /// The registry.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Its message (the OCI error's).
        message: String,
    },
    /// Downloaded bytes do not hash to their digest.
    #[error(
        "{what} from {url} is not what its digest says: expected {expected}, got {actual}; nothing was installed"
    )]
    Tampered {
        /// The registry.
        url: String,
        /// What was downloaded.
        what: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what came.
        actual: String,
    },
    /// The registry's answer is not what the protocol says.
    #[error("the registry at {url} sent an answer Hoist cannot read: {why}")]
    Protocol {
        /// The registry.
        url: String,
        /// What was wrong.
        why: String,
    },
    /// Nothing satisfies the requirement.
    #[error("{0}")]
    NoMatch(String),
}

/// A registry at a URL.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

fn why(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s = format!("{s}: {inner}");
        source = inner.source();
    }
    s
}

impl RegistryClient {
    /// A client of the registry at `url` (`http://HOST:PORT` or `https://...`).
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Unreachable {
                url: url.into(),
                why: "a registry URL starts with http:// or https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("hoist/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.clone(),
                why: why(&e),
            })?;
        Ok(Self { base, http, token })
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            why: why(e),
        }
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Send, and turn an error status into [`ClientError::Status`] with the registry's
    /// own message.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let res = req.send().await.map_err(|e| self.unreachable(&e))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(String::from))
            .unwrap_or_else(|| body.chars().take(300).collect());
        Err(ClientError::Status {
            url: self.base.clone(),
            status,
            message,
        })
    }

    async fn upload(&self, pkg: &PackageName, bytes: Vec<u8>) -> Result<String, ClientError> {
        let digest = oci::digest_of(&bytes);
        let url = format!(
            "{}/v2/{}/blobs/uploads/?digest={digest}",
            self.base,
            pkg.repository()
        );
        self.send(
            self.authed(self.http.post(url))
                .header("Content-Type", "application/octet-stream")
                .body(bytes),
        )
        .await?;
        Ok(digest)
    }

    /// Publish `wasm` as `pkg@version`: its config and component blobs, then the
    /// manifest under the version's tag. The manifest's digest.
    pub async fn publish(
        &self,
        pkg: &PackageName,
        version: &str,
        wasm: &[u8],
        summary: &str,
    ) -> Result<String, ClientError> {
        let config = oci::wasm_config(&oci::digest_of(wasm));
        let manifest = oci::package_manifest(&config, wasm, version, summary);
        self.upload(pkg, config).await?;
        self.upload(pkg, wasm.to_vec()).await?;
        let body = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let digest = oci::digest_of(&body);
        let url = format!("{}/v2/{}/manifests/{version}", self.base, pkg.repository());
        self.send(
            self.authed(self.http.put(url))
                .header("Content-Type", oci::MANIFEST_MEDIA_TYPE)
                .body(body),
        )
        .await?;
        Ok(digest)
    }

    /// Attach a signature (made by the caller over
    /// `hoist_policy::signature::message`) to `pkg@version`.
    pub async fn sign(
        &self,
        pkg: &PackageName,
        version: &str,
        signature: &crate::db::SignatureRecord,
    ) -> Result<(), ClientError> {
        let url = format!(
            "{}/api/v1/packages/{}/{version}/signatures",
            self.base,
            pkg.repository()
        );
        self.send(self.authed(self.http.post(url)).json(signature))
            .await?;
        Ok(())
    }

    /// Every version of `pkg`, newest first.
    pub async fn versions(&self, pkg: &PackageName) -> Result<Vec<VersionRecord>, ClientError> {
        let url = format!("{}/api/v1/packages/{}", self.base, pkg.repository());
        let res = self.send(self.http.get(url)).await?;
        let body: serde_json::Value = res.json().await.map_err(|e| self.protocol(&e))?;
        serde_json::from_value(body["versions"].clone()).map_err(|e| ClientError::Protocol {
            url: self.base.clone(),
            why: e.to_string(),
        })
    }

    fn protocol(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Protocol {
            url: self.base.clone(),
            why: why(e),
        }
    }

    /// Packages matching `query` (name, summary or capability), newest version each.
    pub async fn search(&self, query: &str) -> Result<Vec<VersionRecord>, ClientError> {
        let url = format!("{}/api/v1/packages", self.base);
        let res = self.send(self.http.get(url).query(&[("q", query)])).await?;
        let body: serde_json::Value = res.json().await.map_err(|e| self.protocol(&e))?;
        serde_json::from_value(body["packages"].clone()).map_err(|e| ClientError::Protocol {
            url: self.base.clone(),
            why: e.to_string(),
        })
    }

    /// The version of `req` to install: the newest one that satisfies it and is not
    /// yanked.
    pub async fn resolve(&self, req: &Requirement) -> Result<VersionRecord, ClientError> {
        let versions = match self.versions(&req.package).await {
            Err(ClientError::Status { status: 404, .. }) => {
                return Err(ClientError::NoMatch(format!(
                    "{} has no package {}",
                    self.base, req.package
                )));
            }
            v => v?,
        };
        choose(&versions, req).cloned().ok_or_else(|| {
            let listed: Vec<String> = versions
                .iter()
                .map(|v| {
                    if v.yanked {
                        format!("{} (yanked)", v.version)
                    } else {
                        v.version.clone()
                    }
                })
                .collect();
            ClientError::NoMatch(format!(
                "no version of {} satisfies `{}` (published: {})",
                req.package,
                req.versions,
                listed.join(", ")
            ))
        })
    }

    /// A blob of `pkg`, checked against `digest`; `progress(done, total)` as it comes.
    pub async fn blob(
        &self,
        pkg: &PackageName,
        digest: &str,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> Result<Vec<u8>, ClientError> {
        if !oci::is_digest(digest) {
            return Err(ClientError::Protocol {
                url: self.base.clone(),
                why: format!("`{}` is not a sha256 digest", digest.escape_debug()),
            });
        }
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, pkg.repository());
        let mut res = self.send(self.http.get(url)).await?;
        let total = res.content_length();
        let mut bytes = Vec::with_capacity(usize::try_from(total.unwrap_or(0)).unwrap_or(0));
        while let Some(chunk) = res.chunk().await.map_err(|e| self.unreachable(&e))? {
            bytes.extend_from_slice(&chunk);
            progress(bytes.len() as u64, total);
        }
        let actual = oci::digest_of(&bytes);
        if actual != digest {
            return Err(ClientError::Tampered {
                url: self.base.clone(),
                what: format!("the component of {pkg}"),
                expected: digest.into(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Yank (or unyank) a version.
    pub async fn yank(
        &self,
        pkg: &PackageName,
        version: &str,
        yanked: bool,
    ) -> Result<(), ClientError> {
        let action = if yanked { "yank" } else { "unyank" };
        let url = format!(
            "{}/api/v1/packages/{}/{version}/{action}",
            self.base,
            pkg.repository()
        );
        self.send(self.authed(self.http.post(url))).await?;
        Ok(())
    }
}

/// The newest version satisfying `req` that is not yanked.
pub fn choose<'a>(versions: &'a [VersionRecord], req: &Requirement) -> Option<&'a VersionRecord> {
    versions
        .iter()
        .filter(|v| !v.yanked)
        .filter_map(|v| Some((semver::Version::parse(&v.version).ok()?, v)))
        .filter(|(sv, _)| req.versions.matches(sv))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v)
}
