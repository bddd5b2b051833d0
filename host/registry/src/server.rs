//! `hoist registry serve`: the OCI distribution API (`/v2/`) for packages and their
//! blobs, a JSON API for what OCI lacks (`/api/v1/`), and human pages (`/`).
//!
//! Reads are public. Writes (blob uploads, manifests, yanks, signatures) need a token
//! for the package's namespace: `Authorization: Bearer TOKEN`, or `Basic` with the token
//! as the password (what OCI clients send). A manifest is a package only if it is a Wasm
//! component artifact whose tag is a semver version and whose component the registry
//! could load and `describe()` (the [`Inspector`] the CLI provides: a sandbox with no
//! capabilities, under a deadline).
//!
//! What a client without the token can make the server do is check its headers: every
//! write handler takes the raw [`Body`] and authorizes before reading a byte of it (an
//! unread body is dropped with the connection). After that each route reads only what
//! it may: a manifest [`MANIFEST_LIMIT`], a signature or a yank [`SMALL_BODY_LIMIT`],
//! a blob the configured limit, streamed to its upload file as it arrives (at most
//! [`MAX_UPLOADS`] at once), and within the namespace's quota. An upload belongs to the
//! repository that opened it, a blob to the repositories it was uploaded to: a
//! repository serves, and its manifests may name, only its own blobs.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;

use crate::blobs::{BlobError, BlobStore, Room, Stored};
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

