//! Reaching the guest from a lab namespace: its HTTP service, and the ARP packets it sends.

use std::ffi::{CStr, CString};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

use crate::lab::Netns;

/// `GET path` from `addr`, connecting from inside `netns`; returns status and body.
pub async fn http_get_in(
    netns: &Netns,
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let what = format!("GET http://{addr}{path} from {:?}", netns.name());
    let request = async {
        let ns = netns.clone();
        let connect = Duration::from_secs(5).min(limit);
        let stream = tokio::task::spawn_blocking(move || ns.tcp_connect(addr, connect)).await??;
        stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(stream)?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        parse_response(&response)
    };
    timeout(limit, request)
        .await
        .with_context(|| format!("{what}: no answer within {limit:?}"))?
        .context(what)
}

/// Retries [`http_get_in`] until it answers 200 and returns the body; fails with the
/// last answer or error after `limit`.
pub async fn wait_http_in(
    netns: &Netns,
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> anyhow::Result<Vec<u8>> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match http_get_in(netns, addr, path, left.min(Duration::from_secs(10))).await {
            Ok((200, body)) => return Ok(body),
            Ok((code, body)) => format!("status {code}: {}", String::from_utf8_lossy(&body)),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("GET http://{addr}{path}: no 200 within {limit:?}; last: {last}");
        }
        sleep(Duration::from_millis(250)).await;
    }
}

/// Status code and body of an HTTP/1.x response read to its end.
fn parse_response(response: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("incomplete HTTP response ({} bytes)", response.len());
    };
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status_line = head.lines().next().unwrap_or("");
    let code = status_line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    Ok((code, response[head_end + 4..].to_vec()))
}

/// One ARP packet (Ethernet, IPv4) seen by an [`ArpWatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    /// When it was seen, counted from the start of the watch.
    pub at: Duration,
    /// 1 for a request, 2 for a reply; 3 for a RARP request (a NIC announced by QEMU).
    pub op: u16,
    /// The sender's MAC address, lower-case `xx:xx:…`.
    pub sender_mac: String,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// A gratuitous ARP: the sender announces its own address (target = sender address),
    /// as `arping -U` (request) or `arping -A` (reply) send it.
    pub fn is_announcement(&self) -> bool {
        self.sender_ip == self.target_ip
    }

    /// A NIC announced by its hypervisor (QEMU's `announce-self`: RARP from its MAC), as
    /// after a live migration: switches learn where the MAC is now.
    pub fn is_rarp(&self) -> bool {
        self.op == 3
    }

    /// Parses an Ethernet frame; `None` for anything but (R)ARP for IPv4 over Ethernet.
    fn parse(frame: &[u8], at: Duration) -> Option<Self> {
        let arp = frame.get(14..42)?;
        // ARP (0x0806), and RARP (0x8035): what QEMU's announce-self sends for a NIC.
        let ether = [frame[12], frame[13]];
        if (ether != [0x08, 0x06] && ether != [0x80, 0x35]) || arp[0..6] != [0, 1, 0x08, 0x00, 6, 4]
        {
            return None;
        }
        let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        let mac: Vec<String> = arp[8..14].iter().map(|b| format!("{b:02x}")).collect();
        Some(Self {
            at,
            op: u16::from_be_bytes([arp[6], arp[7]]),
            sender_mac: mac.join(":"),
            sender_ip: ip(&arp[14..18]),
            target_ip: ip(&arp[24..28]),
        })
    }
}

