//! `hoist registry serve`: the OCI distribution API (`/v2/`) for packages and their
//! blobs, a JSON API for what OCI lacks (`/api/v1/`), and human pages (`/`).
//!
//! Reads are public. Writes (blob uploads, manifests, yanks) need a token for the
//! package's namespace: `Authorization: Bearer TOKEN`, or `Basic` with the token as the
//! password (what OCI clients send). A manifest is a package only if it is a Wasm
//! component artifact whose tag is a semver version and whose component the registry
//! could load and `describe()` (the [`Inspector`] the CLI provides: a sandbox with no
//! capabilities, under a deadline).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;

use crate::blobs::{BlobError, BlobStore};
use crate::db::{DbError, RegistryDb, SignatureRecord, VersionRecord};
use crate::name::{PackageName, parse_version};
use crate::oci::{self, Manifest};

/// What the registry read from a component by calling its `describe()`.
#[derive(Clone, Debug)]
pub struct Inspected {
    /// The step's name.
    pub step_name: String,
    /// Its summary.
    pub summary: String,
    /// Its input schema.
    pub input_schema: serde_json::Value,
    /// Its declared capabilities, as written on the command line.
    pub capabilities: Vec<String>,
    /// The `hoist:step` WIT version it targets.
    pub wit_version: String,
}

/// Loads a component and reads its description, or says why it is not a step.
pub type Inspector = Arc<
    dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Inspected, String>> + Send>>
        + Send
        + Sync,
>;

/// A running registry's parts.
pub struct Registry {
    /// Metadata.
    pub db: RegistryDb,
    /// Blobs.
    pub blobs: BlobStore,
    /// The component inspector.
    pub inspect: Inspector,
    /// At most this many components inspected at once (each is compiled).
    pub inspecting: tokio::sync::Semaphore,
}

/// An error answered in the OCI error format.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            axum::Json(json!({"errors": [{"code": self.code, "message": self.message}]})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"hoist registry\""),
            );
        }
        res
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Exists(_) => Self::new(StatusCode::CONFLICT, "DENIED", e.to_string()),
            e => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        let (status, code) = match &e {
            BlobError::DigestMismatch { .. } | BlobError::BadDigest(_) => {
                (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
            }
            BlobError::UnknownUpload(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            BlobError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            BlobError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        };
        Self::new(status, code, e.to_string())
    }
}

type Shared = State<Arc<Registry>>;
type Result<T, E = ApiError> = std::result::Result<T, E>;

fn package(ns: &str, name: &str) -> Result<PackageName> {
    PackageName::new(ns, name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string()))
}

/// The token in `Authorization` (Bearer, or Basic's password).
fn token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Some(rest.trim().to_string()),
        "basic" => {
            let plain = hoist_policy::encoding::base64_decode(rest.trim())?;
            let plain = String::from_utf8(plain).ok()?;
            Some(plain.split_once(':')?.1.to_string())
        }
        _ => None,
    }
}

/// Allow a write into `pkg`'s namespace, or answer 401/403.
async fn authorize(r: &Registry, headers: &HeaderMap, pkg: &PackageName) -> Result<()> {
    let Some(token) = token(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            format!(
                "publishing into `{}` needs a token (hoist registry token create --namespace {})",
                pkg.namespace, pkg.namespace
            ),
        ));
    };
    match r.db.token_namespace(&token).await? {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "the token is not one this registry issued",
        )),
        Some(ns) if ns != pkg.namespace => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!(
                "this token publishes into `{ns}`, not into `{}`",
                pkg.namespace
            ),
        )),
        Some(_) => Ok(()),
    }
}

