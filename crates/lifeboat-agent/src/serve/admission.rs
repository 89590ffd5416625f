//! Which connections a listener keeps. Anyone who can reach the port can open connections
//! before proving who they are, and each one holds a file descriptor and a task, so:
//!
//! - at most `per_address` connections from one IP address: one client cannot take every
//!   slot;
//! - at most `total` in all, kept well below the process's open-file limit, so the agent
//!   can still open its VMs' disks, sockets and vault files under a flood;
//! - when every slot is taken, a new connection pushes out the oldest idle one (no request
//!   in flight) instead of being turned away: connections that never send a request
//!   cannot keep a real client out, they only push each other out. Only when every slot
//!   has a request in flight is a new connection closed at once.
//!
//! A connection is idle from its start until its first request's head has arrived, and
//! again from the end of each response; the serve loop closes it after `idle` of that
//! (`Activity`), whatever bytes trickle in meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What one listener allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, in all.
    pub total: usize,
    /// Connections at once from one IP address.
    pub per_address: usize,
    /// How long a connection may stay with no request in flight, including the TLS
    /// handshake and the wait for a request's head.
    pub idle: Duration,
    /// How long a request body may go without a byte arriving.
    pub body_stall: Duration,
}

/// Connections allowed in all unless the operator says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Limits {
    /// `total` connections (a quarter of them from one address), capped to a quarter
    /// of the open files this process may have: the rest stay for disks, sockets, vault
    /// files and the database.
    pub fn new(total: usize) -> Limits {
        let total = total.min(open_file_limit() / 4).max(8);
        Limits {
            total,
            per_address: (total / 4).max(4),
            idle: Duration::from_secs(15),
            body_stall: Duration::from_secs(15),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::new(DEFAULT_MAX_CONNECTIONS)
    }
}

/// The soft limit on open files (1024 when it cannot be read).
pub fn open_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// Raises the soft limit on open files to the hard limit (at most 2^20), as daemons do:
/// the default soft limit of 1024 is a relic of `select`, and a listener's share of it
/// is what bounds its connections. Returns the limit now in force.
pub fn raise_open_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above; setrlimit only reads the struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let want = lim.rlim_max.min(1 << 20);
            if want > lim.rlim_cur {
                lim.rlim_cur = want;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
    open_file_limit()
}

/// Why a connection was closed at once.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// That address holds its share of connections already.
    PerAddress,
    /// Every slot has a request in flight.
    Full,
}

/// One connection's requests in flight and when it last became idle.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` at which the connection last had nothing in flight.
    idle_since_ms: AtomicU64,
    evicted: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            evicted: Notify::new(),
        }
    }

    /// Whether no request is in flight now.
    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// A request has started; it ends when the returned guard drops (with its response
    /// body).
    pub fn enter(self: &Arc<Activity>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves when the connection has been idle for `idle`, or was pushed out by a
    /// newer one: the caller then closes it.
    pub async fn ended(&self, idle: Duration) -> Ending {
        let watch = async {
            loop {
                if self.is_idle() {
                    let since = self.started
                        + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
                    let deadline = since + idle;
                    if Instant::now() >= deadline && self.is_idle() {
                        return;
                    }
                    tokio::time::sleep_until(deadline.into()).await;
                } else {
                    // A request is running: look again later (it may run for minutes).
                    tokio::time::sleep(idle).await;
                }
            }
        };
        tokio::select! {
            _ = watch => Ending::Idle,
            _ = self.evicted.notified() => Ending::PushedOut,
        }
    }
}

/// Why a connection is to be closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// No request in flight for the idle limit.
    Idle,
    /// A newer connection took its slot (it was idle then).
    PushedOut,
}