/// The largest manifest read: a package's manifest is under 1 KiB; 4 MiB is what
/// Distribution accepts and what Hoist's own client reads.
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// The largest signature or yank body read: a signature is ~200 bytes of JSON, a yank
/// needs no body.
pub const SMALL_BODY_LIMIT: u64 = 64 << 10;
/// Blob bodies streamed to disk at once, over all namespaces (each holds an upload file
/// and the disk's bandwidth). One more waits up to [`UPLOAD_WAIT`] for a slot, then is
/// answered 429 with `Retry-After`: a publish (two blobs, one after the other) rarely
/// waits, a flood is turned away without holding its connections for long.
pub const MAX_UPLOADS: usize = 8;
/// How long an upload waits for one of the [`MAX_UPLOADS`] slots.
pub const UPLOAD_WAIT: Duration = Duration::from_secs(10);
/// A body that sends nothing for this long is given up (its upload removed), so a
/// client that stops sending does not keep a slot.
pub const BODY_IDLE: Duration = Duration::from_secs(30);

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
    /// At most [`MAX_UPLOADS`] blob bodies streamed at once.
    pub uploading: tokio::sync::Semaphore,
    /// The most bytes of blobs one namespace may hold (uploads in progress included).
    pub quota: u64,
    /// One finish at a time per namespace, so two cannot both pass the quota.
    finishing: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Registry {
    /// A registry over `db` and `blobs`, inspecting with `inspect`, each namespace
    /// holding at most `quota` bytes of blobs.
    pub fn new(db: RegistryDb, blobs: BlobStore, inspect: Inspector, quota: u64) -> Self {
        Self {
            db,
            blobs,
            inspect,
            inspecting: tokio::sync::Semaphore::new(2),
            uploading: tokio::sync::Semaphore::new(MAX_UPLOADS),
            quota,
            finishing: Default::default(),
        }
    }

    fn finishing(&self, namespace: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.finishing.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(namespace.to_string()).or_default().clone()
    }
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
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
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
            BlobError::OverQuota { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "DENIED"),
            BlobError::TooManyUploads { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            BlobError::Interrupted(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
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

/// The next piece of `body` (trailers skipped), or `None` at its end; a body that
/// fails (its client gone) or sends nothing for [`BODY_IDLE`] is an error.
async fn next_chunk(body: &mut Body) -> Result<Option<Bytes>, BlobError> {
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
        let frame = tokio::time::timeout(BODY_IDLE, frame).await.map_err(|_| {
            BlobError::Interrupted(format!("nothing arrived for {} s", BODY_IDLE.as_secs()))
        })?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(BlobError::Interrupted(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// The body's declared length (`Content-Length`), if any.
fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A small body read whole, refused (413) past `limit` bytes: at once when its
/// `Content-Length` says so, else as soon as more arrives.
async fn small_body(
    headers: &HeaderMap,
    mut body: Body,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "SIZE_INVALID",
            format!("{what} is larger than this registry reads ({limit} bytes)"),
        )
    };
    if declared_len(headers).is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = next_chunk(&mut body).await? {
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// One of the [`MAX_UPLOADS`] slots, waiting at most [`UPLOAD_WAIT`] (then 429).
async fn upload_slot(r: &Registry) -> Result<tokio::sync::SemaphorePermit<'_>> {
    match tokio::time::timeout(UPLOAD_WAIT, r.uploading.acquire()).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "shutting down",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            format!("{MAX_UPLOADS} uploads are in progress; try again shortly"),
        )),
    }
}

/// What one body may add under `repo`'s namespace quota: nothing counts when the blob
/// (`digest`, when the request names it) is the namespace's already.
async fn room(r: &Registry, repo: &PackageName, digest: Option<&str>) -> Result<Option<Room>> {
    let ns = &repo.namespace;
    if let Some(d) = digest
        && r.db.namespace_has_blob(ns, d).await?
    {
        return Ok(None);
    }
    let stored = r.db.namespace_bytes(ns).await?;
    let uploading = r.blobs.namespace_uploads(ns).1;
    Ok(Some(Room {
        bytes: r.quota.saturating_sub(stored.saturating_add(uploading)),
        namespace: ns.clone(),
        quota: r.quota,
    }))
}

/// Stream `body` onto `repo`'s upload `id` (the caller holds an upload slot): the
/// upload's new length. Any failure removes the upload.
async fn receive(
    r: &Registry,
    repo: &PackageName,
    id: &str,
    headers: &HeaderMap,
    mut body: Body,
    digest: Option<&str>,
) -> Result<u64> {
    let room = room(r, repo, digest).await?;
    let mut upload = r.blobs.writer(repo, id, room)?;
    if let Some(n) = declared_len(headers) {
        upload.expect(n)?;
    }
    while let Some(chunk) = next_chunk(&mut body).await? {
        upload.write(&chunk).await?;
    }
    Ok(upload.close().await?)
}

/// Finish `repo`'s upload `id` as the blob `digest` within the namespace's quota, and
/// give the blob to `repo`. The upload is gone afterwards, stored or refused.
async fn finish_blob(r: &Registry, repo: &PackageName, id: &str, digest: &str) -> Result<()> {
    let ns = &repo.namespace;
    let lock = r.finishing(ns);
    let _one_at_a_time = lock.lock().await;
    let size = r.blobs.upload_len(repo, id)?;
    if !r.db.namespace_has_blob(ns, digest).await? {
        let stored = r.db.namespace_bytes(ns).await?;
        if stored.saturating_add(size) > r.quota {
            let _ = r.blobs.cancel(repo, id);
            return Err(BlobError::OverQuota {
                namespace: ns.clone(),
                quota: r.quota,
            }
            .into());
        }
    }
    let size = r.blobs.finish(repo, id, digest).await?;
    r.db.add_repo_blob(repo, digest, size).await?;
    Ok(())
}

fn upload_location(repo: &PackageName, id: String, len: u64) -> Response {
    with_headers(
        StatusCode::ACCEPTED,
        &[
            (
                "Location",
                format!("/v2/{}/blobs/uploads/{id}", repo.repository()),
            ),
            ("Docker-Upload-UUID", id),
            ("Range", format!("0-{}", len.saturating_sub(1))),
        ],
    )
}

fn blob_created(repo: &PackageName, digest: &str) -> Response {
    with_headers(
        StatusCode::CREATED,
        &[
            (
                "Location",
                format!("/v2/{}/blobs/{digest}", repo.repository()),
            ),
            ("Docker-Content-Digest", digest.to_string()),
        ],
    )
}

/// `POST .../blobs/uploads/`: a session (202), or with `?digest=` the whole blob (201).
async fn start_upload(
    State(r): Shared,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    let digest = q.get("digest").map(String::as_str);
    if digest.is_none() && body.is_end_stream() {
        let id = r.blobs.start_upload(&pkg)?;
        return Ok(upload_location(&pkg, id, 0));
    }
    let _slot = upload_slot(&r).await?;
    let id = r.blobs.start_upload(&pkg)?;
    let len = receive(&r, &pkg, &id, &headers, body, digest).await?;
    // Monolithic: the blob is the body, its digest in the query.
    if let Some(digest) = digest {
        finish_blob(&r, &pkg, &id, digest).await?;
        return Ok(blob_created(&pkg, digest));
    }
    Ok(upload_location(&pkg, id, len))
}

async fn patch_upload(
    State(r): Shared,
    Path((ns, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    r.blobs.upload_len(&pkg, &id)?;
    let _slot = upload_slot(&r).await?;
    let len = receive(&r, &pkg, &id, &headers, body, None).await?;
    Ok(upload_location(&pkg, id, len))
}

async fn finish_upload(
    State(r): Shared,
    Path((ns, name, id)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
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
    r.blobs.upload_len(&pkg, &id)?;
    if !body.is_end_stream() {
        let _slot = upload_slot(&r).await?;
        receive(&r, &pkg, &id, &headers, body, Some(digest)).await?;
    }
    finish_blob(&r, &pkg, &id, digest).await?;
    Ok(blob_created(&pkg, digest))
}

async fn cancel_upload(
    State(r): Shared,
    Path((ns, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    r.blobs.cancel(&pkg, &id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn blob_unknown(repo: &PackageName, digest: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
        format!("{repo} has no blob {}", digest.escape_debug()),
    )
}

async fn get_blob(
    State(r): Shared,
    Path((ns, name, digest)): Path<(String, String, String)>,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    if !oci::is_digest(&digest) {
        return Err(BlobError::BadDigest(digest.escape_debug().to_string()).into());
    }
    // Only a blob uploaded to this repository: another's unpublished blob is not served.
    if r.db.repo_blob_size(&pkg, &digest).await?.is_none() {
        return Err(blob_unknown(&pkg, &digest));
    }
    match r.blobs.serve(&digest).await? {
        Some(Stored::Bytes(bytes)) => Ok(content("application/octet-stream", digest, bytes)),
        Some(Stored::File(file, len)) => {
            let mut res = content("application/octet-stream", digest, file_body(file));
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
            Ok(res)
        }
        None => Err(blob_unknown(&pkg, &digest)),
    }
}

/// A file as a streamed body, in 64 KiB pieces; a read error ends it (the client sees
/// a short body against its `Content-Length`).
fn file_body(file: tokio::fs::File) -> axum::body::Body {
    use tokio::io::AsyncReadExt;
    let pieces = futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 64 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    axum::body::Body::from_stream(pieces)
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

/// The component layer a manifest names, checked without reading it: both blobs are
/// `repo`'s (uploaded to it), with the sizes the manifest declares.
async fn component_of<'m>(
    r: &Registry,
    repo: &PackageName,
    manifest: &'m Manifest,
) -> Result<&'m oci::Descriptor> {
    let layer = manifest.component().map_err(manifest_invalid)?;
    for d in [&manifest.config, layer] {
        let Some(size) = r.db.repo_blob_size(repo, &d.digest).await? else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                format!(
                    "blob {} was not uploaded to {repo}",
                    d.digest.escape_debug()
                ),
            ));
        };
        if size != d.size {
            return Err(manifest_invalid(format!(
                "the manifest says {} is {} bytes, its blob has {size}",
                d.digest, d.size
            )));
        }
    }
    Ok(layer)
}

/// Read the layer's component and describe it, in one of the inspector's slots (so at
/// most that many components are in memory for it at once).
async fn inspect_component(
    r: &Registry,
    layer: &oci::Descriptor,
) -> Result<(Inspected, u64, String)> {
    let _slot = r.inspecting.acquire().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "shutting down",
        )
    })?;
    let wasm = r.blobs.get(&layer.digest).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
            format!("blob {} is not stored", layer.digest),
        )
    })?;
    if wasm.len() as u64 != layer.size {
        return Err(manifest_invalid(format!(
            "the layer says {} bytes, its blob has {}",
            layer.size,
            wasm.len()
        )));
    }
    let size = wasm.len() as u64;
    let digest = oci::digest_of(&wasm);
    let meta = (r.inspect)(wasm).await.map_err(|e| {
        manifest_invalid(format!(
            "the layer is not a step this registry accepts: {e}"
        ))
    })?;
    Ok((meta, size, digest))
}

