//! Login throttling, and the bounded queue of password checks.
//!
//! An argon2id check takes 19 MiB and tens of milliseconds, so the server checks two at
//! a time. Before this module the queue in front of those two was unbounded and first
//! come, first served: a flood of wrong logins from one address put the real admin
//! behind every one of them (finding 9). Now:
//!
//! - **Admission is refused at once, never queued without bound.** At most
//!   [`HASHING_AT_ONCE`] checks run and [`HASHING_WAITING`] wait; a login beyond that is
//!   answered 503 right away, with no hash spent.
//! - **One check at a time per address** (IPv6: per /64, what one subscriber gets), held
//!   through the second's pause after a wrong password: a single address guesses at most
//!   about once a second and can never hold more than one place in the queue, so a login
//!   from any other address finds room.
//! - **Lockout after repeated failures**, counted per (user, address) —
//!   [`USER_FAILURES`] — and per address whatever the user — [`ADDRESS_FAILURES`], for
//!   password spraying. A lock lasts [`LOCKOUT`]; while it holds, no password is checked,
//!   the right one included, and the answer says how long is left.
//!
//! The trade-off: nothing is locked per user alone, so failures from other addresses can
//! never lock the real admin out of the admin's own address. The price is that an
//! attacker with many addresses gets [`USER_FAILURES`] guesses per address per
//! [`LOCKOUT`] against a user, bounded overall by the two checks at a time (tens of
//! guesses a second at most) — against passwords of at least ten characters, and the
//! generated admin password of 96 bits. Such an attacker can also fill the queue and delay
//! everyone's login with 503s (never lock anyone out). The counts live in the server's
//! memory: a restart forgets them. Addresses are the TCP peer's; the server trusts no
//! `X-Forwarded-For` (a client could write any), so behind a reverse proxy every login
//! shares the proxy's address.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Wrong passwords for one user from one address before that pair is locked.
pub const USER_FAILURES: u32 = 5;
/// Wrong passwords from one address, whatever the users, before the address is locked.
pub const ADDRESS_FAILURES: u32 = 20;
/// How long a lock lasts; failures older than this are forgotten.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Password checks running at once (each takes 19 MiB and a core for tens of ms).
pub const HASHING_AT_ONCE: usize = 2;
/// Logins that may wait for a check; more are refused at once.
pub const HASHING_WAITING: usize = 4;
/// Counters kept before stale ones are dropped.
const MAX_TRACKED: usize = 10_000;
/// Longer user names share one counter per address (a name is typed text).
const MAX_KEY_NAME: usize = 64;

/// Why a login was not checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many wrong passwords for this user from this address; time left.
    UserLocked(Duration),
    /// Too many wrong passwords from this address; time left.
    AddressLocked(Duration),
    /// A login from this address is being checked now.
    InFlight,
    /// As many logins are being checked as the server allows.
    Busy,
}

impl Refusal {
    /// What `Retry-After` says.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::UserLocked(d) | Refusal::AddressLocked(d) => *d,
            Refusal::InFlight => Duration::from_secs(1),
            Refusal::Busy => Duration::from_secs(2),
        }
    }

    /// 503 for the server's own limit; 429 for what this client did.
    pub fn is_busy(&self) -> bool {
        matches!(self, Refusal::Busy)
    }

    /// The answer the page shows.
    pub fn message(&self, user: &str, address: IpAddr) -> String {
        match self {
            Refusal::UserLocked(left) => format!(
                "Too many failed logins for {user} from {address}: logins for {user} from this address are locked; try again in {}.",
                minutes(*left)
            ),
            Refusal::AddressLocked(left) => format!(
                "Too many failed logins from {address}: logins from this address are locked; try again in {}.",
                minutes(*left)
            ),
            Refusal::InFlight => {
                "A login from your address is being checked: try again in a second.".into()
            }
            Refusal::Busy => {
                "The server is checking as many logins as it can: try again in a few seconds."
                    .into()
            }
        }
    }
}

