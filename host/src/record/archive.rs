//! The archive: closed recordings copied to object storage through the
//! `object_store` crate — an S3-compatible bucket (`s3://BUCKET/PREFIX`,
//! credentials and endpoint from the standard `AWS_*` environment variables)
//! or a directory (`file:///ABSOLUTE/PATH`). Several gateway replicas point
//! at the same archive (and the same PostgreSQL state store for the index);
//! session ids are random, so their objects never collide. The copy is the
//! recording byte for byte, so it verifies like the original.

use std::path::Path;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

/// An archive failure.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The URL is not a supported archive.
    #[error("recording archive {url}: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// Object storage refused or failed.
    #[error("recording archive: {0}")]
    Store(#[from] object_store::Error),
    /// A local file could not be read.
    #[error("recording archive: {0}")]
    Io(#[from] std::io::Error),
}

/// An opened archive.
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Archive {
    fn drop(&mut self) {
        // Safe to drop inside another runtime too (a blocking drop would panic there).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("store", &self.store.to_string()).field("prefix", &self.prefix).finish()
    }
}

impl Archive {
    /// Open `url` (`s3://…` or `file:///…`). Blocking calls run on a runtime of the archive's own.
    pub fn open(url: &str) -> Result<Archive, ArchiveError> {
        let bad = |why: &str| ArchiveError::Url { url: url.to_string(), why: why.to_string() };
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("use an absolute path: file:///var/lib/wardgate/archive"));
            }
            std::fs::create_dir_all(path)?;
            (Arc::new(object_store::local::LocalFileSystem::new_with_prefix(path)?), ObjectPath::default())
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let prefix = rest.split_once('/').map(|(_, p)| p).unwrap_or_default();
            let s3 = object_store::aws::AmazonS3Builder::from_env().with_url(url).build()?;
            (Arc::new(s3), ObjectPath::from(prefix))
        } else {
            return Err(bad("use s3://BUCKET/PREFIX or file:///ABSOLUTE/PATH"));
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Archive { store, prefix, rt: Some(rt) })
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.as_ref().expect("runtime until drop").block_on(f)
    }

    fn key(&self, id: &str) -> ObjectPath {
        self.prefix.child(format!("{id}.jsonl"))
    }

    /// Copy a closed recording into the archive.
    pub fn put(&self, id: &str, file: &Path) -> Result<(), ArchiveError> {
        let mut bytes = std::fs::read(file)?;
        bytes.truncate(super::content(&bytes).len());
        self.block_on(self.store.put(&self.key(id), bytes.into()))?;
        Ok(())
    }

    /// A recording from the archive.
    pub fn get(&self, id: &str) -> Result<Vec<u8>, ArchiveError> {
        let r = self.block_on(async { self.store.get(&self.key(id)).await?.bytes().await })?;
        Ok(r.to_vec())
    }
}
