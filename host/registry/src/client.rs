//! The registry client `hoist plugin publish/install/search/info/yank` use: the OCI
//! distribution API for blobs and manifests, the JSON API for versions and search.
//! Proxies from `HTTPS_PROXY`/`NO_PROXY` and extra roots from `SSL_CERT_FILE` (reqwest's
//! system proxy and native roots). The token is sent, never printed.

use std::time::Duration;

use crate::name::{PackageName, Requirement};
use crate::oci;
use crate::record::VersionRecord;

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

/// The largest component Hoist downloads: the runtime never compiles one over 64 MiB.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;
/// The largest manifest or JSON answer Hoist reads from a registry.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A registry at a URL.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    base: String,
    /// What messages and install records call it (`oci://HOST` for a plain OCI registry).
    label: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// `oci://HOST[:PORT]/NS/NAME:TAG`: a package as an artifact in any OCI registry (GHCR,
/// Harbor, Distribution, `hoist registry serve`). Loopback hosts are spoken to over
/// http, every other host over https.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciRef {
    /// `127.0.0.1:5000`, `ghcr.io`.
    pub host: String,
    /// The repository, which is the package's name.
    pub package: PackageName,
    /// The tag: the package's version.
    pub tag: String,
}

impl std::str::FromStr for OciRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "an OCI reference is oci://HOST[:PORT]/NAMESPACE/NAME:VERSION, e.g. oci://ghcr.io/acme/s3-sync:1.2.0";
        let rest = s
            .strip_prefix("oci://")
            .ok_or_else(|| format!("`{}`: {usage}", s.escape_debug()))?;
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("`{}`: {usage}", s.escape_debug()))?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        let (repo, tag) = path
            .rsplit_once(':')
            .ok_or_else(|| format!("`{}`: no :VERSION tag; {usage}", s.escape_debug()))?;
        if !host_ok {
            return Err(format!(
                "`{}`: the host is not valid; {usage}",
                s.escape_debug()
            ));
        }
        let package: PackageName = repo
            .parse()
            .map_err(|e: crate::name::NameError| e.to_string())?;
        let version = crate::name::parse_version(tag)?;
        Ok(Self {
            host: host.to_string(),
            package,
            tag: version.to_string(),
        })
    }
}

impl OciRef {
    /// `oci://HOST`: the registry as install records and `hoist.lock` name it.
    pub fn registry(&self) -> String {
        format!("oci://{}", self.host)
    }

