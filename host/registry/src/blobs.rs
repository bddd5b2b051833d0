//! Blobs content-addressed on local disk: `DIR/sha256/<hex>`, uploaded into
//! `DIR/uploads/<ns>/<name>/<id>` first.
//!
//! - An upload belongs to the repository that opened it: its file lives under that
//!   repository's directory, so the same id under another repository's path finds
//!   nothing (`BLOB_UPLOAD_UNKNOWN`), whatever token comes with it.
//! - Bytes are written as they arrive ([`UploadWriter`]), each chunk checked against
//!   the blob limit and the room the caller allows (the namespace's quota) before it is
//!   written; a blob is never held whole in memory on the way in.
//! - Finishing copies the upload into place while hashing it, so the bytes stored under
//!   a digest are exactly the bytes that were hashed (an append racing the finish
//!   cannot slip in), synced, then renamed: a blob under its digest is always whole.
//! - Every way an upload ends removes its file: finished, refused (digest, size,
//!   quota), its client gone mid-body, cancelled, or untouched for [`UPLOAD_EXPIRY`].
//!
//! Which repositories may serve a stored blob is the database's business
//! (`registry_repo_blobs`), not this module's: bytes are stored once.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::name::PackageName;
use crate::oci::is_digest;
use crate::s3::S3Blobs;

/// An upload nobody has written to for this long is abandoned and removed (a chunked
/// upload of the largest component over a slow link takes minutes, not an hour).
pub const UPLOAD_EXPIRY: Duration = Duration::from_secs(3600);

/// At most this many uploads in progress per namespace: a publish opens two, a few
/// publishes at once a handful; the bound keeps a token from filling the disk with
/// sessions (each may grow to the blob limit) and keeps the expiry sweep short.
pub const MAX_UPLOADS_PER_NAMESPACE: usize = 64;

/// The read size when hashing an upload (a blob is read in pieces, never whole).
const HASH_CHUNK: usize = 64 << 10;

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes do not hash to the digest they were sent under.
    #[error("the content's digest is {actual}, not {expected}")]
    DigestMismatch {
        /// What the uploader said.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// Not a canonical `sha256:` digest.
    #[error("`{0}` is not a sha256 digest (sha256: and 64 lowercase hex digits)")]
    BadDigest(String),
    /// No such upload session (in this repository).
    #[error("no upload `{0}` in progress in this repository")]
    UnknownUpload(String),
    /// Over the size limit.
    #[error("the upload is larger than the registry's limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Over the namespace's quota.
    #[error(
        "the namespace `{namespace}` would hold more than its quota of {quota} bytes of blobs \
         (blobs uploaded, published or not, and uploads in progress count; the registry's \
         operator sets it with `hoist registry serve --namespace-quota`)"
    )]
    OverQuota {
        /// The namespace.
        namespace: String,
        /// Its quota.
        quota: u64,
    },
    /// Too many uploads in progress in one namespace.
    #[error(
        "the namespace `{namespace}` has {max} uploads in progress already; finish or cancel \
         one (or wait an hour for abandoned ones to expire)"
    )]
    TooManyUploads {
        /// The namespace.
        namespace: String,
        /// [`MAX_UPLOADS_PER_NAMESPACE`].
        max: usize,
    },
    /// The request body ended badly (the client went away, or stopped sending).
    #[error("the upload's body was not received whole: {0}")]
    Interrupted(String),
    /// The disk.
    #[error("blob storage: {0}")]
    Io(#[from] std::io::Error),
}

/// The blob store: uploads on local disk; finished blobs there too, or in an S3 bucket.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
    limit: u64,
    remote: Option<S3Blobs>,
}

/// How much more one request body may add under a namespace's quota.
#[derive(Clone, Debug)]
pub struct Room {
    /// Bytes this body may still add.
    pub bytes: u64,
    /// The namespace (for the error).
    pub namespace: String,
    /// Its quota (for the error).
    pub quota: u64,
}

/// `bytes` random bytes from the kernel, as hex (upload ids, tokens).
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(crate::oci::hex(&buf))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The entries of `dir` (none if it is missing or unreadable).
fn entries(dir: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(dir).into_iter().flatten().flatten()
}

/// The upload files under `dir` (`NS/NAME/ID` when `depth` is 3), with their metadata.
fn upload_files(dir: &Path, depth: u8) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    for e in entries(dir) {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() && depth > 1 {
            out.extend(upload_files(&e.path(), depth - 1));
        } else if meta.is_file() {
            out.push((e.path(), meta));
        }
    }
    out
}