fn with_headers(status: StatusCode, pairs: &[(&'static str, String)]) -> Response {
    let mut res = status.into_response();
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(v) {
            res.headers_mut().insert(*k, v);
        }
    }
    res
}

/// `GET /v2/`: reading needs no credentials (200), and the answer says how to send them
/// (`WWW-Authenticate: Basic`, which RFC 9110 §11.6.1 allows on any response): OCI
/// clients such as `wkg` (oci-client) decide here whether to send their credentials on
/// the writes that follow.
async fn base() -> Response {
    (
        [
            ("Docker-Distribution-API-Version", "registry/2.0"),
            ("WWW-Authenticate", "Basic realm=\"hoist registry\""),
        ],
        axum::Json(json!({})),
    )
        .into_response()
}

async fn start_upload(
    State(r): Shared,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    let repo = pkg.repository();
    // Monolithic: the blob is the body, its digest in the query.
    if let Some(digest) = q.get("digest") {
        r.blobs.put(digest, &body).await?;
        return Ok(with_headers(
            StatusCode::CREATED,
            &[
                ("Location", format!("/v2/{repo}/blobs/{digest}")),
                ("Docker-Content-Digest", digest.clone()),
            ],
        ));
    }
    let id = r.blobs.start_upload()?;
    if !body.is_empty() {
        r.blobs.append(&id, &body)?;
    }
    Ok(with_headers(
        StatusCode::ACCEPTED,
        &[
            ("Location", format!("/v2/{repo}/blobs/uploads/{id}")),
            ("Docker-Upload-UUID", id),
            ("Range", "0-0".into()),
        ],
    ))
}

async fn patch_upload(
    State(r): Shared,
    Path((ns, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    let len = r.blobs.append(&id, &body)?;
    Ok(with_headers(
        StatusCode::ACCEPTED,
        &[
            (
                "Location",
                format!("/v2/{}/blobs/uploads/{id}", pkg.repository()),
            ),
            ("Docker-Upload-UUID", id),
            ("Range", format!("0-{}", len.saturating_sub(1))),
        ],
    ))
}

async fn finish_upload(
    State(r): Shared,
    Path((ns, name, id)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    let Some(digest) = q.get("digest") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "finishing an upload needs ?digest=sha256:...",
        ));
    };
    if !body.is_empty() {
        r.blobs.append(&id, &body)?;
    }
    r.blobs.finish(&id, digest).await?;
    Ok(with_headers(
        StatusCode::CREATED,
        &[
            (
                "Location",
                format!("/v2/{}/blobs/{digest}", pkg.repository()),
            ),
            ("Docker-Content-Digest", digest.clone()),
        ],
    ))
}

async fn cancel_upload(
    State(r): Shared,
    Path((ns, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    r.blobs.cancel(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_blob(
    State(r): Shared,
    Path((ns, name, digest)): Path<(String, String, String)>,
) -> Result<Response> {
    package(&ns, &name)?;
    match r.blobs.get(&digest).await? {
        Some(bytes) => Ok(content("application/octet-stream", digest, bytes)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("no blob {digest}"),
        )),
    }
}

/// A blob or manifest answer: its media type and digest as OCI clients read them.
fn content(media_type: &str, digest: String, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, media_type.to_string()),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest,
            ),
        ],
        body,
    )
        .into_response()
}

async fn get_manifest(
    State(r): Shared,
    Path((ns, name, reference)): Path<(String, String, String)>,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    match r.db.manifest(&pkg, &reference).await? {
        Some((digest, body)) => Ok(content(oci::MANIFEST_MEDIA_TYPE, digest, body)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!(
                "{pkg} has no version or manifest `{}`",
                reference.escape_debug()
            ),
        )),
    }
}

fn manifest_invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message)
}

/// The component a manifest names, checked: both blobs stored, sizes as declared.
async fn component_of(r: &Registry, manifest: &Manifest) -> Result<Vec<u8>> {
    let layer = manifest.component().map_err(manifest_invalid)?;
    let blob_unknown = |d: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
            format!("blob {d} was not uploaded"),
        )
    };
    if r.blobs.size(&manifest.config.digest).await?.is_none() {
        return Err(blob_unknown(&manifest.config.digest));
    }
    let wasm = r
        .blobs
        .get(&layer.digest)
        .await?
        .ok_or_else(|| blob_unknown(&layer.digest))?;
    if wasm.len() as u64 != layer.size {
        return Err(manifest_invalid(format!(
            "the layer says {} bytes, its blob has {}",
            layer.size,
            wasm.len()
        )));
    }
    Ok(wasm)
}

/// Publish: a manifest PUT under a version tag.
async fn put_manifest(
    State(r): Shared,
    Path((ns, name, reference)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    let version = parse_version(&reference)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "TAG_INVALID", e))?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| manifest_invalid("the manifest is not UTF-8 JSON"))?;
    let manifest: Manifest = serde_json::from_str(text)
        .map_err(|e| manifest_invalid(format!("not an OCI image manifest: {e}")))?;
    let wasm = component_of(&r, &manifest).await?;
    if r.db.manifest(&pkg, &reference).await?.is_some() {
        return Err(DbError::Exists(format!("{pkg}@{version}")).into());
    }
    let size = wasm.len() as u64;
    let component_digest = oci::digest_of(&wasm);
    let meta = {
        let _slot = r.inspecting.acquire().await.map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "shutting down",
            )
        })?;
        (r.inspect)(wasm).await.map_err(|e| {
            manifest_invalid(format!(
                "the layer is not a step this registry accepts: {e}"
            ))
        })?
    };
    let digest = oci::digest_of(&body);
    let record = VersionRecord {
        package: pkg.to_string(),
        version: version.to_string(),
        manifest_digest: digest.clone(),
        component_digest,
        size,
        step_name: meta.step_name,
        summary: meta.summary,
        input_schema: meta.input_schema,
        capabilities: meta.capabilities,
        wit_version: meta.wit_version,
        yanked: false,
        published: hoist_policy::time::now_rfc3339(),
        signatures: Vec::new(),
    };
    r.db.publish(&record, text).await?;
    Ok(with_headers(
        StatusCode::CREATED,
        &[
            (
                "Location",
                format!("/v2/{}/manifests/{digest}", pkg.repository()),
            ),
            ("Docker-Content-Digest", digest),
        ],
    ))
}

