//! Blobs content-addressed on local disk: `DIR/sha256/<hex>`, written to
//! `DIR/uploads/` first, checked against their digest, synced, then renamed into place,
//! so a blob under its digest is always whole and always the bytes the digest names.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::oci::{digest_of, is_digest};
use crate::s3::S3Blobs;

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
    /// No such upload session.
    #[error("no upload `{0}` in progress")]
    UnknownUpload(String),
    /// Over the size limit.
    #[error("the upload is larger than the registry's limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
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

/// `bytes` random bytes from the kernel, as hex (upload ids, tokens).
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(crate::oci::hex(&buf))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl BlobStore {
    /// A store under `root` (created), refusing blobs larger than `limit` bytes.
    pub fn open(root: &Path, limit: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("sha256"))?;
        std::fs::create_dir_all(root.join("uploads"))?;
        Ok(Self {
            root: root.to_path_buf(),
            limit,
            remote: None,
        })
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

    fn upload_path(&self, id: &str) -> Result<PathBuf, BlobError> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BlobError::UnknownUpload(id.escape_debug().to_string()));
        }
        Ok(self.root.join("uploads").join(id))
    }

    /// Store `bytes` under `digest` if they hash to it (durable when this returns).
    pub async fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let id = self.start_upload()?;
        self.append(&id, bytes)?;
        self.finish(&id, digest).await
    }

    /// A new upload session's id.
    pub fn start_upload(&self) -> Result<String, BlobError> {
        let id = random_hex(16)?;
        std::fs::File::create(self.root.join("uploads").join(&id))?;
        Ok(id)
    }

    /// Add a chunk to an upload; its new length.
    pub fn append(&self, id: &str, bytes: &[u8]) -> Result<u64, BlobError> {
        let path = self.upload_path(id)?;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|_| BlobError::UnknownUpload(id.into()))?;
        let len = f.metadata()?.len() + bytes.len() as u64;
        if len > self.limit {
            drop(f);
            let _ = std::fs::remove_file(&path);
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        f.write_all(bytes)?;
        Ok(len)
    }

    /// The length uploaded so far.
    pub fn upload_len(&self, id: &str) -> Result<u64, BlobError> {
        let path = self.upload_path(id)?;
        Ok(std::fs::metadata(&path)
            .map_err(|_| BlobError::UnknownUpload(id.into()))?
            .len())
    }

    /// End an upload: check the bytes against `digest`, sync them and move them under
    /// their digest. On a mismatch the upload is dropped and nothing is stored.
    pub async fn finish(&self, id: &str, digest: &str) -> Result<(), BlobError> {
        let path = self.upload_path(id)?;
        let target = self.path(digest)?;
        let bytes = std::fs::read(&path).map_err(|_| BlobError::UnknownUpload(id.into()))?;
        let actual = digest_of(&bytes);
        if actual != digest {
            let _ = std::fs::remove_file(&path);
            return Err(BlobError::DigestMismatch {
                expected: digest.into(),
                actual,
            });
        }
        if let Some(remote) = &self.remote {
            // Acknowledged once the bucket has it whole; the local copy was only the upload.
            let stored = remote.put(digest, bytes).await;
            let _ = std::fs::remove_file(&path);
            return stored;
        }
        std::fs::File::open(&path)?.sync_all()?;
        std::fs::rename(&path, &target)?;
        sync_dir(target.parent().unwrap_or(&self.root))?;
        Ok(())
    }

    /// Drop an upload session.
    pub fn cancel(&self, id: &str) -> Result<(), BlobError> {
        let path = self.upload_path(id)?;
        std::fs::remove_file(path).map_err(|_| BlobError::UnknownUpload(id.into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_are_stored_under_their_digest_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 16).unwrap();
        let d = digest_of(b"hello");
        store.put(&d, b"hello").await.unwrap();
        assert_eq!(store.get(&d).await.unwrap().unwrap(), b"hello");
        let wrong = digest_of(b"other");
        assert!(matches!(
            store.put(&wrong, b"hello").await,
            Err(BlobError::DigestMismatch { .. })
        ));
        assert_eq!(store.get(&wrong).await.unwrap(), None);
        assert!(matches!(
            store.put(&digest_of(&[0; 17]), &[0; 17]).await,
            Err(BlobError::TooLarge { limit: 16 })
        ));
        assert!(matches!(
            store.get("sha256:../../x").await,
            Err(BlobError::BadDigest(_))
        ));
        assert!(matches!(
            store.append("../../../etc/passwd", b"x"),
            Err(BlobError::UnknownUpload(_))
        ));
        // Nothing left behind in uploads/ by the refused ones.
        assert_eq!(
            std::fs::read_dir(dir.path().join("uploads"))
                .unwrap()
                .count(),
            0
        );
    }
}