/// `14 min 59 s`, `40 s`: rounded up, so "0 s" is never said of a lock that holds.
pub fn minutes(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    match s {
        0..=59 => format!("{s} s"),
        _ => format!("{} min {} s", s / 60, s % 60),
    }
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

impl Failures {
    fn new(now: Instant) -> Failures {
        Failures {
            count: 0,
            since: now,
            locked_until: None,
        }
    }

    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Counts one failure; true when it starts a lock.
    fn add(&mut self, now: Instant, limit: u32) -> bool {
        if self.locked(now).is_some() {
            return false;
        }
        if self.locked_until.is_some() || now.duration_since(self.since) > LOCKOUT {
            *self = Failures::new(now);
        }
        self.count += 1;
        if self.count >= limit {
            self.locked_until = Some(now + LOCKOUT);
            return true;
        }
        false
    }

    fn stale(&self, now: Instant) -> bool {
        self.locked(now).is_none() && now.duration_since(self.since) > LOCKOUT
    }
}

#[derive(Default)]
struct Counters {
    users: HashMap<(String, IpAddr), Failures>,
    addresses: HashMap<IpAddr, Failures>,
    in_flight: HashSet<IpAddr>,
}

/// The server's login gate (one per server, in `ServerState`).
pub struct Throttle {
    counters: Mutex<Counters>,
    /// Places in the queue: checks running plus waiting.
    queue: Arc<Semaphore>,
    /// Checks running.
    hashing: Arc<Semaphore>,
    /// The threads that run them (`HASHING_AT_ONCE`, made with the throttle).
    hashers: Hashers,
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads for password hashes: however many requests are dropped while
/// their hash runs, no more threads than this ever hash (tokio's blocking pool would
/// start a new thread whenever none was idle at the instant a hash was handed over).
struct Hashers {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Hashers {
    fn start(threads: usize) -> Hashers {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            // Each ends when the throttle (the sender) is dropped.
            let _ = std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || loop {
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
        }
        Hashers { jobs }
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle {
            counters: Mutex::default(),
            queue: Arc::new(Semaphore::new(HASHING_AT_ONCE + HASHING_WAITING)),
            hashing: Arc::new(Semaphore::new(HASHING_AT_ONCE)),
            hashers: Hashers::start(HASHING_AT_ONCE),
        }
    }
}

/// Whom a counter belongs to: the address, and for IPv6 its /64, since one subscriber
/// is usually given a whole /64 and could otherwise walk through it.
pub fn bucket(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (!0u128 << 64))),
        },
    }
}

fn user_key(user: &str, address: IpAddr) -> (String, IpAddr) {
    (user.chars().take(MAX_KEY_NAME).collect(), bucket(address))
}

/// A login let through to its password check. Holds its address's one slot until
/// dropped (after the pause that follows a wrong password), and a place in the queue
/// until the check is done.
pub struct Admission<'a> {
    throttle: &'a Throttle,
    address: IpAddr,
    queued: Option<OwnedSemaphorePermit>,
}

impl Admission<'_> {
    /// Runs `work` (an argon2id check) off the async workers once a check may run, then
    /// gives the queue place back.
    pub async fn check<T: Send + 'static>(
        &mut self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let out = self.throttle.hash(work).await;
        self.queued = None;
        out
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.throttle.counters().in_flight.remove(&self.address);
    }
}

