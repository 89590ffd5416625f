//! Where the driver keeps each VM's files. Everything about a VM lives in one directory,
//! so a new driver process (after a crash or an upgrade) finds running VMs by reading it:
//!
//! ```text
//! <home>/vms/<name>/spec.toml      the definition
//!                   qemu.pid       written by QEMU (-pidfile)
//!                   qmp.sock       the monitor
//!                   serial.sock    the guest's first serial port
//!                   console.log    everything the guest printed on it
//!                   qemu.log       QEMU's own messages at start
//!                   nbd.sock       the NBD server of an open cut
//!                   fleece-<disk>.qcow2   a cut's copy-before-write overlay
//!                   tracking       the generation of the last committed cut
//!                   cut.lock       held (flock) by the process that has a cut open
//! ```
//!
//! The home, `vms` and every VM's directory are 0700, every file and socket in them 0600
//! (`crate::private`): the fleecing overlays hold disk data, and the sockets drive QEMU.

use std::path::{Path, PathBuf};

use crate::error::{HypervisorError, Result};
use crate::spec::{DiskName, VmName};

/// Unix socket paths are limited to 107 bytes; refuse homes that would overflow it.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone)]
pub struct VmDir {
    pub name: VmName,
    pub dir: PathBuf,
}

impl VmDir {
    pub fn new(home: &Path, name: &VmName) -> Result<VmDir> {
        let dir = home.join("vms").join(name.as_str());
        let d = VmDir {
            name: name.clone(),
            dir,
        };
        let longest = d.serial_socket();
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(HypervisorError::InvalidSpec {
                path: longest.clone(),
                reason: format!(
                    "socket path is {} bytes, longer than the {MAX_SOCKET_PATH} Unix allows; use a shorter --home",
                    longest.as_os_str().len()
                ),
            });
        }
        Ok(d)
    }
    pub fn spec(&self) -> PathBuf {
        self.dir.join("spec.toml")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn serial_socket(&self) -> PathBuf {
        self.dir.join("serial.sock")
    }
    /// The host end of the guest agent's virtio-serial port.
    pub fn guest_agent_socket(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    pub fn nbd_socket(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }
    pub fn fleece_overlay(&self, disk: &DiskName) -> PathBuf {
        self.dir.join(format!("fleece-{disk}.qcow2"))
    }
    pub fn tracking_record(&self) -> PathBuf {
        self.dir.join("tracking")
    }
    /// Present when the VM was failed over elsewhere: it holds why, and the VM must not
    /// start here (see `QemuDriver::fence`).
    pub fn fence_marker(&self) -> PathBuf {
        self.dir.join("fenced")
    }
    pub fn cut_lock(&self) -> PathBuf {
        self.dir.join("cut.lock")
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a crash leaves
/// either the old or the new contents, never half of one. The file is 0600, like
/// everything under the home (`private`).
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = crate::private::open_private(&tmp, true)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| HypervisorError::io("writing", path, e))
}
