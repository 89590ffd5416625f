//! A TCP relay that adds latency: this kernel has no `netem`, so a test that wants a
//! slow path points its client at a [`Relay`] instead of at the server.
//!
//! The relay listens inside one namespace and, for every connection it accepts, opens
//! one to the target — by default from the *same* namespace, so the relayed bytes still
//! cross the lab's links: the WAN rate and [`super::Lab::cut_off`] apply to them as to
//! any other traffic. (`Relay::start_between` connects from another namespace, e.g. to
//! reach into the lab from a program in the host's namespace.) Both sockets are made on
//! threads that entered the namespace (`Netns::run`), then used from the relay's own
//! threads, which never change namespace.
//!
//! Each direction is a delay line: a reader thread stamps every chunk it reads with the
//! time it arrived and queues it; a writer thread writes the chunk once `arrived + delay`
//! has passed. So every byte — not only the connect — is held for the one-way delay,
//! order is kept (one FIFO per direction, and a constant delay keeps due times in
//! order), both directions run at once, and a half-close (EOF) is passed on after the
//! same delay. A queue holds at most [`MAX_QUEUED`] bytes, then the reader stops reading
//! and TCP's flow control pushes back on the sender, so throughput through a relay is at
//! most `MAX_QUEUED / delay` (200 MB/s at 20 ms).
//!
//! Knobs, all changeable while connections are open: the delay, a stall (nothing is
//! forwarded, nothing fails: a black-holed path), loss as TCP sees it (a chunk is, with
//! some probability, held for an extra retransmission time and everything behind it
//! waits: head-of-line blocking — bytes are never dropped, TCP would resend them), and
//! a reset of all open connections.
//!
//! Accuracy and overhead, measured by `tests/lab.rs` on the 2-core CI machine: with a
//! 20 ms delay each direction takes 20.2–20.5 ms (up to ~24 ms while other tests load
//! the machine), a round trip 40.5–41 ms. With no delay the relay adds a thread
//! hand-off per chunk and direction and a second TCP hop: the median one-byte round
//! trip goes from 5–8 µs to 17–24 µs (+12–16 µs), and echo throughput from 0.5–1 GB/s
//! to 200–380 MB/s — far above any WAN rate a test sets.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::annotate;
use super::Netns;

/// Bytes one direction of one connection may hold before the relay stops reading.
pub const MAX_QUEUED: usize = 4 << 20;
/// How long the relay waits for the target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_SIZE: usize = 64 << 10;

/// A running relay; dropping it closes its listener and every connection through it.
pub struct Relay {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// What has gone through a relay so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes read from clients (towards the target).
    pub bytes_up: u64,
    /// Bytes read from the target (towards clients).
    pub bytes_down: u64,
}

#[derive(Clone, Copy)]
struct Settings {
    delay: Duration,
    stalled: bool,
    loss: f64,
    loss_penalty: Duration,
}

struct Shared {
    settings: Mutex<Settings>,
    conns: Mutex<Vec<Weak<Conn>>>,
    connect_ns: Netns,
    target: SocketAddr,
    stopping: AtomicBool,
    connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    rng: AtomicU64,
}

/// One relayed connection: the accepted socket, the one to the target, a pipe each way.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    up: Pipe,
    down: Pipe,
}

/// One direction's delay line.
#[derive(Default)]
struct Pipe {
    state: Mutex<PipeState>,
    wake: Condvar,
}

#[derive(Default)]
struct PipeState {
    queue: VecDeque<Chunk>,
    queued_bytes: usize,
    aborted: bool,
}

struct Chunk {
    arrived: Instant,
    /// Extra hold of a chunk the loss knob picked.
    penalty: Duration,
    /// `None`: the sender closed its side (EOF).
    data: Option<Vec<u8>>,
}

impl Relay {
    /// Listens at `listen` (port 0: any) inside `ns` and relays each connection to
    /// `target`, connecting from inside `ns` too, with `one_way_delay` added each way.
    pub fn start(
        ns: &Netns,
        listen: SocketAddr,
        target: SocketAddr,
        one_way_delay: Duration,
    ) -> io::Result<Relay> {
        Relay::start_between(ns, listen, ns, target, one_way_delay)
    }