/// Who a connection is counted against: its IP address, IPv4 in IPv6 as IPv4, and a whole
/// IPv6 /64 as one (whoever holds one address of a /64 usually holds them all).
fn client_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let now = u64::try_from(a.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(now, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Table {
    next: u64,
    /// Oldest first.
    connections: BTreeMap<u64, (IpAddr, Arc<Activity>)>,
    per_address: HashMap<IpAddr, usize>,
}

impl Table {
    fn forget(&mut self, id: u64) {
        if let Some((address, _)) = self.connections.remove(&id) {
            if let Some(n) = self.per_address.get_mut(&address) {
                *n -= 1;
                if *n == 0 {
                    self.per_address.remove(&address);
                }
            }
        }
    }
}

/// The connections one listener holds.
pub struct Admission {
    limits: Limits,
    table: Mutex<Table>,
}

/// A connection let in; dropping it frees its slot.
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    pub activity: Arc<Activity>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.lock().forget(self.id);
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            table: Mutex::new(Table::default()),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while holding it; a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.lock().connections.len()
    }

    /// Lets a connection from `address` in. When every slot is taken, an idle connection
    /// of the client holding the most is pushed out (its oldest): a client that churns
    /// connections only pushes out its own, never the one a real client just opened.
    pub fn admit(self: &Arc<Admission>, address: IpAddr) -> Result<Ticket, Refused> {
        let address = client_of(address);
        let mut t = self.lock();
        if t.per_address.get(&address).copied().unwrap_or(0) >= self.limits.per_address {
            return Err(Refused::PerAddress);
        }
        if t.connections.len() >= self.limits.total {
            // Oldest first, so on a tie in count the oldest idle connection goes.
            let mut chosen: Option<(usize, u64)> = None;
            for (id, (client, a)) in &t.connections {
                let held = t.per_address.get(client).copied().unwrap_or(0);
                if a.is_idle() && chosen.is_none_or(|(most, _)| held > most) {
                    chosen = Some((held, *id));
                }
            }
            let victim =
                chosen.and_then(|(_, id)| t.connections.get(&id).map(|(_, a)| (id, a.clone())));
            match victim {
                Some((id, activity)) => {
                    t.forget(id);
                    // notify_one keeps the wake-up if the task is not waiting yet.
                    activity.evicted.notify_one();
                }
                None => return Err(Refused::Full),
            }
        }
        let id = t.next;
        t.next += 1;
        let activity = Arc::new(Activity::new());
        t.connections.insert(id, (address, activity.clone()));
        *t.per_address.entry(address).or_insert(0) += 1;
        Ok(Ticket {
            admission: self.clone(),
            id,
            activity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_address: usize) -> Limits {
        Limits {
            total,
            per_address,
            idle: Duration::from_millis(200),
            body_stall: Duration::from_secs(1),
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_address_gets_its_share_only() {
        let a = Admission::new(limits(10, 3));
        let held: Vec<_> = (0..3).map(|_| a.admit(ip(2)).unwrap()).collect();
        assert_eq!(a.admit(ip(2)).err(), Some(Refused::PerAddress));
        // Another address still gets in.
        let other = a.admit(ip(1)).unwrap();
        drop(held);
        assert_eq!(a.held(), 1);
        assert!(a.admit(ip(2)).is_ok());
        drop(other);
    }

    #[tokio::test]
    async fn a_full_listener_pushes_out_the_oldest_idle_connection() {
        let a = Admission::new(limits(3, 3));
        let first = a.admit(ip(2)).unwrap();
        let busy = a.admit(ip(3)).unwrap();
        let _request = busy.activity.enter();
        let third = a.admit(ip(4)).unwrap();
        // Full: the newcomer pushes out `first` (oldest idle), not `busy`.
        let newcomer = a.admit(ip(1)).unwrap();
        tokio::time::timeout(
            Duration::from_secs(1),
            first.activity.ended(Duration::from_secs(60)),
        )
        .await
        .expect("the oldest idle connection is told to close");
        assert_eq!(a.held(), 3);
        // Its slot is gone already; dropping its ticket frees nothing more.
        drop(first);
        assert_eq!(a.held(), 3);
        // Every slot busy: a newcomer is refused.
        let _r2 = third.activity.enter();
        let _r3 = newcomer.activity.enter();
        assert_eq!(a.admit(ip(5)).err(), Some(Refused::Full));
    }

    #[tokio::test]
    async fn idle_connections_end_and_busy_ones_do_not() {
        let a = Admission::new(limits(10, 10));
        let idle = a.admit(ip(2)).unwrap();
        let started = Instant::now();
        idle.activity.ended(Duration::from_millis(200)).await;
        assert!(started.elapsed() >= Duration::from_millis(200));

        let busy = a.admit(ip(2)).unwrap();
        let request = busy.activity.enter();
        let waited = tokio::time::timeout(
            Duration::from_millis(600),
            busy.activity.ended(Duration::from_millis(200)),
        )
        .await;
        assert!(
            waited.is_err(),
            "a connection with a request in flight stays"
        );
        // Idle again once the request ends: closed one idle period later.
        drop(request);
        let ended_at = Instant::now();
        busy.activity.ended(Duration::from_millis(200)).await;
        assert!(ended_at.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_full_listener_pushes_out_the_busiest_clients_idle_connection() {
        let a = Admission::new(limits(4, 4));
        let real = a.admit(ip(1)).unwrap();
        let flood: Vec<_> = (0..3).map(|_| a.admit(ip(2)).unwrap()).collect();
        // Full: a newcomer from the flooding address pushes out one of the flood's own,
        // not the real client's (older) connection.
        let _newcomer = a.admit(ip(2)).unwrap();
        tokio::time::timeout(
            Duration::from_secs(1),
            flood[0].activity.ended(Duration::from_secs(60)),
        )
        .await
        .expect("the flood's oldest connection is told to close");
        let waited = tokio::time::timeout(
            Duration::from_millis(200),
            real.activity.ended(Duration::from_secs(60)),
        )
        .await;
        assert!(waited.is_err(), "the real client's connection stays");
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a = Admission::new(limits(100, 2));
        let in_64 = |last: u16| IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, last]);
        let _held: Vec<_> = (1..=2).map(|n| a.admit(in_64(n)).unwrap()).collect();
        assert_eq!(a.admit(in_64(3)).err(), Some(Refused::PerAddress));
        assert!(a
            .admit(IpAddr::from([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1]))
            .is_ok());
        let mapped: IpAddr = "::ffff:127.0.0.9".parse().unwrap();
        let _v4: Vec<_> = (0..2).map(|_| a.admit(ip(9)).unwrap()).collect();
        assert_eq!(a.admit(mapped).err(), Some(Refused::PerAddress));
    }

    #[test]
    fn limits_stay_below_the_open_file_limit() {
        let l = Limits::new(usize::MAX);
        assert!(l.total <= open_file_limit() / 4);
        assert!(l.per_address <= l.total);
    }
}