async fn tags(State(r): Shared, Path((ns, name)): Path<(String, String)>) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    let mut tags: Vec<String> =
        r.db.versions(&pkg)
            .await?
            .into_iter()
            .map(|v| v.version)
            .collect();
    if tags.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("no package {pkg}"),
        ));
    }
    tags.reverse();
    Ok(axum::Json(json!({"name": pkg.repository(), "tags": tags})).into_response())
}

async fn api_search(
    State(r): Shared,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let query = q.get("q").map(String::as_str).unwrap_or("");
    let found = r.db.search(query).await?;
    Ok(axum::Json(json!({"packages": found})).into_response())
}

async fn api_package(
    State(r): Shared,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    let versions = r.db.versions(&pkg).await?;
    if versions.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("no package {pkg}"),
        ));
    }
    Ok(axum::Json(json!({"package": pkg.to_string(), "versions": versions})).into_response())
}

async fn api_yank(
    State(r): Shared,
    Path((ns, name, version, action)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    let yanked = match action.as_str() {
        "yank" => true,
        "unyank" => false,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "UNSUPPORTED",
                "use .../yank or .../unyank",
            ));
        }
    };
    if !r.db.set_yanked(&pkg, &version, yanked).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("{pkg} has no version {}", version.escape_debug()),
        ));
    }
    Ok(
        axum::Json(json!({"package": pkg.to_string(), "version": version, "yanked": yanked}))
            .into_response(),
    )
}

/// `POST /api/v1/packages/NS/NAME/VERSION/signatures` `{"public_key", "signature"}`:
/// a signature over the version (the namespace's token). Checked here against the
/// version's component digest, so a stored signature always verifies; the client still
/// verifies it against the keys its user trusts.
async fn api_sign(
    State(r): Shared,
    Path((ns, name, version)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    use hoist_policy::signature::{PublicKey, message};
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "SIGNATURE_INVALID", why);
    let sig: SignatureRecord = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("expected {{\"public_key\", \"signature\"}}: {e}")))?;
    let key: PublicKey = sig.public_key.parse().map_err(|e| bad(format!("{e}")))?;
    let versions = r.db.versions(&pkg).await?;
    let Some(v) = versions.iter().find(|v| v.version == version) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("{pkg} has no version {}", version.escape_debug()),
        ));
    };
    if !key.verifies(
        &message(&pkg, &v.version, &v.component_digest),
        &sig.signature,
    ) {
        return Err(bad(format!(
            "the signature by {key} is not over {pkg}@{} with component {}",
            v.version, v.component_digest
        )));
    }
    let record = SignatureRecord {
        public_key: key.to_string(),
        signature: sig.signature,
    };
    r.db.add_signature(&pkg, &v.version, &record).await?;
    Ok((StatusCode::CREATED, axum::Json(json!(record))).into_response())
}

async fn index(State(r): Shared, Query(q): Query<HashMap<String, String>>) -> Result<Response> {
    let query = q.get("q").map(String::as_str).unwrap_or("");
    let found = r.db.search(query).await?;
    Ok(Html(crate::pages::index(query, &found)).into_response())
}

async fn package_page(
    State(r): Shared,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    let versions = r.db.versions(&pkg).await?;
    if versions.is_empty() {
        return Ok((
            StatusCode::NOT_FOUND,
            Html(crate::pages::not_found(&pkg.to_string())),
        )
            .into_response());
    }
    Ok(Html(crate::pages::package(&pkg, &versions)).into_response())
}

/// The registry's routes.
pub fn router(registry: Arc<Registry>) -> Router {
    let limit = usize::try_from(registry.blobs.limit()).unwrap_or(usize::MAX);
    Router::new()
        .route("/", get(index))
        .route("/plugins/{ns}/{name}", get(package_page))
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/{ns}/{name}/blobs/uploads/", post(start_upload))
        .route("/v2/{ns}/{name}/blobs/uploads", post(start_upload))
        .route(
            "/v2/{ns}/{name}/blobs/uploads/{id}",
            put(finish_upload).patch(patch_upload).delete(cancel_upload),
        )
        .route("/v2/{ns}/{name}/blobs/{digest}", get(get_blob))
        .route(
            "/v2/{ns}/{name}/manifests/{reference}",
            get(get_manifest).put(put_manifest),
        )
        .route("/v2/{ns}/{name}/tags/list", get(tags))
        .route("/api/v1/packages", get(api_search))
        .route("/api/v1/packages/{ns}/{name}", get(api_package))
        .route(
            "/api/v1/packages/{ns}/{name}/{version}/signatures",
            post(api_sign),
        )
        .route(
            "/api/v1/packages/{ns}/{name}/{version}/{action}",
            post(api_yank),
        )
        // A manifest is small; a blob is at most the limit (plus a little for a chunk).
        .layer(DefaultBodyLimit::max(limit.saturating_add(1 << 16)))
        .with_state(registry)
}
