//! Recycled pack buffers.
//!
//! A writer fills a 16 MiB pack, hands it to an upload, and starts the next. Fresh
//! allocations of that size, freed on upload threads, fragmented glibc's heap until a 4 GiB
//! backup peaked at 500 MiB; reusing the few buffers in use at once keeps memory flat.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Buffers handed out and returned; at most `keep` are kept while idle.
#[derive(Clone)]
pub(crate) struct BufferPool {
    inner: Arc<Pool>,
}

struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
    capacity: usize,
}

impl BufferPool {
    /// A pool of buffers with room for `capacity` bytes each, keeping up to `keep`.
    pub(crate) fn new(capacity: usize, keep: usize) -> BufferPool {
        BufferPool {
            inner: Arc::new(Pool {
                free: Mutex::new(Vec::new()),
                keep,
                capacity,
            }),
        }
    }

    /// An empty buffer with room for `capacity` bytes.
    pub(crate) fn take(&self) -> Vec<u8> {
        let reused = self
            .inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        reused.unwrap_or_else(|| Vec::with_capacity(self.inner.capacity))
    }

    /// `buf` as Bytes that give the buffer back to the pool when the last clone is dropped.
    pub(crate) fn share(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Recycled {
            buf,
            pool: self.inner.clone(),
        })
    }
}

struct Recycled {
    buf: Vec<u8>,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        // A buffer that grew far past the usual size is not worth keeping.
        if free.len() < self.pool.keep && self.buf.capacity() <= 2 * self.pool.capacity {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_once_every_clone_is_dropped() {
        let pool = BufferPool::new(1024, 2);
        let mut b = pool.take();
        b.extend_from_slice(b"pack");
        let ptr = b.as_ptr();
        let bytes = pool.share(b);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(&clone[..], b"pack");
        drop(clone);
        let again = pool.take();
        assert_eq!(again.as_ptr(), ptr, "the same allocation is reused");
        assert!(again.is_empty() && again.capacity() >= 1024);
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit() {
        let pool = BufferPool::new(16, 1);
        let a = pool.share(pool.take());
        let b = pool.share(pool.take());
        drop(a);
        drop(b);
        assert_eq!(pool.inner.free.lock().unwrap().len(), 1);
    }
}
