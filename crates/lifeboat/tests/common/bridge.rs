//! A Linux bridge for a test's guest, and a client on it in a network namespace of its
//! own: the guests' static address is 10.0.2.15/24 with 10.0.2.2 as their peer.

use std::io::{Read, Write as _};
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_testkit::lab::Netns;

/// A Linux bridge with no address of the host's, removed on drop.
pub struct Bridge(pub String);
impl Bridge {
    pub fn new(name: &str) -> Bridge {
        ip(&["link", "add", name, "type", "bridge"]);
        ip(&["link", "set", name, "up"]);
        Bridge(name.to_string())
    }
}
impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// A client on the guest's subnet: a network namespace of its own, wired to the bridge by
/// a veth, with 10.0.2.2/24 (the guest's static peer). Never an address in the machine's
/// own namespace: that subnet may be the machine's own network (QEMU and podman user-mode
/// networks use 10.0.2.0/24), and two routes to it send the guest's packets astray.
/// Removed on drop.
pub struct BridgeClient {
    pub netns: Netns,
}

impl BridgeClient {
    pub fn new(bridge: &Bridge) -> BridgeClient {
        BridgeClient::with_address(bridge, "10.0.2.2/24")
    }

    /// A client on `bridge` with `address` (ADDRESS/PREFIX).
    pub fn with_address(bridge: &Bridge, address: &str) -> BridgeClient {
        let name = format!("{}c", bridge.0);
        let (veth, peer) = (format!("{}v", bridge.0), format!("{}p", bridge.0));
        ip(&["netns", "add", &name]);
        let client = BridgeClient {
            netns: Netns::named(name.clone()),
        };
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &veth, "master", &bridge.0, "up"]);
        ip(&["link", "set", &peer, "netns", &name]);
        for args in [
            vec!["addr", "add", address, "dev", peer.as_str()],
            vec!["link", "set", peer.as_str(), "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["netns", "exec", name.as_str(), "ip"];
            all.extend(args);
            ip(&all);
        }
        client
    }

    /// GET `path` from the guest's busybox httpd at `addr`, over the bridge.
    pub fn http_get(&self, addr: &str, path: &str) -> String {
        self.http_get_within(addr, path, Duration::from_secs(60))
    }

    /// `http_get`, waiting up to `limit` for the guest to answer (a booting guest).
    pub fn http_get_within(&self, addr: &str, path: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let got = (|| -> std::io::Result<String> {
                let mut s = self
                    .netns
                    .tcp_connect(addr.parse().unwrap(), Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })();
            match got {
                Ok(text) if text.contains(" 200 ") => {
                    return text.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
                }
                other => assert!(
                    Instant::now() < deadline,
                    "no answer from {addr}{path}: {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for BridgeClient {
    fn drop(&mut self) {
        // The veth goes with the namespace.
        if let Some(name) = self.netns.name() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}
