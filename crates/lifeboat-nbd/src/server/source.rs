//! What an export serves: any async byte source of a fixed size.

use std::future::Future;
use std::io;

use bytes::Bytes;

/// The bytes behind the export. Reads may be slow (object storage) and may
/// fail; a failed read is answered `EIO` and the connection stays up.
///
/// Implementations may use `async fn read`. Reads of one connection run
/// concurrently (up to [`super::ServerOptions::max_in_flight`]), on any
/// runtime worker thread.
pub trait ExportSource: Send + Sync + 'static {
    /// Size of the source in bytes; read once when a client connects.
    /// Clients are told this size rounded up to a multiple of 512, the
    /// padding reading as zeroes (see `ExportSize` in the server module).
    fn size(&self) -> u64;

    /// Exactly `len` bytes at `offset`. The server never asks past
    /// [`Self::size`] nor for more than [`crate::proto::limits::MAX_READ`]
    /// bytes, and answers `EIO` if the result has another length.
    fn read(&self, offset: u64, len: u32) -> impl Future<Output = io::Result<Bytes>> + Send;
}

/// Serves a buffer held in memory (tests, small exports).
impl ExportSource for Bytes {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    async fn read(&self, offset: u64, len: u32) -> io::Result<Bytes> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start
            .checked_add(len as usize)
            .filter(|end| *end <= self.len())
            .ok_or_else(|| io::Error::other("read past the end of the buffer"))?;
        Ok(self.slice(start..end))
    }
}
