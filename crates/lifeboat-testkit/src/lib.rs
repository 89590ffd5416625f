//! Test helpers for Lifeboat's VM tests. Tests need a real guest to protect: this crate
//! builds it from the source tree (`guest/build.sh` through the product's
//! `lifeboat_hypervisor::demo_guest`: a 64 MiB qcow2 disk made from Debian's cloud kernel
//! and busybox, cached by a hash of its inputs), hands each test its own copy, and talks to
//! the running guest the two ways the guest offers — a root shell on its serial port
//! ([`SerialConsole`]) and busybox httpd serving its `/data` partition ([`http_get`],
//! [`wait_http`]). The guest contract (see `guest/init.sh`): `/dev/vda2` is mounted at
//! `/data`, `/data/boot-count` counts boots, the ACPI power button (QMP
//! `system_powerdown`) unmounts `/data` cleanly and powers off, and the console prints
//! `LIFEBOAT-GUEST-READY boot=<n>` once everything is up.
//!
//! The vault's backend tests need real object storage: [`S3Server`] (s3s-fs) and
//! [`Azurite`] start one on a free port and stop it on drop; [`azurite_container_sas`]
//! mints the restricted credential (a container SAS) that hosts are given. The server's
//! tests need PostgreSQL: [`fresh_postgres_database`] makes a database on the cluster
//! the test command starts. Tests and benchmarks that measure a process read /proc
//! through [`cpu_seconds`] and [`status_kb`].
//!
//! The web dashboard's end-to-end tests drive a real headless Chromium through
//! [`browser::Browser`].
//!
//! Guests run under TCG (no working KVM on the CI machines), so every wait here takes a
//! timeout and [`boot_timeout`] is generous.

pub mod bind;
pub mod browser;
pub mod debian_guest;
mod guestfs;
mod http;
mod image;
pub mod lab;
mod postgres;
mod procs;
mod sas;
mod servers;

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

pub use guestfs::{guest_data_files, mbr_partition};
pub use http::{http_get, wait_http};
pub use image::{guest_disk_copy, guest_image};
pub mod libvirtd;
mod random;
pub use lifeboat_hypervisor::serial_console::SerialConsole;
pub use postgres::{fresh_postgres_database, new_postgres_database, postgres_url};
pub use procs::{cpu_seconds, status_kb, status_number, thread_cpu, ThreadCpu};
pub use random::random_bytes;
pub use sas::{azurite_container_sas, container_sas, SAS_VERSION};
pub use servers::{Azurite, S3Server, AZURITE_ACCOUNT, AZURITE_KEY};

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read, drop).
/// Another process may take it before the caller binds it; tests accept that race.
pub fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind 127.0.0.1:0 to find a free TCP port");
    listener
        .local_addr()
        .expect("local address of a bound socket")
        .port()
}

/// How long a test waits for the guest to boot: 180 s by default, because a busy
/// 2-core machine running TCG can be 10x slower than an idle one; override with
/// `LIFEBOAT_TEST_BOOT_TIMEOUT_SECS`.
pub fn boot_timeout() -> Duration {
    const DEFAULT_SECS: u64 = 180;
    let secs = std::env::var("LIFEBOAT_TEST_BOOT_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs(secs)
}
