//! The folder backend: object_store's `LocalFileSystem`, with large objects (packs)
//! written around the page cache.
//!
//! `LocalFileSystem` writes through the page cache; for packs, that copy cost 4x the CPU
//! of a direct write and pushed the host's cached data out for bytes nobody reads soon.
//! Large overwriting puts are therefore written here with O_DIRECT, the same way
//! `LocalFileSystem` does it otherwise: a staged `<file>#<n>` that listings skip, fsynced
//! when asked, renamed into place, its directory fsynced. Everything else — reads, lists,
//! deletes, conditional puts, small objects — is `LocalFileSystem` itself.
//!
//! Who may read a folder vault: packs and manifests are ciphertext, but `config` holds
//! the master key wrapped by each passphrase, which anyone who reads it can attack
//! offline (argon2id slows a guess, a weak passphrase still falls). So a folder Lifeboat
//! makes is 0700 and `config` is 0600 whenever Lifeboat writes it, and tightened when a
//! vault is opened. A folder the operator made keeps its mode: it may be a mount shared
//! by the hosts on purpose.

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

/// Makes the vault folder `root` (0700, with any missing parents) if it is not there,
/// and tightens its `config` to 0600 if it is (a vault made before Lifeboat did so).
pub(crate) fn prepare(root: &FsPath) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !root.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
    }
    match make_config_private(root) {
        // A read-only copy of a vault (a snapshot, another owner's mount) still opens.
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(folder = %root.display(), "cannot make the vault's config private: {e}");
            Ok(())
        }
        _ => Ok(()),
    }
}

fn make_config_private(root: &FsPath) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let config = root.join(crate::format::ids::CONFIG_KEY);
    // Opened without following a link and changed through that handle: whoever can write
    // to a shared vault folder must not make a root-run agent chmod another file.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&config)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(
            "the vault's config is not a regular file",
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[derive(Debug)]
pub(crate) struct FolderStore {
    inner: Arc<LocalFileSystem>,
    root: PathBuf,
    fsync: bool,
}

impl FolderStore {
    pub(crate) fn new(inner: LocalFileSystem, root: PathBuf, fsync: bool) -> FolderStore {
        FolderStore {
            inner: Arc::new(inner.with_fsync(fsync)),
            root,
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
        let put = self.inner.put_opts(location, payload, opts).await?;
        if location.as_ref() == crate::format::ids::CONFIG_KEY {
            // LocalFileSystem writes with the umask's mode; `config` is tightened at
            // once (the folder, when Lifeboat made it, already shuts everyone else out).
            let root = self.root.clone();
            tokio::task::spawn_blocking(move || make_config_private(&root))
                .await
                .map_err(|e| io_error(std::io::Error::other(e)))?
                .map_err(io_error)?;
        }
        Ok(put)
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::backend::{Backend, VaultUrl};
    use crate::format::KdfParams;
    use crate::Vault;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    async fn open(folder: &std::path::Path) -> Backend {
        let url = VaultUrl::parse(&format!("file://{}", folder.display())).unwrap();
        Backend::open(&url, Default::default()).await.unwrap()
    }

    /// Under the usual umask 022: a folder vault Lifeboat makes is its owner's only, and
    /// the config of one made before is tightened when it is opened.
    #[test]
    fn a_config_that_is_a_link_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"not a vault's").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let vault = tmp.path().join("vault");
        std::fs::create_dir(&vault).unwrap();
        std::os::unix::fs::symlink(&victim, vault.join(crate::format::ids::CONFIG_KEY)).unwrap();
        assert!(super::make_config_private(&vault).is_err());
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "the link's target is left alone");
    }

    #[tokio::test]
    async fn a_folder_vaults_config_and_new_folder_are_private() {
        usual_umask();
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("vaults/a");
        Vault::init(
            open(&folder).await,
            "pw",
            64 << 10,
            KdfParams::INSECURE_FAST,
        )
        .await
        .unwrap();
        assert_eq!(mode(&folder), 0o700, "the folder Lifeboat made");
        assert_eq!(mode(&folder.join("config")), 0o600);

        let config = folder.join("config");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
        Vault::open(open(&folder).await, crate::Unlock::Passphrase("pw".into()))
            .await
            .unwrap();
        assert_eq!(mode(&config), 0o600, "an old vault's config, at open");
        assert_eq!(
            mode(&folder),
            0o755,
            "a folder that was there is the operator's"
        );
    }

    fn usual_umask() {
        // SAFETY: umask only swaps the process's file-mode mask.
        unsafe {
            libc::umask(0o022);
        }
    }
}
