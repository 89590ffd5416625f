//! Real object-storage servers for the vault's backend tests: `s3s-fs` (an S3 server
//! keeping objects as files) and Azurite (Microsoft's Azure Storage emulator). Each
//! `start` picks a free port and a fresh temporary directory, waits until the server
//! answers, creates the bucket or container, and the server is killed on drop.
//!
//! Install them with `scripts/object-servers.sh` (`need_object_servers`):
//! `cargo install s3s-fs@0.14.1 --features binary --locked` and `npm install -g azurite`.
//! `LIFEBOAT_S3S_FS` and `LIFEBOAT_AZURITE_BLOB` override where the binaries are found.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};

use crate::free_tcp_port;

/// How long a server may take to start answering (node is slow on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `s3s-fs` with one bucket.
pub struct S3Server {
    child: Option<Child>,
    root: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
}

impl S3Server {
    pub async fn start() -> anyhow::Result<S3Server> {
        let binary = find_binary("LIFEBOAT_S3S_FS", "s3s-fs").context(
            "s3s-fs is not installed: run `cargo install s3s-fs@0.14.1 --features binary --locked` \
             (or source scripts/object-servers.sh and call need_object_servers)",
        )?;
        let root = tempfile::Builder::new().prefix("lifeboat-s3s-").tempdir()?;
        let bucket = "lifeboat-test".to_string();
        // Buckets are directories to s3s-fs.
        std::fs::create_dir(root.path().join(&bucket))?;
        let (access_key, secret_key) = (
            "lifeboat-test-key".to_string(),
            "lifeboat-test-secret".to_string(),
        );
        let log = root.path().join("s3s-fs.log");
        let data = root.path().to_path_buf();
        let (child, port) = spawn_on_free_port("s3s-fs", &log, |port| {
            let mut cmd = Command::new(&binary);
            cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .arg(&data);
            cmd
        })
        .await?;
        Ok(S3Server {
            child: Some(child),
            root,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key,
            secret_key,
            bucket,
        })
    }

    /// Where s3s-fs keeps the objects (`<root>/<bucket>/<key>`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Kills the server now (to test a storage that went away).
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the server again on the same port, with the same objects (the storage came
    /// back).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        kill(&mut self.child);
        let port: u16 = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("the endpoint's port")?;
        let binary = find_binary("LIFEBOAT_S3S_FS", "s3s-fs").context("s3s-fs is not installed")?;
        let log = self.root.path().join("s3s-fs.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--access-key",
                &self.access_key,
                "--secret-key",
                &self.secret_key,
            ])
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("restarting s3s-fs")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("s3s-fs did not come back on port {port}");
            }
            sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A running Azurite (blob service only) with one container, account `devstoreaccount1`.
pub struct Azurite {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`; the account's blob endpoint is
    /// `<endpoint>/devstoreaccount1`.
    pub endpoint: String,
    pub container: String,
}

/// Azurite's well-known account and key (published by Microsoft, not a secret).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    pub async fn start() -> anyhow::Result<Azurite> {
        let binary = find_binary("LIFEBOAT_AZURITE_BLOB", "azurite-blob").context(
            "azurite-blob is not installed: run `npm install -g azurite` \
             (or source scripts/object-servers.sh and call need_object_servers)",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-azurite-")
            .tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        let log = dir.path().join("azurite.log");
        let (child, port) = spawn_on_free_port("azurite-blob", &log, |port| {
            let mut cmd = Command::new(&binary);
            cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .arg("--location")
                .arg(&data)
                // Without --disableTelemetry Azurite tries to reach the internet.
                .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"]);
            cmd
        })
        .await?;
        let mut azurite = Azurite {
            child: Some(child),
            _dir: dir,
            endpoint: format!("http://127.0.0.1:{port}"),
            container: "lifeboat-test".into(),
        };
        create_container(port, &azurite.container)
            .await
            .with_context(|| format!("creating container {} in Azurite", azurite.container))
            .inspect_err(|_| azurite.kill())?;
        Ok(azurite)
    }

    /// A SAS for this Azurite's container (see [`crate::azurite_container_sas`]).
    pub fn container_sas(
        &self,
        permissions: &str,
        expiry: chrono::DateTime<chrono::Utc>,
    ) -> String {
        crate::azurite_container_sas(&self.container, permissions, expiry)
    }

    /// Kills the server now (to test a storage that went away).
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `$ENV_VAR`, else `name` on PATH, else `~/.cargo/bin/name`.
fn find_binary(env_var: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Some(PathBuf::from(path));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(cargo_home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Starts a server on a port that was free a moment ago and waits until it accepts TCP
/// connections. Another process may grab the port first; then the server exits and we
/// try another port.
async fn spawn_on_free_port(
    what: &str,
    log: &Path,
    command: impl Fn(u16) -> Command,
) -> anyhow::Result<(Child, u16)> {
    for _ in 0..3 {
        let port = free_tcp_port();
        let out = std::fs::File::create(log)?;
        let mut child = command(port)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let output = std::fs::read_to_string(log).unwrap_or_default();
                tracing::warn!(%status, %output, port, "{what} exited at start; trying another port");
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok((child, port));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let output = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{what} did not answer on port {port} within {START_TIMEOUT:?}; output: {output}");
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
    let output = std::fs::read_to_string(log).unwrap_or_default();
    bail!("{what} would not start; last output: {output}")
}

/// Creates a container with one SharedKey-signed `PUT ?restype=container` (object_store
/// cannot create containers).
async fn create_container(port: u16, container: &str) -> anyhow::Result<()> {
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let version = "2021-08-06";
    // Verb, eleven standard headers (all empty here; Content-Length 0 is written empty),
    // the x-ms-* headers, then the resource: path-style, so the account appears twice.
    let mut lines = vec!["PUT".to_string()];
    lines.extend(std::iter::repeat_n(String::new(), 11));
    lines.push(format!("x-ms-date:{date}"));
    lines.push(format!("x-ms-version:{version}"));
    lines.push(format!(
        "/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    ));
    let string_to_sign = lines.join("\n");
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &b64.decode(AZURITE_KEY)?);
    let signature = b64.encode(aws_lc_rs::hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    let request = format!(
        "PUT /{AZURITE_ACCOUNT}/{container}?restype=container HTTP/1.1\r\n\
         Host: 127.0.0.1:{port}\r\n\
         x-ms-date: {date}\r\n\
         x-ms-version: {version}\r\n\
         Authorization: SharedKey {AZURITE_ACCOUNT}:{signature}\r\n\
         Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .context("no answer within 30 s")??;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status != "201" {
        bail!(
            "Azurite answered: {}",
            text.lines().next().unwrap_or("nothing")
        );
    }
    Ok(())
}