    /// Like [`Relay::start`], but connects to `target` from `connect_ns`: a bridge
    /// between namespaces (e.g. listening in [`Netns::host`] for a browser, into a site).
    pub fn start_between(
        listen_ns: &Netns,
        listen: SocketAddr,
        connect_ns: &Netns,
        target: SocketAddr,
        one_way_delay: Duration,
    ) -> io::Result<Relay> {
        let listener = Arc::new(listen_ns.tcp_listen(listen)?);
        let addr = listener.local_addr()?;
        let seed =
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), addr);
        let shared = Arc::new(Shared {
            settings: Mutex::new(Settings {
                delay: one_way_delay,
                stalled: false,
                loss: 0.0,
                loss_penalty: Duration::ZERO,
            }),
            conns: Mutex::new(Vec::new()),
            connect_ns: connect_ns.clone(),
            target,
            stopping: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            rng: AtomicU64::new(seed | 1),
        });
        let accept = {
            let (listener, shared) = (listener.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("relay-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(Relay {
            addr,
            listener,
            shared,
            accept: Some(accept),
        })
    }

    /// Where clients connect (inside the listening namespace).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the one-way delay, for bytes already queued too.
    pub fn set_delay(&self, one_way: Duration) {
        self.change(|s| s.delay = one_way);
    }

    /// Stops forwarding (bytes are held, connections stay open, nothing fails) or
    /// resumes it.
    pub fn set_stalled(&self, stalled: bool) {
        self.change(|s| s.stalled = stalled);
    }

    /// Each chunk read from now on is, with `probability`, held an extra `penalty` (a
    /// lost segment waiting for its retransmission) and the chunks behind it wait too.
    pub fn set_loss(&self, probability: f64, penalty: Duration) {
        self.change(|s| {
            s.loss = probability.clamp(0.0, 1.0);
            s.loss_penalty = penalty;
        });
    }

    /// Breaks every open connection (both peers see a reset); new ones are accepted.
    pub fn reset_connections(&self) {
        for conn in self.shared.live_conns() {
            conn.abort();
        }
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats {
            connections: self.shared.connections.load(Ordering::Relaxed),
            bytes_up: self.shared.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.shared.bytes_down.load(Ordering::Relaxed),
        }
    }

    fn change(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut lock(&self.shared.settings));
        // Take each pipe's lock before notifying: a writer checks the settings and
        // starts waiting under that lock, so it either sees the new settings or is
        // already waiting and gets the wake-up.
        for conn in self.shared.live_conns() {
            for pipe in [&conn.up, &conn.down] {
                drop(lock(&pipe.state));
                pipe.wake.notify_all();
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket wakes a thread blocked in accept(2).
        // SAFETY: the fd is the listener's, alive as long as `self.listener`.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        self.reset_connections();
    }
}

impl Shared {
    fn live_conns(&self) -> Vec<Arc<Conn>> {
        let mut conns = lock(&self.conns);
        conns.retain(|c| c.strong_count() > 0);
        conns.iter().filter_map(Weak::upgrade).collect()
    }

    fn settings(&self) -> Settings {
        *lock(&self.settings)
    }

    /// Whether the next chunk is "lost" (xorshift64: cheap, and tests need no better).
    fn lost(&self, probability: f64) -> bool {
        if probability <= 0.0 {
            return false;
        }
        let next = |mut x: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let old = self
            .rng
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(next(x)))
            .unwrap_or(1);
        (next(old) >> 11) as f64 / (1u64 << 53) as f64 <= probability
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((client, _)) => {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("relay-conn".into())
                    .spawn(move || relay_connection(client, &shared));
                if let Err(e) = spawned {
                    eprintln!("relay: cannot start a connection thread: {e}");
                }
            }
            // A client that gave up before accept, or no fds left for a moment.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                eprintln!("relay: accept failed, relay stops: {e}");
                return;
            }
        }
    }
}

