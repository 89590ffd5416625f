//! A two-site lab on one machine: Linux network namespaces wired like two data centres,
//! a client and a cloud, joined by a WAN whose rate a test sets, whose latency a
//! [`Relay`] adds, and from which a test cuts a site off while its processes run on.
//!
//! ```text
//!   site A (lblab-ID-a)   site B (lblab-ID-b)   client (lblab-ID-client)  cloud (lblab-ID-cloud)
//!   LAN 10.60.1.0/24      LAN 10.60.2.0/24      LAN 10.60.3.0/24          LAN 10.60.4.0/24
//!   br0  10.60.1.1 +taps  br0  10.60.2.1 +taps  br0  10.60.3.1            br0  10.60.4.1
//!   wan0 10.61.1.2/30     wan0 10.61.2.2/30     wan0 10.61.3.2/30         wan0 10.61.4.2/30
//!        |                     |                     |                         |
//!        |   veth pairs: tbf on both ends = the WAN rate; both ends down = cut off
//!        |                     |                     |                         |
//!   to-a 10.61.1.1        to-b 10.61.2.1        to-client 10.61.3.1       to-cloud 10.61.4.1
//!   router (lblab-ID-wan): forwards; 10.60.N.0/24 via 10.61.N.2 for each site; no default
//! ```
//!
//! **Addressing** is the same in every lab (labs never share a namespace, so parallel
//! labs cannot clash, and no lab address exists in the host's namespace): site number
//! N is 1 for A, 2 for B, 3 for the client, 4 for the cloud. The site's LAN is
//! `10.60.N.0/24` on its bridge `br0`; the site host — where the site's Lifeboat server
//! or agent, libvirtd and QEMU run — is `10.60.N.1`, which is also the gateway for the
//! VMs on the bridge (give them `10.60.N.10` and up: [`Site::addr`]). The link to the
//! router is `10.61.N.0/30` (router `.1`, site `.2`); the site's default route leaves
//! with source `10.60.N.1`, so a site is always seen by its LAN address. Every namespace
//! forwards IPv4 and has its loopback up.
//!
//! **Names.** A lab's id is `PID-RANDOM`; its namespaces are `lblab-ID-{a,b,client,
//! cloud,wan}`. Interfaces are created directly inside the namespaces (`ip -n wan link
//! add to-a type veth peer name wan0 netns …-a`), so they never exist in the host's
//! namespace and their short fixed names (`br0`, `wan0`, `to-a`, ≤ 15 bytes) cannot
//! clash between labs. Taps for VMs: [`Lab::add_tap`]; anything else: [`Lab::ip`].
//!
//! **Inside a site.** Programs: [`Lab::command`] (`ip netns exec`). Sockets of the test
//! process itself: [`Netns::tcp_listen`], [`Netns::tcp_connect`], [`Netns::run`] (a
//! thread that entered the namespace; see `netns.rs` for why each is built that way).
//!
//! **The WAN.** [`Lab::set_wan_rate`] puts a `tbf` on both ends of every site's link
//! (each direction is shaped; the first shaper on a path is its bottleneck), replaceable
//! at run time (measured: 4 MB from A to B in 4.15 s at 8 Mbit/s, 1.04 s at 32 Mbit/s,
//! 3–8 ms unshaped). This kernel has no `netem`, so latency (and loss) come from a [`Relay`]
//! that a test puts on a TCP path. [`Lab::cut_off`] sets both ends of a site's link down:
//! the router loses its route to the site and the site its default route, so new
//! connections across fail at once (ICMP unreachable / `ENETUNREACH`) and open ones
//! stall; the site's processes never notice except through the network.
//! [`Lab::reconnect`] sets the link up and puts the routes back.
//!
//! **Cleanup.** Dropping the lab (also while a test panics) kills every process still
//! in its namespaces and deletes them, which destroys their interfaces and qdiscs; it
//! removes `/etc/netns/NAME` too. A lab killed outright (SIGKILL, a crashed runner) is
//! swept by the next [`Lab::start`] on the machine: [`cleanup_stale_labs`] deletes the
//! `lblab-` namespaces whose PID no longer runs.
//!
//! **Needs** root (namespaces, `setns`, taps) and iproute2 (`ip`, `tc`): [`Lab::start`]
//! checks both first and fails with [`LabError::Unavailable`].

