//! One disk of a recovery point served read-only over NBD on a Unix socket, straight from
//! the vault: every read goes through the point reader's bounded chunk cache, and every
//! chunk is proven against its id before its bytes leave.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use lifeboat_nbd::server::{serve_unix, ExportSource, ServerOptions};
use lifeboat_vault::format::Name;
use lifeboat_vault::PointReader;
use tokio::task::AbortHandle;

struct PointDisk {
    reader: Arc<PointReader>,
    disk: Name,
    size: u64,
}

impl ExportSource for PointDisk {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, len: u32) -> std::io::Result<Bytes> {
        self.reader
            .read_at(&self.disk, offset, len as usize)
            .await
            .map(Bytes::from)
            .map_err(|e| {
                tracing::warn!(disk = %self.disk, offset, len, "serving the point: {e}");
                std::io::Error::other(e.to_string())
            })
    }
}

/// Serves disk `disk` of the reader's point on `socket` (replacing a stale socket file)
/// until the returned task is aborted. The export is named after the disk.
pub fn serve(
    reader: Arc<PointReader>,
    disk: &str,
    socket: &Path,
    owner: Option<(u32, u32)>,
) -> std::io::Result<AbortHandle> {
    let name = Name::new(disk).map_err(|e| std::io::Error::other(e.to_string()))?;
    let size = reader
        .manifest()
        .disks
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.size)
        .ok_or_else(|| std::io::Error::other(format!("the point has no disk {disk}")))?;
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    // Bound under the umask, inside the recovery's 0700 folder; it serves the disk.
    lifeboat_hypervisor::private::make_private(socket)?;
    if let Some((uid, gid)) = owner {
        // QEMU runs as another user (libvirt's): it must open the socket, nobody else.
        std::os::unix::fs::chown(socket, Some(uid), Some(gid))?;
    }
    let source = Arc::new(PointDisk {
        reader,
        disk: name,
        size,
    });
    let options = ServerOptions::new(disk);
    let socket = socket.to_path_buf();
    Ok(tokio::spawn(async move {
        if let Err(e) = serve_unix(listener, source, options).await {
            tracing::warn!(socket = %socket.display(), "NBD server stopped: {e}");
        }
    })
    .abort_handle())
}
