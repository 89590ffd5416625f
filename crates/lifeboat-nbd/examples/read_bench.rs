//! Reads a whole NBD export over a Unix socket and prints the throughput.
//!
//! `cargo run --release -p lifeboat-nbd --example read_bench -- SOCKET [EXPORT] [IN_FLIGHT] [CHUNK_MIB]`
//! Compare with `qemu-img convert -n -f raw -O raw 'nbd+unix:///EXPORT?socket=SOCKET' /dev/null`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lifeboat_nbd::{ConnectOptions, NbdClient};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = PathBuf::from(
        args.get(1)
            .expect("usage: read_bench SOCKET [EXPORT] [IN_FLIGHT] [CHUNK_MIB]"),
    );
    let export = args.get(2).cloned().unwrap_or_default();
    let in_flight: u64 = args.get(3).map_or(8, |s| s.parse().unwrap());
    let chunk: u64 = args.get(4).map_or(2, |s| s.parse().unwrap()) << 20;

    let c = Arc::new(
        NbdClient::connect_unix(&socket, ConnectOptions::new(export))
            .await
            .unwrap(),
    );
    let size = c.export_size();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (c, next) = (c.clone(), next.clone());
        tasks.spawn(async move {
            let mut sum = 0u64;
            loop {
                let off = next.fetch_add(chunk, Ordering::Relaxed);
                if off >= size {
                    return sum;
                }
                let len = chunk.min(size - off) as u32;
                let data = c.read(off, len).await.unwrap();
                sum = sum.wrapping_add(u64::from(data[data.len() / 2]));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "read {} MiB in {secs:.3} s: {:.0} MiB/s (in flight {in_flight}, chunk {} MiB)",
        size >> 20,
        (size >> 20) as f64 / secs,
        chunk >> 20
    );
}