/// Records every ARP packet that passes one interface of a namespace (a VM's tap: all
/// it sends), from [`ArpWatch::start`] until drop — e.g. to see whether a guest
/// announces its address before anyone asks for it. A thread reads a packet socket.
pub struct ArpWatch {
    what: String,
    packets: Arc<Mutex<Vec<ArpPacket>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl ArpWatch {
    /// Starts watching `interface` in `netns` (needs root: a raw packet socket).
    pub fn start(netns: &Netns, interface: &str) -> anyhow::Result<Self> {
        let what = format!("ARP on {interface} in {:?}", netns.name());
        let name = CString::new(interface).context("interface name")?;
        let socket = netns
            .run(|| open_arp_socket(&name))
            .and_then(|opened| opened)
            .with_context(|| format!("watch {what}: open a packet socket"))?;
        let packets = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = std::thread::Builder::new()
            .name("arp-watch".into())
            .spawn({
                let (packets, stop) = (packets.clone(), stop.clone());
                move || read_arp(socket, &packets, &stop)
            })
            .context("start the ARP watch thread")?;
        Ok(Self {
            what,
            packets,
            stop,
            reader: Some(reader),
        })
    }

    /// Every ARP packet seen so far, oldest first.
    pub fn packets(&self) -> Vec<ArpPacket> {
        self.packets.lock().expect("ARP watch lock").clone()
    }

    /// Waits for `mac` to announce `ip` (a gratuitous ARP) and returns that packet.
    pub async fn wait_announcement(
        &self,
        mac: &str,
        ip: Ipv4Addr,
        limit: Duration,
    ) -> anyhow::Result<ArpPacket> {
        let mac = mac.to_ascii_lowercase();
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .packets()
                .into_iter()
                .find(|p| p.is_announcement() && p.sender_mac == mac && p.sender_ip == ip);
            if let Some(packet) = found {
                return Ok(packet);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: {mac} did not announce {ip} within {limit:?}; seen: {:?}",
                    self.what,
                    self.packets()
                );
            }
            sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ArpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A packet socket bound to `interface` (call it inside the namespace), with a receive
/// timeout so that its reader notices a stop. It takes every protocol and the reader
/// keeps the ARP packets: a socket for ETH_P_ARP alone sees nothing on a bridge port,
/// whose frames the bridge takes before protocol handlers run (only "all" taps run
/// before it).
fn open_arp_socket(interface: &CStr) -> io::Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain system calls on a descriptor this function owns; the structures
    // passed are fully initialised and outlive the calls.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol),
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let index = libc::if_nametoindex(interface.as_ptr());
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = index as i32;
        let rc = libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        let rc = libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }
}

fn read_arp(socket: OwnedFd, packets: &Mutex<Vec<ArpPacket>>, stop: &AtomicBool) {
    let started = std::time::Instant::now();
    let mut frame = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: reads into a buffer of the length given, owned by this function.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                frame.as_mut_ptr().cast(),
                frame.len(),
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                _ => {
                    tracing::warn!("ARP watch stopped: {e}");
                    return;
                }
            }
        }
        if let Some(packet) = ArpPacket::parse(&frame[..n as usize], started.elapsed()) {
            packets.lock().expect("ARP watch lock").push(packet);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let (code, body) = parse_response(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nweb-1\n").unwrap();
        assert_eq!((code, body.as_slice()), (200, b"web-1\n".as_slice()));
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn parses_a_gratuitous_arp_request() {
        let mut frame = vec![0xff; 6];
        frame.extend([0x52, 0x54, 0, 0x77, 0, 1, 0x08, 0x06]); // source MAC, type ARP
        frame.extend([0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
        frame.extend([0x52, 0x54, 0, 0x77, 0, 1, 10, 60, 1, 10]); // sender MAC, IP
        frame.extend([0, 0, 0, 0, 0, 0, 10, 60, 1, 10]); // target MAC, IP
        frame.resize(60, 0); // Ethernet padding
        let packet = ArpPacket::parse(&frame, Duration::from_secs(1)).unwrap();
        assert_eq!(packet.op, 1);
        assert_eq!(packet.sender_mac, "52:54:00:77:00:01");
        assert_eq!(packet.sender_ip, Ipv4Addr::new(10, 60, 1, 10));
        assert!(packet.is_announcement());
        frame[41] = 1; // asks for 10.60.1.1: not an announcement
        assert!(!ArpPacket::parse(&frame, Duration::ZERO)
            .unwrap()
            .is_announcement());
        frame[12] = 0x86; // not ARP
        assert_eq!(ArpPacket::parse(&frame, Duration::ZERO), None);
        assert_eq!(ArpPacket::parse(&frame[..30], Duration::ZERO), None);
    }
}
