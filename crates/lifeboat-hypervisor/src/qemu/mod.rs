//! The QEMU driver: one `qemu-system-x86_64` process per running VM, driven over QMP,
//! with cuts read over NBD.

pub mod bridge;
pub mod commands;
pub mod cut;
pub mod driver;
pub mod guest_agent;
pub mod hydrate;
pub mod layout;
pub mod offline;
pub mod placement;
pub mod process;
pub mod qmp;
mod record;
mod teardown;

pub use driver::{QemuConfig, QemuDriver};
pub use process::Accel;