mod cleanup;
mod netns;
mod relay;
mod tools;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

pub use cleanup::cleanup_stale_labs;
pub use netns::Netns;
pub use relay::{Relay, RelayStats};

use cleanup::remove_namespace;
use tools::{check_prerequisites, ip, run, tc};

/// Every namespace of every lab starts with this; [`cleanup_stale_labs`] relies on it.
pub const NAME_PREFIX: &str = "lblab-";
/// The bridge of every site (VM taps go here), holding the site host's address.
pub const BRIDGE: &str = "br0";
/// The site's end of its link to the router.
pub const UPLINK: &str = "wan0";
/// Where `ip netns exec` finds files to mount over `/etc` for one namespace.
const ETC_NETNS_DIR: &str = "/etc/netns";

/// A place in the lab: the two data centres, a client (an operator's laptop, a
/// browser) and a cloud (object storage, DNS), each a namespace behind the WAN router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    A,
    B,
    Client,
    Cloud,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::A, Site::B, Site::Client, Site::Cloud];

    /// N in the site's addresses `10.60.N.x` and `10.61.N.x`.
    pub fn number(self) -> u8 {
        match self {
            Site::A => 1,
            Site::B => 2,
            Site::Client => 3,
            Site::Cloud => 4,
        }
    }

    /// Short name used in the namespace's name and the router's interface.
    pub fn role(self) -> &'static str {
        match self {
            Site::A => "a",
            Site::B => "b",
            Site::Client => "client",
            Site::Cloud => "cloud",
        }
    }

    /// `10.60.N.host` on the site's LAN. `.1` is the site host; VMs take `.10` and up.
    pub fn addr(self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 60, self.number(), host)
    }

    /// The site host's address on its bridge (`10.60.N.1`), also the VMs' gateway.
    pub fn host_addr(self) -> Ipv4Addr {
        self.addr(1)
    }

    /// The site's LAN as (network, prefix length): `(10.60.N.0, 24)`.
    pub fn lan(self) -> (Ipv4Addr, u8) {
        (self.addr(0), 24)
    }

    fn index(self) -> usize {
        usize::from(self.number() - 1)
    }

    /// The router's address on this site's link.
    fn router_side(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 61, self.number(), 1)
    }

    /// The site's address on its link to the router.
    fn site_side(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 61, self.number(), 2)
    }

    /// The router's interface towards this site (`to-client` is 9 bytes: under 15).
    fn router_port(self) -> String {
        format!("to-{}", self.role())
    }
}

/// How a lab starts.
#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// WAN rate in bits per second from the start (see [`Lab::set_wan_rate`]); `None`
    /// leaves the links unshaped.
    pub wan_rate: Option<u64>,
}

/// What went wrong with a lab. `Unavailable` means this machine cannot run labs at all.
/// (Display is written out: the testkit does not depend on `thiserror`.)
#[derive(Debug)]
pub enum LabError {
    /// Not root, or iproute2 is missing.
    Unavailable { reason: String },
    /// An `ip` or `tc` command failed.
    Command { command: String, stderr: String },
    /// A file or system call of the lab failed.
    Io { what: String, source: io::Error },
    /// The caller asked for something the lab cannot do (a bad interface name, rate 0).
    Invalid { reason: String },
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::Unavailable { reason } => {
                write!(f, "the lab needs root and iproute2 (`ip netns`): {reason}")
            }
            LabError::Command { command, stderr } => {
                write!(f, "lab: `{command}` failed: {}", stderr.trim_end())
            }
            LabError::Io { what, source } => write!(f, "lab: {what}: {source}"),
            LabError::Invalid { reason } => write!(f, "lab: {reason}"),
        }
    }
}

