//! One network namespace of the lab, and the two ways into it.
//!
//! **Processes** go in with `ip netns exec NAME program …` ([`Netns::command`]). We chose
//! it over a `setns` in `pre_exec` because `ip` also does what a program in a namespace
//! expects and `setns` alone does not: it gives the process its own mount namespace in
//! which `/sys` shows the namespace's interfaces (QEMU, libvirtd and `ip` itself read
//! `/sys/class/net` to find bridges and taps), and it bind-mounts the files of
//! `/etc/netns/NAME/` over `/etc` (a site's own `resolv.conf` for the DNS tests, see
//! [`super::Lab::set_etc_file`]). `ip` then *execs* the program, so the child's pid is
//! the program's own: `Child::kill` and `wait` reach it, and everything it forks stays in
//! the namespace.
//!
//! **Sockets of the test process** are made on a short-lived thread that first calls
//! `setns(fd of /var/run/netns/NAME, CLONE_NEWNET)` ([`Netns::run`]). `setns` for a
//! network namespace moves only the calling thread, and a socket belongs for its whole
//! life to the namespace it was created in, whatever thread later uses it. So the thread
//! makes the socket and ends, and the socket is handed to any thread or runtime (tokio:
//! `from_std` after `set_nonblocking(true)`). No long-lived thread ever changes
//! namespace: a `setns` on a tokio worker or the test's own thread would silently move
//! every socket opened there later.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Where `ip netns add` puts its namespace handles (a bind mount of `/proc/PID/ns/net`).
pub(crate) const NETNS_RUN_DIR: &str = "/var/run/netns";

/// A named network namespace (made by `ip netns add`), or the test process's own one
/// ([`Netns::host`]). Cheap to clone: it is the name only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    name: Option<String>,
}

impl Netns {
    /// A namespace someone made with `ip netns add NAME` (the lab, or a test of its own).
    pub fn named(name: String) -> Netns {
        Netns { name: Some(name) }
    }

    /// The namespace the test process itself runs in (the machine's, normally): sockets
    /// and commands are made as usual. For relays that bridge from the host into the lab.
    pub fn host() -> Netns {
        Netns { name: None }
    }

    /// The name `ip netns list` shows, or `None` for the host's namespace.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// `/var/run/netns/NAME`, the handle `setns` opens.
    pub fn path(&self) -> Option<PathBuf> {
        self.name
            .as_ref()
            .map(|n| PathBuf::from(NETNS_RUN_DIR).join(n))
    }

    /// A command that runs `program` inside this namespace (`ip netns exec NAME program`).
    /// Add arguments, environment and stdio as usual; the spawned child is the program
    /// itself (its pid, its exit status), because `ip` execs it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.name {
            None => Command::new(program),
            Some(name) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", name]).arg(program);
                cmd
            }
        }
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result;
    /// sockets `f` creates belong to the namespace for good. A panic in `f` is resumed
    /// on the caller's thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let Some(path) = self.path() else {
            return Ok(f());
        };
        let joined = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("lab-netns".into())
                .spawn_scoped(scope, || -> io::Result<T> {
                    enter(&path)?;
                    Ok(f())
                })
                .map(|handle| handle.join())
        });
        match joined {
            Err(spawn) => Err(spawn),
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
        }
    }

    /// A TCP listener bound inside this namespace (`addr` may have port 0; read the port
    /// back with `local_addr`).
    pub fn tcp_listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        self.run(|| TcpListener::bind(addr))?
            .map_err(|e| annotate(e, format!("bind {addr} in {}", self.describe())))
    }

    /// A TCP connection made from inside this namespace, giving up after `timeout`.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.run(|| TcpStream::connect_timeout(&addr, timeout))?
            .map_err(|e| annotate(e, format!("connect to {addr} from {}", self.describe())))
    }

    fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("network namespace {name}"),
            None => "the host's network namespace".to_string(),
        }
    }
}

/// Moves the calling thread (only it) into the network namespace at `path`.
fn enter(path: &std::path::Path) -> io::Result<()> {
    let handle = File::open(path)
        .map_err(|e| annotate(e, format!("open {} (was the lab dropped?)", path.display())))?;
    // SAFETY: setns takes a valid fd that we own for the duration of the call, and a
    // constant flag; it changes no memory of ours.
    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(annotate(
            e,
            format!("setns into {} (needs root)", path.display()),
        ));
    }
    Ok(())
}

/// Keeps the error's kind (callers match `ConnectionRefused`, `TimedOut`) and adds
/// which socket in which namespace failed.
pub(crate) fn annotate(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