/// Publish: a manifest PUT under a version tag.
async fn put_manifest(
    State(r): Shared,
    Path((ns, name, reference)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    let version = parse_version(&reference)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "TAG_INVALID", e))?;
    let body = small_body(&headers, body, MANIFEST_LIMIT, "the manifest").await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| manifest_invalid("the manifest is not UTF-8 JSON"))?;
    let manifest: Manifest = serde_json::from_str(text)
        .map_err(|e| manifest_invalid(format!("not an OCI image manifest: {e}")))?;
    let layer = component_of(&r, &pkg, &manifest).await?;
    if r.db.manifest(&pkg, &reference).await?.is_some() {
        return Err(DbError::Exists(format!("{pkg}@{version}")).into());
    }
    let (meta, size, component_digest) = inspect_component(&r, layer).await?;
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
    body: Body,
) -> Result<Response> {
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    // A yank needs no body; one is read (and ignored) only up to the small limit.
    small_body(&headers, body, SMALL_BODY_LIMIT, "a yank's body").await?;
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
    body: Body,
) -> Result<Response> {
    use hoist_policy::signature::{PublicKey, message};
    let pkg = package(&ns, &name)?;
    authorize(&r, &headers, &pkg).await?;
    let body = small_body(&headers, body, SMALL_BODY_LIMIT, "a signature").await?;
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
        // No handler reads a body through an extractor (each streams its own, after
        // authorizing, within its route's limit); should one ever, it gets the small limit.
        .layer(DefaultBodyLimit::max(SMALL_BODY_LIMIT as usize))
        .with_state(registry)
}