impl std::error::Error for LabError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LabError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What the lab has changed since it started, per site (indexed by `Site::index`).
#[derive(Default)]
struct LinkState {
    rate: [Option<u64>; 4],
    cut: [bool; 4],
}

/// A running lab; dropping it removes everything it made. See the module docs.
pub struct Lab {
    id: String,
    router: Netns,
    sites: [Netns; 4],
    /// The namespaces made so far, for Drop (a half-built lab is cleaned up too).
    created: Vec<Netns>,
    links: Mutex<LinkState>,
}

impl Lab {
    /// Checks for root and iproute2, sweeps namespaces of dead labs, then builds a lab.
    pub fn start(options: LabOptions) -> Result<Lab, LabError> {
        check_prerequisites()?;
        if let Err(e) = cleanup_stale_labs() {
            eprintln!("lab: sweeping namespaces of dead labs failed (going on): {e}");
        }
        let id = new_lab_id();
        let ns = |role: &str| Netns::named(format!("{NAME_PREFIX}{id}-{role}"));
        let mut lab = Lab {
            router: ns("wan"),
            sites: Site::ALL.map(|s| ns(s.role())),
            id,
            created: Vec::new(),
            links: Mutex::new(LinkState::default()),
        };
        // On any error `lab` is dropped here, which deletes what was made.
        lab.build()?;
        if let Some(rate) = options.wan_rate {
            lab.set_wan_rate(Some(rate))?;
        }
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        let all: Vec<Netns> = std::iter::once(self.router.clone())
            .chain(self.sites.iter().cloned())
            .collect();
        for ns in all {
            run(Command::new("ip").args(["netns", "add", ns_name(&ns)]))?;
            self.created.push(ns.clone());
            ip(&ns, &["link", "set", "lo", "up"])?;
            enable_forwarding(&ns)?;
        }
        for site in Site::ALL {
            let (s, r) = (self.netns(site), &self.router);
            let port = site.router_port();
            let s_name = ns_name(s);
            ip(
                r,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", UPLINK, "netns", s_name,
                ],
            )?;
            ip(s, &["link", "add", BRIDGE, "type", "bridge"])?;
            ip(
                s,
                &["addr", "add", &cidr(site.host_addr(), 24), "dev", BRIDGE],
            )?;
            ip(s, &["link", "set", BRIDGE, "up"])?;
            ip(
                s,
                &["addr", "add", &cidr(site.site_side(), 30), "dev", UPLINK],
            )?;
            ip(
                r,
                &["addr", "add", &cidr(site.router_side(), 30), "dev", &port],
            )?;
            self.link_up(site)?;
        }
        Ok(())
    }

    /// The lab's id (`PID-RANDOM`), part of every namespace name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace of a site.
    pub fn netns(&self, site: Site) -> &Netns {
        &self.sites[site.index()]
    }

    /// The router's namespace (the WAN), for inspection with `ip -n`.
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// The names of all the lab's namespaces, as `ip netns list` shows them.
    pub fn namespace_names(&self) -> Vec<String> {
        std::iter::once(&self.router)
            .chain(self.sites.iter())
            .map(|ns| ns_name(ns).to_string())
            .collect()
    }

    /// A command that runs `program` inside a site (`ip netns exec`); see [`Netns::command`].
    pub fn command(&self, site: Site, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.netns(site).command(program)
    }

    /// Runs `ip -n SITE-NS ARGS…` and returns its output: the helper for anything the
    /// lab has no method for (a second tap on an extra bridge, a static neighbour…).
    pub fn ip(&self, site: Site, args: &[&str]) -> Result<String, LabError> {
        ip(self.netns(site), args)
    }

    /// Adds a bridge `name` to a site, up, with an optional `(address, prefix)` on it.
    pub fn add_bridge(
        &self,
        site: Site,
        name: &str,
        addr: Option<(Ipv4Addr, u8)>,
    ) -> Result<(), LabError> {
        check_ifname(name)?;
        let ns = self.netns(site);
        ip(ns, &["link", "add", name, "type", "bridge"])?;
        if let Some((addr, prefix)) = addr {
            ip(ns, &["addr", "add", &cidr(addr, prefix), "dev", name])?;
        }
        ip(ns, &["link", "set", name, "up"])?;
        Ok(())
    }

    /// Stretches site A's LAN to site B: their bridges `br0` joined by a veth pair, one
    /// L2 segment across the sites (as a DCI or VXLAN would make it). Both sites' subnets
    /// then run on it; a VM moved from A to B keeps its address and is reached through
    /// A's router side as before. Undone when the lab is dropped (the namespaces go).
    pub fn stretch(&self) -> Result<(), LabError> {
        let (a, b) = ("str-a", "str-b");
        ip(
            self.netns(Site::A),
            &["link", "add", a, "type", "veth", "peer", "name", b],
        )?;
        let b_ns = self
            .netns(Site::B)
            .name()
            .ok_or_else(|| LabError::Invalid {
                reason: "site B has no namespace name".into(),
            })?
            .to_string();
        ip(self.netns(Site::A), &["link", "set", b, "netns", &b_ns])?;
        for (site, end) in [(Site::A, a), (Site::B, b)] {
            ip(self.netns(site), &["link", "set", end, "master", BRIDGE])?;
            ip(self.netns(site), &["link", "set", end, "up"])?;
        }
        Ok(())
    }

    /// Adds a persistent tap `name` on the site's bridge `br0`, up, for a VM. QEMU must
    /// run in the same site to open it: `lab.command(site, "qemu-system-x86_64")` with
    /// `-netdev tap,id=n0,ifname=NAME,script=no,downscript=no`.
    pub fn add_tap(&self, site: Site, name: &str) -> Result<(), LabError> {
        check_ifname(name)?;
        let ns = self.netns(site);
        ip(ns, &["tuntap", "add", "dev", name, "mode", "tap"])?;
        ip(ns, &["link", "set", name, "master", BRIDGE])?;
        ip(ns, &["link", "set", name, "up"])?;
        Ok(())
    }

    /// Writes `/etc/netns/NS/FILE`, which `ip netns exec` mounts over `/etc/FILE` for
    /// programs started in the site afterwards (e.g. `resolv.conf` naming the lab's DNS
    /// server). `/etc/FILE` must exist on the machine; the lab removes its copy on drop.
    pub fn set_etc_file(&self, site: Site, file: &str, contents: &str) -> Result<(), LabError> {
        if file.is_empty() || file.contains('/') || file.starts_with('.') {
            return Err(LabError::Invalid {
                reason: format!("{file:?} is not a plain file name under /etc"),
            });
        }
        let dir = etc_dir(ns_name(self.netns(site)));
        let io_err = |what: String| move |source| LabError::Io { what, source };
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let path = dir.join(file);
        std::fs::write(&path, contents).map_err(io_err(format!("write {}", path.display())))
    }

    /// Shapes every site's link to the router, both directions, to `bits_per_second`
    /// (`None`: unshaped). Takes effect at once, also on open connections.
    pub fn set_wan_rate(&self, bits_per_second: Option<u64>) -> Result<(), LabError> {
        for site in Site::ALL {
            self.set_uplink_rate(site, bits_per_second)?;
        }
        Ok(())
    }

    /// Shapes one site's link (both directions) to `bits_per_second`, or unshapes it.
    /// A `tbf` with a burst of 10 ms of traffic (at least 32 KiB) and a queue of 50 ms.
    pub fn set_uplink_rate(
        &self,
        site: Site,
        bits_per_second: Option<u64>,
    ) -> Result<(), LabError> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let ends = [
            (self.netns(site), UPLINK.to_string()),
            (&self.router, site.router_port()),
        ];
        match bits_per_second {
            Some(0) => {
                return Err(LabError::Invalid {
                    reason: "a WAN rate of 0 bit/s; use cut_off to stop all traffic".into(),
                })
            }
            Some(rate) => {
                let burst = (rate / 8 / 100).max(32 * 1024);
                for (ns, dev) in &ends {
                    tc(
                        ns,
                        &[
                            "qdisc",
                            "replace",
                            "dev",
                            dev,
                            "root",
                            "tbf",
                            "rate",
                            &format!("{rate}bit"),
                            "burst",
                            &burst.to_string(),
                            "latency",
                            "50ms",
                        ],
                    )?;
                }
            }
            None if links.rate[site.index()].is_some() => {
                for (ns, dev) in &ends {
                    tc(ns, &["qdisc", "del", "dev", dev, "root"])?;
                }
            }
            None => {}
        }
        links.rate[site.index()] = bits_per_second;
        Ok(())
    }

    /// The rate set on a site's link, if any.
    pub fn uplink_rate(&self, site: Site) -> Option<u64> {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).rate[site.index()]
    }

    /// Cuts a site off the WAN: both ends of its link go down. Its processes keep
    /// running and still reach each other and the site's VMs; nothing crosses the WAN.
    pub fn cut_off(&self, site: Site) -> Result<(), LabError> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        ip(self.netns(site), &["link", "set", UPLINK, "down"])?;
        ip(&self.router, &["link", "set", &site.router_port(), "down"])?;
        links.cut[site.index()] = true;
        Ok(())
    }

    /// Undoes [`Lab::cut_off`]: the link comes up and the routes that went with it are
    /// put back. Harmless on a site that is not cut off.
    pub fn reconnect(&self, site: Site) -> Result<(), LabError> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        self.link_up(site)?;
        links.cut[site.index()] = false;
        Ok(())
    }

    /// Whether a site is cut off now.
    pub fn is_cut_off(&self, site: Site) -> bool {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).cut[site.index()]
    }

    /// Brings a site's link up and (re)installs the routes across it. Setting a link down
    /// makes the kernel drop the routes through it, so this is also the reconnect.
    fn link_up(&self, site: Site) -> Result<(), LabError> {
        let (s, r) = (self.netns(site), &self.router);
        let port = site.router_port();
        ip(r, &["link", "set", &port, "up"])?;
        ip(s, &["link", "set", UPLINK, "up"])?;
        let (net, prefix) = site.lan();
        let via = site.site_side().to_string();
        ip(
            r,
            &[
                "route",
                "replace",
                &cidr(net, prefix),
                "via",
                &via,
                "dev",
                &port,
            ],
        )?;
        let gateway = site.router_side().to_string();
        let src = site.host_addr().to_string();
        ip(
            s,
            &[
                "route", "replace", "default", "via", &gateway, "dev", UPLINK, "src", &src,
            ],
        )?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = remove_namespace(ns_name(ns)) {
                eprintln!("lab {}: {e}", self.id);
            }
        }
    }
}

/// `PID-RANDOM`: the PID lets a later run see that the lab's process is gone; the random
/// part (mixed with a counter) keeps labs of one process apart, and a new process that
/// got a dead lab's PID from colliding with its leftovers.
fn new_lab_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{}-{:05x}", std::process::id(), hasher.finish() & 0xf_ffff)
}

fn enable_forwarding(ns: &Netns) -> Result<(), LabError> {
    // /proc/sys/net shows the namespace of the thread that opens it.
    ns.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
        .and_then(|r| r)
        .map_err(|source| LabError::Io {
            what: format!("enable IPv4 forwarding in {}", ns_name(ns)),
            source,
        })
}

fn check_ifname(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid {
            reason: format!(
                "interface name {name:?}: use 1 to 15 of [A-Za-z0-9._-] (the kernel's limit)"
            ),
        })
    }
}

fn ns_name(ns: &Netns) -> &str {
    ns.name().expect("lab namespaces are named")
}

fn etc_dir(ns_name: &str) -> PathBuf {
    PathBuf::from(ETC_NETNS_DIR).join(ns_name)
}

fn cidr(addr: Ipv4Addr, prefix: u8) -> String {
    format!("{addr}/{prefix}")
}