impl Throttle {
    fn counters(&self) -> MutexGuard<'_, Counters> {
        // A panic while holding the lock leaves plain counters, still usable.
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a login for `user` from `address` through to its password check, or says why
    /// not — without waiting, and without spending a hash.
    pub fn admit(
        &self,
        user: &str,
        address: IpAddr,
        now: Instant,
    ) -> Result<Admission<'_>, Refusal> {
        let key = user_key(user, address);
        let mut c = self.counters();
        if let Some(left) = c.addresses.get(&key.1).and_then(|f| f.locked(now)) {
            return Err(Refusal::AddressLocked(left));
        }
        if let Some(left) = c.users.get(&key).and_then(|f| f.locked(now)) {
            return Err(Refusal::UserLocked(left));
        }
        if c.in_flight.contains(&key.1) {
            return Err(Refusal::InFlight);
        }
        let queued = self
            .queue
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)?;
        c.in_flight.insert(key.1);
        Ok(Admission {
            throttle: self,
            address: key.1,
            queued: Some(queued),
        })
    }

    /// Counts a wrong password; returns the lock it starts, if it starts one.
    pub fn failed(&self, user: &str, address: IpAddr, now: Instant) -> Option<Refusal> {
        let key = user_key(user, address);
        let mut c = self.counters();
        if c.users.len() + c.addresses.len() > MAX_TRACKED {
            c.users.retain(|_, f| !f.stale(now));
            c.addresses.retain(|_, f| !f.stale(now));
        }
        let address_locked = c
            .addresses
            .entry(key.1)
            .or_insert_with(|| Failures::new(now))
            .add(now, ADDRESS_FAILURES);
        let user_locked = c
            .users
            .entry(key)
            .or_insert_with(|| Failures::new(now))
            .add(now, USER_FAILURES);
        if address_locked {
            Some(Refusal::AddressLocked(LOCKOUT))
        } else if user_locked {
            Some(Refusal::UserLocked(LOCKOUT))
        } else {
            None
        }
    }

    /// The right password: that user's failures from that address are forgotten (the
    /// address's are not: one good guess does not pardon a spray).
    pub fn succeeded(&self, user: &str, address: IpAddr) {
        self.counters().users.remove(&user_key(user, address));
    }

    /// Runs `work` (an argon2id hash or check) off the async workers, a few at a time.
    /// Logins come through [`Throttle::admit`] first; this waits, so on its own it is for
    /// callers who are logged in already (an admin setting a password).
    pub async fn hash<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        // The semaphore is never closed. The permit goes with the work, not with this
        // future: a client that drops its request (a closed connection, an HTTP/2 reset)
        // leaves the hash running, and the hash keeps its place until it ends, so
        // cancelled logins cannot run more checks at once than HASHING_AT_ONCE.
        let permit = self
            .hashing
            .clone()
            .acquire_owned()
            .await
            .expect("the hashing semaphore");
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let out = work();
            drop(permit);
            let _ = done.send(out);
        });
        self.hashers
            .jobs
            .send(job)
            .expect("the password-hash threads run as long as the throttle");
        answer.await.expect("a password hash does not panic")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_user_is_locked_from_one_address_only() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 1..USER_FAILURES {
            assert_eq!(t.failed("admin", B, now), None, "failure {i}");
        }
        assert_eq!(
            t.failed("admin", B, now),
            Some(Refusal::UserLocked(LOCKOUT))
        );
        let later = now + Duration::from_secs(60);
        assert_eq!(
            t.admit("admin", B, later).err(),
            Some(Refusal::UserLocked(LOCKOUT - Duration::from_secs(60)))
        );
        // The admin's own address, and another user from B, are not locked.
        assert!(t.admit("admin", A, later).is_ok());
        assert!(t.admit("alice", B, later).is_ok());
        // The lock ends, and counting starts afresh.
        let after = now + LOCKOUT + Duration::from_secs(1);
        assert!(t.admit("admin", B, after).is_ok());
        assert_eq!(t.failed("admin", B, after), None);
    }

    #[test]
    fn an_address_spraying_users_is_locked_for_all() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..ADDRESS_FAILURES - 1 {
            assert_eq!(t.failed(&format!("user{i}"), B, now), None);
        }
        assert_eq!(
            t.failed("someone", B, now),
            Some(Refusal::AddressLocked(LOCKOUT))
        );
        assert!(matches!(
            t.admit("admin", B, now),
            Err(Refusal::AddressLocked(_))
        ));
        assert!(t.admit("admin", A, now).is_ok());
    }

    #[test]
    fn a_success_forgets_that_users_failures_and_old_failures_fade() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 1..USER_FAILURES {
            t.failed("admin", A, now);
        }
        t.succeeded("admin", A);
        assert_eq!(t.failed("admin", A, now), None);
        // Four more, the first of them long before the fifth: no lock.
        let t = Throttle::default();
        for _ in 1..USER_FAILURES {
            t.failed("admin", A, now);
        }
        assert_eq!(t.failed("admin", A, now + LOCKOUT * 2), None);
    }

    #[test]
    fn one_check_per_address_and_a_bounded_queue() {
        let t = Throttle::default();
        let now = Instant::now();
        let first = t.admit("admin", B, now).unwrap();
        assert_eq!(t.admit("admin", B, now).err(), Some(Refusal::InFlight));
        drop(first);
        assert!(t.admit("admin", B, now).is_ok());
        // Every place taken by other addresses: refused at once, not queued.
        let held: Vec<_> = (0..(HASHING_AT_ONCE + HASHING_WAITING) as u8)
            .map(|i| {
                t.admit("x", IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, i)), now)
                    .unwrap()
            })
            .collect();
        assert_eq!(t.admit("admin", A, now).err(), Some(Refusal::Busy));
        drop(held);
        assert!(t.admit("admin", A, now).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
        assert_ne!(bucket(a), bucket(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(bucket(mapped), A);
        assert_eq!(minutes(LOCKOUT), "15 min 0 s");
        assert_eq!(minutes(Duration::from_millis(40_500)), "41 s");
    }
}
