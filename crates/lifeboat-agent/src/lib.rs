//! `lifeboat agent`: one per host. It owns the host's hypervisor driver and serves an HTTPS
//! API to the control plane (DESIGN.md, "Processes and data flow", "Security").
//!
//! - `home`: the agent's folders, private to their owner, tightened at every start.
//! - `state_version`: the format of the home's state (`agent/state-version`): a home a
//!   newer Lifeboat wrote is refused, an older one brought forward.
//! - `identity`: the agent's TLS key and self-signed certificate, made at first start; its
//!   SHA-256 fingerprint is what the server pins.
//! - `enrollment`: the one-time code printed at first start, and the per-agent credential
//!   the server receives in exchange for it.
//! - `api`: the routes. Before enrollment only the discovery hello (and enrollment itself)
//!   answer; every other route needs the credential.
//! - `ids`: the server's sync, recovery and job ids, checked before they name a file.
//! - `client`: calling an agent over HTTPS pinned to its fingerprint (the server's side).
//! - `sync`: the syncs the server asks for (API types) and the registry of running and
//!   finished ones, journaled so an answer survives a restart.
//! - `replicate`: one sync — a cut of the VM's disks written into the vault as a point.
//! - `recovery`: recoveries — VMs brought up here from points (API types, journal).
//! - `provision`: bringing one up instantly: NBD from the vault under a qcow2 overlay,
//!   then hydration; and removing it.
//! - `failpoint`: named pauses for crash tests (agent and server), off unless asked for.
//! - `handover`: the source side of a planned failover (ordered shutdown, final sync of
//!   the stopped VM proven equal by digest) and fencing.
//! - `jobs`: the long calls (a final sync, a point applied) as jobs the server starts and
//!   polls by id, journaled like syncs.
//! - `point_export`: one disk of a point served over NBD.
//! - `sealing`: the agent's X25519 key pair; vault keys sealed to it open only here.
//! - `secret`: strings whose `Debug` never shows them (passphrases, credentials).
//! - `serve`: TLS (or, on loopback only and when asked, plain HTTP) in front of the routes.

pub mod api;
pub mod client;
pub mod enrollment;
pub mod failpoint;
pub mod guest_seed;
pub mod handover;
pub mod handover_api;
pub mod home;
pub mod identity;
pub mod ids;
pub mod jobs;
pub mod networks;
pub mod point_export;
pub mod provision;
pub mod recovery;
mod recovery_api;
pub mod replicate;
pub mod sealing;
pub mod secret;
pub mod serve;
pub mod state_version;
pub mod sync;

/// The agent's version, as the hello reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
