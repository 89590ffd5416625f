//! The folder backend: object_store's `LocalFileSystem`, with large objects (packs)
//! written around the page cache.
//!
//! `LocalFileSystem` writes through the page cache; for packs, that copy cost 4x the CPU
//! of a direct write and pushed the host's cached data out for bytes nobody reads soon.
//! Large overwriting puts are therefore written here with O_DIRECT, the same way
//! `LocalFileSystem` does it otherwise: a staged `<file>#<n>` that listings skip, fsynced
//! when asked, renamed into place, its directory fsynced. Everything else — reads, lists,
//! deletes, conditional puts, small objects — is `LocalFileSystem` itself.

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use crate::direct_io;

/// Objects at least this large are written with O_DIRECT.
const DIRECT_MIN: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct FolderStore {
    inner: Arc<LocalFileSystem>,
    fsync: bool,
}

impl FolderStore {
    pub(crate) fn new(inner: LocalFileSystem, fsync: bool) -> FolderStore {
        FolderStore {
            inner: Arc::new(inner.with_fsync(fsync)),
            fsync,
        }
    }
}

impl fmt::Display for FolderStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Folder({})", self.inner)
    }
}

fn io_error(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "Folder",
        source: Box::new(e),
    }
}

/// Writes `parts` to `dest` through a staged file; false if O_DIRECT is refused here.
fn put_direct(dest: &FsPath, parts: &[bytes::Bytes], fsync: bool) -> std::io::Result<bool> {
    let parts: Vec<&[u8]> = parts.iter().map(|b| &b[..]).collect();
    let parent = dest
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no folder", dest.display())))?;
    let mut n = 1u32;
    let staged = loop {
        let mut staged = dest.as_os_str().to_owned();
        staged.push(format!("#{n}"));
        let staged = PathBuf::from(staged);
        match direct_io::create_file_direct(&staged, &parts, fsync) {
            Ok(true) => break staged,
            Ok(false) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(parent)?;
                if fsync {
                    sync_dir(parent.parent().unwrap_or(parent))?;
                }
            }
            Err(e) => return Err(e),
        }
    };
    if let Err(e) = std::fs::rename(&staged, dest) {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    if fsync {
        sync_dir(parent)?;
    }
    Ok(true)
}

fn sync_dir(dir: &FsPath) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl ObjectStore for FolderStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let plain_overwrite = matches!(opts.mode, PutMode::Overwrite) && opts.attributes.is_empty();
        if plain_overwrite && payload.content_length() >= DIRECT_MIN {
            let dest = self.inner.path_to_filesystem(location)?;
            let parts: Vec<bytes::Bytes> = payload.iter().cloned().collect();
            let fsync = self.fsync;
            let written = tokio::task::spawn_blocking(move || put_direct(&dest, &parts, fsync))
                .await
                .map_err(|e| io_error(std::io::Error::other(e)))?
                .map_err(io_error)?;
            if written {
                return Ok(PutResult {
                    e_tag: None,
                    version: None,
                    extensions: Default::default(),
                });
            }
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