    /// The URL requests go to.
    pub fn base_url(&self) -> String {
        let name = self
            .host
            .rsplit_once(':')
            .map_or(self.host.as_str(), |(h, _)| h);
        let loopback = matches!(name, "127.0.0.1" | "localhost" | "[::1]");
        format!(
            "{}://{}",
            if loopback { "http" } else { "https" },
            self.host
        )
    }
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
        Ok(Self {
            label: base.clone(),
            base,
            http,
            token,
        })
    }

    /// A client of the plain OCI registry `oci` names (no JSON API: manifests and blobs).
    pub fn for_oci(oci: &OciRef, token: Option<String>) -> Result<Self, ClientError> {
        let mut c = Self::new(&oci.base_url(), token)?;
        c.label = oci.registry();
        Ok(c)
    }

    /// The registry, as messages and install records name it.
    pub fn url(&self) -> &str {
        &self.label
    }

    /// The component the tag `tag` of `pkg` names in an OCI registry, as the version
    /// record an install takes (no summary or signatures: OCI has none).
    pub async fn oci_version(
        &self,
        pkg: &PackageName,
        tag: &str,
    ) -> Result<VersionRecord, ClientError> {
        let url = format!("{}/v2/{}/manifests/{tag}", self.base, pkg.repository());
        let res = self
            .send(
                self.authed(self.http.get(url))
                    .header("Accept", oci::MANIFEST_MEDIA_TYPE),
            )
            .await?;
        let body = self
            .read_capped(res, MAX_MANIFEST_BYTES, "a manifest", |_, _| {})
            .await?;
        let not_wasm = |why: String| {
            ClientError::NoMatch(format!(
                "{}/{pkg}:{tag} is not a Wasm component artifact: {why}; nothing was installed",
                self.label
            ))
        };
        let manifest: oci::Manifest =
            serde_json::from_slice(&body).map_err(|e| not_wasm(e.to_string()))?;
        let layer = manifest.component().map_err(not_wasm)?;
        Ok(VersionRecord {
            package: pkg.to_string(),
            version: tag.to_string(),
            manifest_digest: oci::digest_of(&body),
            component_digest: layer.digest.clone(),
            size: layer.size,
            step_name: String::new(),
            summary: String::new(),
            input_schema: serde_json::Value::Null,
            capabilities: Vec::new(),
            wit_version: String::new(),
            yanked: false,
            published: String::new(),
            signatures: Vec::new(),
        })
    }

    /// The tags of `pkg` in an OCI registry (`/v2/NS/NAME/tags/list`), as the registry
    /// lists them.
    pub async fn oci_tags(&self, pkg: &PackageName) -> Result<Vec<String>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let url = format!("{}/v2/{}/tags/list", self.base, pkg.repository());
        let res = self.send(self.authed(self.http.get(url))).await?;
        let body: Tags = self.json(res, "a tags list").await?;
        Ok(body.tags.unwrap_or_default())
    }

    /// The body of `res`, at most `cap` bytes: a `Content-Length` over it is refused
    /// before anything is read, a body that grows over it as soon as it does; nothing is
    /// allocated from what the server claims. `progress(done, total)` as it comes.
    async fn read_capped(
        &self,
        mut res: reqwest::Response,
        cap: u64,
        what: &str,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> Result<Vec<u8>, ClientError> {
        let limit = if cap >= 1 << 20 {
            format!("{} MiB Hoist accepts", cap >> 20)
        } else {
            format!("{cap} bytes its record gives")
        };
        let too_big = |n: u64| {
            self.bad_answer(format!(
                "{what} of {n} bytes or more is over the {limit}; nothing was kept"
            ))
        };
        let total = res.content_length();
        if let Some(n) = total
            && n > cap
        {
            return Err(too_big(n));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| self.unreachable(&e))? {
            if bytes.len() as u64 + chunk.len() as u64 > cap {
                return Err(too_big(bytes.len() as u64 + chunk.len() as u64));
            }
            bytes.extend_from_slice(&chunk);
            progress(bytes.len() as u64, total);
        }
        Ok(bytes)
    }

    /// A JSON answer of at most [`MAX_MANIFEST_BYTES`].
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        res: reqwest::Response,
        what: &str,
    ) -> Result<T, ClientError> {
        let body = self
            .read_capped(res, MAX_MANIFEST_BYTES, what, |_, _| {})
            .await?;
        serde_json::from_slice(&body).map_err(|e| self.bad_answer(e.to_string()))
    }

    /// The registry answered something Hoist cannot use.
    fn bad_answer(&self, why: String) -> ClientError {
        ClientError::Protocol {
            url: self.base.clone(),
            why,
        }
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

    /// Upload a blob the way every OCI registry takes it: open a session (POST), then
    /// send the bytes with their digest (PUT to the session's Location).
    async fn upload(&self, pkg: &PackageName, bytes: Vec<u8>) -> Result<String, ClientError> {
        let digest = oci::digest_of(&bytes);
        let start = format!("{}/v2/{}/blobs/uploads/", self.base, pkg.repository());
        let res = self.send(self.authed(self.http.post(start))).await?;
        let location = res
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Protocol {
                url: self.base.clone(),
                why: "an upload session without a Location".into(),
            })?;
        let mut url = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={digest}"));
        // The token goes only back to the registry, not to wherever a Location points.
        let same_origin = url.starts_with(&format!("{}/", self.base));
        let put = self.http.put(url);
        let put = if same_origin { self.authed(put) } else { put };
        self.send(
            put.header("Content-Type", "application/octet-stream")
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
        signature: &crate::record::SignatureRecord,
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
        let body: serde_json::Value = self.json(res, "a package listing").await?;
        let records: Vec<VersionRecord> = serde_json::from_value(body["versions"].clone())
            .map_err(|e| ClientError::Protocol {
                url: self.base.clone(),
                why: e.to_string(),
            })?;
        let asked = pkg.to_string();
        if let Some(other) = records.iter().find(|r| r.package != asked) {
            return Err(ClientError::Protocol {
                url: self.base.clone(),
                why: format!(
                    "asked for {asked}, the registry answered with a version of `{}`",
                    hoist_policy::text::sanitize(&other.package)
                ),
            });
        }
        Ok(records.into_iter().map(sanitized).collect())
    }

    /// Packages matching `query` (name, summary or capability), newest version each.
    pub async fn search(&self, query: &str) -> Result<Vec<VersionRecord>, ClientError> {
        let url = format!("{}/api/v1/packages", self.base);
        let res = self.send(self.http.get(url).query(&[("q", query)])).await?;
        let body: serde_json::Value = self.json(res, "a package listing").await?;
        let records: Vec<VersionRecord> = serde_json::from_value(body["packages"].clone())
            .map_err(|e| ClientError::Protocol {
                url: self.base.clone(),
                why: e.to_string(),
            })?;
        Ok(records.into_iter().map(sanitized).collect())
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

    /// The component of `pkg` its record names (`digest`, `size` bytes), checked
    /// against the digest (a shorter or different body is tampered with);
    /// `progress(done, total)` as it comes. At most `size` bytes are read
    /// (and never more than [`MAX_COMPONENT_BYTES`], the most a step may be): the
    /// component is loaded from memory next, so it is kept there, bounded.
    pub async fn blob(
        &self,
        pkg: &PackageName,
        (digest, size): (&str, u64),
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> Result<Vec<u8>, ClientError> {
        if !oci::is_digest(digest) {
            return Err(ClientError::Protocol {
                url: self.base.clone(),
                why: format!("`{}` is not a sha256 digest", digest.escape_debug()),
            });
        }
        if size > MAX_COMPONENT_BYTES {
            return Err(self.bad_answer(format!(
                "the component of {pkg} is {size} bytes by its record, over the {} MiB \
                 Hoist accepts; nothing was downloaded",
                MAX_COMPONENT_BYTES >> 20
            )));
        }
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, pkg.repository());
        let res = self.send(self.http.get(url)).await?;
        let bytes = self
            .read_capped(res, size, "a component", &mut progress)
            .await?;
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

/// A record as a registry sent it, every text in it made printable
/// ([`hoist_policy::text::sanitize`]): a registry is someone else's server, and what it
/// says reaches terminals (`plugin search`, `plugin info`, install reviews) and records.
fn sanitized(mut r: VersionRecord) -> VersionRecord {
    let clean = |s: &mut String| {
        if let std::borrow::Cow::Owned(c) = hoist_policy::text::sanitize(s) {
            *s = c;
        }
    };
    for s in [
        &mut r.package,
        &mut r.version,
        &mut r.manifest_digest,
        &mut r.component_digest,
        &mut r.step_name,
        &mut r.summary,
        &mut r.wit_version,
        &mut r.published,
    ] {
        clean(s);
    }
    r.capabilities.iter_mut().for_each(clean);
    for sig in &mut r.signatures {
        clean(&mut sig.public_key);
        clean(&mut sig.signature);
    }
    r
}