/// Connects to the target, then runs the four threads of the connection (this one is
/// the downstream writer).
fn relay_connection(client: TcpStream, shared: &Arc<Shared>) {
    let server = match shared
        .connect_ns
        .tcp_connect(shared.target, CONNECT_TIMEOUT)
    {
        Ok(server) => server,
        Err(e) => {
            eprintln!("relay: {e}; resetting the client");
            set_linger_zero(&client);
            return;
        }
    };
    // The relay forwards what it has at once; Nagle here would add delay of its own.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let conn = Arc::new(Conn {
        client,
        server,
        up: Pipe::default(),
        down: Pipe::default(),
    });
    lock(&shared.conns).push(Arc::downgrade(&conn));
    if shared.stopping.load(Ordering::SeqCst) {
        conn.abort();
        return;
    }
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new().name(name.into()).spawn(f)
    };
    let threads = [
        spawn("relay-up-read", {
            let (conn, shared) = (conn.clone(), shared.clone());
            Box::new(move || read_side(&conn, &conn.client, &conn.up, &shared, true))
        }),
        spawn("relay-up-write", {
            let (conn, shared) = (conn.clone(), shared.clone());
            Box::new(move || write_side(&conn, &conn.server, &conn.up, &shared))
        }),
        spawn("relay-down-read", {
            let (conn, shared) = (conn.clone(), shared.clone());
            Box::new(move || read_side(&conn, &conn.server, &conn.down, &shared, false))
        }),
    ];
    if threads.iter().any(Result::is_err) {
        eprintln!("relay: cannot start the threads of a connection; resetting it");
        conn.abort();
        return;
    }
    write_side(&conn, &conn.client, &conn.down, shared);
}

/// Reads from `from` into the pipe until EOF, an error or an abort.
fn read_side(conn: &Conn, mut from: &TcpStream, pipe: &Pipe, shared: &Shared, up: bool) {
    let counter = if up {
        &shared.bytes_up
    } else {
        &shared.bytes_down
    };
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let data = match from.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                Some(buf[..n].to_vec())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.abort();
                return;
            }
        };
        let eof = data.is_none();
        if !pipe.push(data, shared) || eof {
            return;
        }
    }
}

/// Writes what the pipe releases to `to`; passes an EOF on as a half-close.
fn write_side(conn: &Conn, mut to: &TcpStream, pipe: &Pipe, shared: &Shared) {
    loop {
        match pipe.pop_due(shared) {
            None => return,
            Some(None) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Some(Some(data)) => {
                if to.write_all(&data).is_err() {
                    conn.abort();
                    return;
                }
            }
        }
    }
}

impl Pipe {
    /// Queues a chunk stamped now; waits while the queue is full. False once aborted.
    fn push(&self, data: Option<Vec<u8>>, shared: &Shared) -> bool {
        let arrived = Instant::now();
        let settings = shared.settings();
        let penalty = if data.is_some() && shared.lost(settings.loss) {
            settings.loss_penalty
        } else {
            Duration::ZERO
        };
        let mut state = lock(&self.state);
        while state.queued_bytes >= MAX_QUEUED && !state.aborted {
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.aborted {
            return false;
        }
        state.queued_bytes += data.as_ref().map_or(0, Vec::len);
        state.queue.push_back(Chunk {
            arrived,
            penalty,
            data,
        });
        drop(state);
        self.wake.notify_all();
        true
    }

    /// The next chunk once it is due: `None` if aborted, `Some(None)` for EOF.
    fn pop_due(&self, shared: &Shared) -> Option<Option<Vec<u8>>> {
        let mut state = lock(&self.state);
        loop {
            if state.aborted {
                return None;
            }
            let settings = shared.settings();
            let due = match state.queue.front() {
                Some(chunk) if !settings.stalled => chunk.arrived + settings.delay + chunk.penalty,
                _ => {
                    state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
            };
            let now = Instant::now();
            if now < due {
                state = self
                    .wake
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let chunk = state.queue.pop_front().expect("front was just seen");
            state.queued_bytes -= chunk.data.as_ref().map_or(0, Vec::len);
            drop(state);
            self.wake.notify_all();
            return Some(chunk.data);
        }
    }

    fn abort(&self) {
        let mut state = lock(&self.state);
        state.aborted = true;
        state.queue.clear();
        state.queued_bytes = 0;
        drop(state);
        self.wake.notify_all();
    }
}

impl Conn {
    /// Resets both sockets (SO_LINGER 0, so the final close sends RST) and wakes every
    /// thread of the connection: readers see their socket shut down, writers the abort.
    fn abort(&self) {
        for socket in [&self.client, &self.server] {
            set_linger_zero(socket);
            let _ = socket.shutdown(Shutdown::Both);
        }
        self.up.abort();
        self.down.abort();
    }
}

/// After this, closing the socket sends RST instead of FIN.
fn set_linger_zero(socket: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd, and a pointer to a linger struct of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = annotate(io::Error::last_os_error(), "set SO_LINGER 0".into());
        eprintln!("relay: {e}");
    }
}

/// A poisoned lock only means another relay thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
