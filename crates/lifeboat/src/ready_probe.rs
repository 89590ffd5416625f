//! `failover --wait-for`: after the failover, wait until the recovered VM serves, not only
//! runs. QEMU runs seconds after the command; the guest's services answer only once it has
//! booted (35–45 s for a Debian guest under software emulation). The probe runs from the
//! CLI's machine, so it says what the operator's clients will see.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// What "serving" means: a TCP port that accepts a connection, or a URL that answers
/// with a status below 500.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Tcp(String),
    Http(String),
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Tcp(a) => write!(f, "tcp:{a}"),
            Probe::Http(u) => f.write_str(u),
        }
    }
}

/// `--wait-for`'s value parser: `tcp:HOST:PORT`, `http://…` or `https://…`.
pub fn parse(text: &str) -> Result<Probe, String> {
    if let Some(addr) = text.strip_prefix("tcp:") {
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(format!(
                "{text:?}: write tcp:HOST:PORT (e.g. tcp:10.1.0.5:443)"
            ));
        }
        return Ok(Probe::Tcp(addr.to_string()));
    }
    if text.starts_with("http://") || text.starts_with("https://") {
        return Ok(Probe::Http(text.to_string()));
    }
    Err(format!(
        "{text:?}: write tcp:HOST:PORT or an http:// or https:// URL"
    ))
}

/// Tries `probe` until it succeeds (how long that took) or `limit` passes (an error that
/// says what was last seen; exit::TIMED_OUT).
pub async fn wait(probe: &Probe, limit: Duration, quiet: bool) -> Result<Duration> {
    let started = Instant::now();
    // Any certificate: the question is whether it serves, not who it is.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .build()?;
    let mut said = Instant::now();
    loop {
        let attempt = match probe {
            Probe::Tcp(addr) => tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await
            .map_err(|_| "no answer within 5 s".to_string())
            .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string())),
            Probe::Http(url) => match http.get(url).send().await {
                Ok(r) if r.status().as_u16() < 500 => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            },
        };
        let last = match attempt {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) => e,
        };
        if started.elapsed() >= limit {
            bail!(crate::protect_cmd::TimedOut(format!(
                "{probe} did not answer within {} s (last: {last}); the VM runs on, the guest may \
                 still be booting or its service may be down: see its console",
                limit.as_secs()
            )));
        }
        if !quiet && said.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "waiting for {probe}: {} s ({last})",
                started.elapsed().as_secs()
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_tcp_addresses_or_urls() {
        assert_eq!(
            parse("tcp:10.1.0.5:443"),
            Ok(Probe::Tcp("10.1.0.5:443".into()))
        );
        assert_eq!(parse("tcp:[::1]:22"), Ok(Probe::Tcp("[::1]:22".into())));
        assert_eq!(
            parse("http://web.example/health"),
            Ok(Probe::Http("http://web.example/health".into()))
        );
        assert!(parse("tcp:10.1.0.5").unwrap_err().contains("tcp:HOST:PORT"));
        assert!(parse("tcp:10.1.0.5:0").is_err());
        assert!(parse("web.example:80").unwrap_err().contains("http://"));
    }

    #[tokio::test]
    async fn it_waits_until_the_port_accepts_and_gives_up_at_its_limit() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let took = wait(&Probe::Tcp(addr.to_string()), Duration::from_secs(5), true)
            .await
            .unwrap();
        assert!(took < Duration::from_secs(5));
        drop(listener);
        let e = wait(&Probe::Tcp(addr.to_string()), Duration::from_secs(1), true)
            .await
            .unwrap_err();
        assert!(e.downcast_ref::<crate::protect_cmd::TimedOut>().is_some());
        assert!(e.to_string().contains("did not answer within 1 s"), "{e}");
    }
}
