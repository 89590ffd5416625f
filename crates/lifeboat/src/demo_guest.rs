//! What `demo` and `up` need of the demo guest: its image, built by the builder found at
//! run time (`lifeboat_hypervisor::demo_guest`: `LIFEBOAT_GUEST_DIR`, the package's
//! `/usr/share/lifeboat/guest`, or a source tree), a copy to boot, a free port for its
//! web server, and a GET from that server. Nothing here comes from the test kit: this is
//! the shipped binary.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use lifeboat_hypervisor::demo_guest::{self, GuestBuilder};

/// Builds the demo guest, or finds it cached (off the async threads: the first build
/// takes minutes); returns the builder's script and the image.
pub async fn image() -> Result<(PathBuf, PathBuf)> {
    tokio::task::spawn_blocking(|| {
        let builder = GuestBuilder::locate()?;
        let image = builder.build()?;
        Ok((builder.script(), image))
    })
    .await?
}

/// A copy of `image` at `dir/name` for the VM to boot and write to.
pub fn disk_copy(image: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    Ok(demo_guest::disk_copy(image, dir, name)?)
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for the guest's web server.
/// Another process may take it before QEMU binds it; starting the VM then fails, saying so.
pub fn free_tcp_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("bind 127.0.0.1:0 to find a free TCP port")?;
    Ok(listener.local_addr()?.port())
}

/// `GET path` from the guest's web server on 127.0.0.1:`port`: its status and body.
pub async fn http_get(port: u16, path: &str, limit: Duration) -> Result<(u16, Vec<u8>)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let client = reqwest::Client::builder()
        .timeout(limit)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("GET {url}: body"))?;
    Ok((status, body.to_vec()))
}