impl BlobStore {
    /// A store under `root` (created), refusing blobs larger than `limit` bytes.
    pub fn open(root: &Path, limit: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("sha256"))?;
        std::fs::create_dir_all(root.join("uploads"))?;
        let store = Self {
            root: root.to_path_buf(),
            limit,
            remote: None,
        };
        store.sweep(UPLOAD_EXPIRY);
        Ok(store)
    }

    /// Keep finished blobs in `bucket` instead of `root/sha256` (uploads stay local).
    pub fn with_remote(mut self, bucket: S3Blobs) -> Self {
        self.remote = Some(bucket);
        self
    }

    /// Where finished blobs are.
    pub fn describe(&self) -> String {
        match &self.remote {
            Some(r) => r.describe(),
            None => self.root.join("sha256").display().to_string(),
        }
    }

    /// The size limit of one blob.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        if !is_digest(digest) {
            return Err(BlobError::BadDigest(digest.escape_debug().to_string()));
        }
        Ok(self.root.join("sha256").join(&digest[7..]))
    }

    fn repo_uploads(&self, repo: &PackageName) -> PathBuf {
        // Package names are lowercase ASCII letters, digits, `-` and `_`: safe path parts.
        self.root
            .join("uploads")
            .join(&repo.namespace)
            .join(&repo.name)
    }

    fn upload_path(&self, repo: &PackageName, id: &str) -> Result<PathBuf, BlobError> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BlobError::UnknownUpload(id.escape_debug().to_string()));
        }
        Ok(self.repo_uploads(repo).join(id))
    }

    /// Remove uploads nobody has written to for `max_age` (and any file left by an
    /// older layout, or by a finish cut short); how many were removed.
    pub fn sweep(&self, max_age: Duration) -> usize {
        let now = std::time::SystemTime::now();
        upload_files(&self.root.join("uploads"), 3)
            .into_iter()
            .filter(|(_, meta)| {
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok());
                age.is_some_and(|a| a >= max_age)
            })
            .filter(|(path, _)| std::fs::remove_file(path).is_ok())
            .count()
    }

    /// The uploads in progress in `namespace`: how many, and their bytes.
    pub fn namespace_uploads(&self, namespace: &str) -> (usize, u64) {
        let files = upload_files(&self.root.join("uploads").join(namespace), 2);
        (files.len(), files.iter().map(|(_, m)| m.len()).sum())
    }

    /// A new upload session in `repo`: its id. Abandoned sessions are swept first; a
    /// namespace has at most [`MAX_UPLOADS_PER_NAMESPACE`] at once.
    pub fn start_upload(&self, repo: &PackageName) -> Result<String, BlobError> {
        self.sweep(UPLOAD_EXPIRY);
        if self.namespace_uploads(&repo.namespace).0 >= MAX_UPLOADS_PER_NAMESPACE {
            return Err(BlobError::TooManyUploads {
                namespace: repo.namespace.clone(),
                max: MAX_UPLOADS_PER_NAMESPACE,
            });
        }
        std::fs::create_dir_all(self.repo_uploads(repo))?;
        let id = random_hex(16)?;
        std::fs::File::create_new(self.upload_path(repo, &id)?)?;
        Ok(id)
    }

    /// The length uploaded so far ([`BlobError::UnknownUpload`] if `repo` has no such
    /// upload).
    pub fn upload_len(&self, repo: &PackageName, id: &str) -> Result<u64, BlobError> {
        let path = self.upload_path(repo, id)?;
        Ok(std::fs::metadata(&path)
            .map_err(|_| BlobError::UnknownUpload(id.into()))?
            .len())
    }

    /// A writer appending to `repo`'s upload `id`, allowed `room` more bytes under the
    /// namespace's quota (`None`: only the blob limit applies).
    pub fn writer(
        &self,
        repo: &PackageName,
        id: &str,
        room: Option<Room>,
    ) -> Result<UploadWriter, BlobError> {
        let path = self.upload_path(repo, id)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|_| BlobError::UnknownUpload(id.into()))?;
        let len = file.metadata()?.len();
        Ok(UploadWriter {
            file: Some(tokio::fs::File::from_std(file)),
            path,
            len,
            limit: self.limit,
            room,
            received: 0,
        })
    }

    /// End an upload: hash it against `digest` while copying it into place (synced,
    /// then renamed), or into the bucket. The upload's file is removed whatever
    /// happens; on a mismatch nothing is stored. The blob's size.
    pub async fn finish(
        &self,
        repo: &PackageName,
        id: &str,
        digest: &str,
    ) -> Result<u64, BlobError> {
        let upload = self.upload_path(repo, id)?;
        let stored = self.finish_upload(&upload, id, digest).await;
        let _ = std::fs::remove_file(&upload);
        stored
    }

    async fn finish_upload(&self, upload: &Path, id: &str, digest: &str) -> Result<u64, BlobError> {
        let target = self.path(digest)?;
        let src = std::fs::File::open(upload).map_err(|_| BlobError::UnknownUpload(id.into()))?;
        if let Some(remote) = &self.remote {
            // The bucket takes one body: read (at most the blob limit), hashed as read.
            let (len, bytes) = spawn_hash(src, digest, Sink::Memory(Vec::new())).await?;
            let Sink::Memory(bytes) = bytes else {
                unreachable!()
            };
            remote.put(digest, bytes).await?;
            return Ok(len);
        }
        if target.exists() {
            // Stored already (by any repository): the bytes still prove the digest.
            return Ok(spawn_hash(src, digest, Sink::None).await?.0);
        }
        let mut tmp = upload.as_os_str().to_owned();
        tmp.push(".finishing");
        let tmp = PathBuf::from(tmp);
        let out = std::fs::File::create(&tmp)?;
        let hashed = spawn_hash(src, digest, Sink::File(out)).await;
        let placed = hashed.and_then(|(len, _)| {
            std::fs::rename(&tmp, &target)?;
            sync_dir(target.parent().unwrap_or(&self.root))?;
            Ok(len)
        });
        if placed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        placed
    }

    /// Drop `repo`'s upload session `id`.
    pub fn cancel(&self, repo: &PackageName, id: &str) -> Result<(), BlobError> {
        let path = self.upload_path(repo, id)?;
        std::fs::remove_file(path).map_err(|_| BlobError::UnknownUpload(id.into()))
    }

    /// Store `bytes` under `digest` through an upload of `repo` (tests and tools).
    pub async fn put(
        &self,
        repo: &PackageName,
        digest: &str,
        bytes: &[u8],
    ) -> Result<u64, BlobError> {
        let id = self.start_upload(repo)?;
        let mut w = self.writer(repo, &id, None)?;
        w.write(bytes).await?;
        w.close().await?;
        self.finish(repo, &id, digest).await
    }

    /// The blob's size, if stored.
    pub async fn size(&self, digest: &str) -> Result<Option<u64>, BlobError> {
        let path = self.path(digest)?;
        if let Some(remote) = &self.remote {
            return remote.size(digest).await;
        }
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The blob to serve, if stored: its open file and length (streamed by the caller,
    /// so a large blob is not held in memory per request), or from a bucket its bytes.
    pub async fn serve(&self, digest: &str) -> Result<Option<Stored>, BlobError> {
        let path = self.path(digest)?;
        if let Some(remote) = &self.remote {
            return Ok(remote.get(digest).await?.map(Stored::Bytes));
        }
        match tokio::fs::File::open(path).await {
            Ok(f) => {
                let len = f.metadata().await?.len();
                Ok(Some(Stored::File(f, len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The blob's bytes, if stored.
    pub async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(digest)?;
        if let Some(remote) = &self.remote {
            return remote.get(digest).await;
        }
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// A stored blob, ready to serve.
pub enum Stored {
    /// A local file and its length.
    File(tokio::fs::File, u64),
    /// Bytes fetched from a bucket.
    Bytes(Vec<u8>),
}

/// Where the bytes being hashed go.
enum Sink {
    None,
    Memory(Vec<u8>),
    File(std::fs::File),
}

/// Hash `src` in pieces, copying each into `sink`, off the async threads; a mismatch
/// with `digest` is an error. The length and the sink (a file synced).
async fn spawn_hash(
    mut src: std::fs::File,
    digest: &str,
    mut sink: Sink,
) -> Result<(u64, Sink), BlobError> {
    let digest = digest.to_string();
    tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; HASH_CHUNK];
        let mut len = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            match &mut sink {
                Sink::None => {}
                Sink::Memory(v) => v.extend_from_slice(&buf[..n]),
                Sink::File(f) => f.write_all(&buf[..n])?,
            }
            len += n as u64;
        }
        let actual = format!("sha256:{}", crate::oci::hex(&hasher.finalize()));
        if actual != digest {
            return Err(BlobError::DigestMismatch {
                expected: digest,
                actual,
            });
        }
        if let Sink::File(f) = &sink {
            f.sync_all()?;
        }
        Ok((len, sink))
    })
    .await
    .map_err(|e| BlobError::Io(std::io::Error::other(e.to_string())))?
}

/// An upload being written. Each chunk is checked against the blob limit and the room
/// left before it is written; dropped before [`UploadWriter::close`] (an error, a client
/// gone mid-body, the request cancelled), it removes the whole upload.
#[derive(Debug)]
pub struct UploadWriter {
    file: Option<tokio::fs::File>,
    path: PathBuf,
    len: u64,
    limit: u64,
    room: Option<Room>,
    received: u64,
}

impl UploadWriter {
    /// Refuse now a body whose declared length would not fit.
    pub fn expect(&self, declared: u64) -> Result<(), BlobError> {
        self.fits(declared)
    }

    fn fits(&self, more: u64) -> Result<(), BlobError> {
        if self.len.saturating_add(more) > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        match &self.room {
            Some(room) if self.received.saturating_add(more) > room.bytes => {
                Err(BlobError::OverQuota {
                    namespace: room.namespace.clone(),
                    quota: room.quota,
                })
            }
            _ => Ok(()),
        }
    }

    /// Append `chunk`, if it fits.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.fits(chunk.len() as u64)?;
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| BlobError::Io(std::io::Error::other("the upload was closed already")))?;
        file.write_all(chunk).await?;
        self.len += chunk.len() as u64;
        self.received += chunk.len() as u64;
        Ok(())
    }

    /// Everything written (flushed to the file): the upload's length. The upload stays.
    pub async fn close(mut self) -> Result<u64, BlobError> {
        if let Some(mut file) = self.file.take() {
            file.flush().await?;
        }
        let len = self.len;
        self.path = PathBuf::new();
        Ok(len)
    }
}

impl Drop for UploadWriter {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest_of;

    fn upload_count(dir: &Path) -> usize {
        upload_files(&dir.join("uploads"), 3).len()
    }

    #[tokio::test]
    async fn blobs_are_stored_under_their_digest_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 16).unwrap();
        let repo: PackageName = "acme/x".parse().unwrap();
        let d = digest_of(b"hello");
        store.put(&repo, &d, b"hello").await.unwrap();
        assert_eq!(store.get(&d).await.unwrap().unwrap(), b"hello");
        let wrong = digest_of(b"other");
        assert!(matches!(
            store.put(&repo, &wrong, b"hello").await,
            Err(BlobError::DigestMismatch { .. })
        ));
        assert_eq!(store.get(&wrong).await.unwrap(), None);
        assert!(matches!(
            store.put(&repo, &digest_of(&[0; 17]), &[0; 17]).await,
            Err(BlobError::TooLarge { limit: 16 })
        ));
        assert!(matches!(
            store.get("sha256:../../x").await,
            Err(BlobError::BadDigest(_))
        ));
        assert!(matches!(
            store.writer(&repo, "../../../etc/passwd", None),
            Err(BlobError::UnknownUpload(_))
        ));
        // Nothing left behind in uploads/ by the refused ones.
        assert_eq!(upload_count(dir.path()), 0);
    }

    #[tokio::test]
    async fn an_upload_is_its_repositorys_and_ends_without_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20).unwrap();
        let a: PackageName = "acme/a".parse().unwrap();
        let b: PackageName = "acme/b".parse().unwrap();
        let id = store.start_upload(&a).unwrap();
        let mut w = store.writer(&a, &id, None).unwrap();
        w.write(b"abc").await.unwrap();
        assert_eq!(w.close().await.unwrap(), 3);
        assert!(matches!(
            store.writer(&b, &id, None),
            Err(BlobError::UnknownUpload(_))
        ));
        assert!(matches!(
            store.finish(&b, &id, &digest_of(b"abc")).await,
            Err(BlobError::UnknownUpload(_))
        ));
        assert_eq!(store.upload_len(&a, &id).unwrap(), 3);
        // Over the room: refused before writing, and the whole upload is gone.
        let room = Room {
            bytes: 2,
            namespace: "acme".into(),
            quota: 5,
        };
        let mut w = store.writer(&a, &id, Some(room)).unwrap();
        assert!(matches!(
            w.write(b"xyz").await,
            Err(BlobError::OverQuota { quota: 5, .. })
        ));
        drop(w);
        assert_eq!(upload_count(dir.path()), 0);
        // Expired: swept.
        let id = store.start_upload(&a).unwrap();
        assert_eq!(store.namespace_uploads("acme").0, 1);
        assert_eq!(store.sweep(Duration::ZERO), 1);
        assert!(store.upload_len(&a, &id).is_err());
    }
}
