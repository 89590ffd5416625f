//! What `qemu-img` tells about a VM's disks while QEMU is not running them.

use std::path::Path;

use serde::Deserialize;

use crate::error::{HypervisorError, Result};
use crate::qemu::commands::BitmapInfo;
use crate::spec::{DiskFormat, VmSpec};
use crate::tracking::{self, DiskTracking};

async fn qemu_img(args: &[&str], path: &Path) -> Result<Vec<u8>> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .arg(path)
        .output()
        .await
        .map_err(|e| HypervisorError::Tool {
            tool: "qemu-img".into(),
            reason: format!("{e} (install qemu-utils)"),
        })?;
    if !out.status.success() {
        return Err(HypervisorError::Tool {
            tool: format!("qemu-img {}", args[0]),
            reason: format!(
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// A fresh qcow2 of `size` bytes with no backing in its header: the cut attaches the
/// live disk as its backing at `blockdev-add` time.
pub async fn create_overlay(path: &Path, size: u64) -> Result<()> {
    let _ = std::fs::remove_file(path);
    create_qcow2(path, size, &[]).await
}

/// `qemu-img create -f qcow2 [extra…] PATH SIZE`, its error said in full. The image will
/// hold disk data, so it is 0600 from its first instant: made empty here, it keeps its
/// mode when `qemu-img` (which would use the umask) writes it in place.
pub async fn create_qcow2(path: &Path, size: u64, extra: &[&str]) -> Result<()> {
    crate::private::open_private(path, true)
        .map_err(|e| HypervisorError::io("creating", path, e))?;
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .args(extra)
        .arg(path)
        .arg(size.to_string())
        .output()
        .await
        .map_err(|e| HypervisorError::Tool {
            tool: "qemu-img create".into(),
            reason: format!("{e} (install qemu-utils)"),
        })?;
    if !out.status.success() {
        return Err(HypervisorError::Tool {
            tool: "qemu-img create".into(),
            reason: format!(
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

#[derive(Deserialize)]
struct Info {
    #[serde(rename = "format-specific", default)]
    format_specific: Option<FormatSpecific>,
}
#[derive(Deserialize)]
struct FormatSpecific {
    data: FormatData,
}
#[derive(Deserialize)]
struct FormatData {
    #[serde(default)]
    bitmaps: Vec<OfflineBitmap>,
}
#[derive(Deserialize)]
struct OfflineBitmap {
    name: String,
    granularity: u32,
    flags: Vec<String>,
}

/// Tracking state of a stopped VM's disks, from the bitmaps stored in its qcow2 files.
/// `in-use` means the image was not closed cleanly since the bitmap was loaded.
pub async fn per_disk_tracking(spec: &VmSpec) -> Result<Vec<(String, DiskTracking)>> {
    let mut out = Vec::new();
    for d in &spec.disks {
        // Always `-f` the spec's format: never a format guessed from what a guest wrote.
        let bitmaps: Vec<BitmapInfo> = if d.format == DiskFormat::Qcow2 {
            let json = qemu_img(&["info", "-U", "--output=json", "-f", "qcow2"], &d.path).await?;
            let info: Info = serde_json::from_slice(&json).map_err(|e| HypervisorError::Tool {
                tool: "qemu-img info".into(),
                reason: e.to_string(),
            })?;
            info.format_specific
                .map(|f| f.data.bitmaps)
                .unwrap_or_default()
                .into_iter()
                .map(|b| BitmapInfo {
                    recording: b.flags.iter().any(|f| f == "auto"),
                    inconsistent: b.flags.iter().any(|f| f == "in-use"),
                    name: b.name,
                    granularity: b.granularity,
                    count: 0,
                    busy: false,
                    persistent: true,
                })
                .collect()
        } else {
            Vec::new()
        };
        out.push((
            d.name.to_string(),
            tracking::disk_tracking(d.name.as_str(), &bitmaps),
        ));
    }
    Ok(out)
}

impl crate::qemu::QemuDriver {
    /// Starts a stopped VM's tracking afresh: every Lifeboat bitmap of its qcow2 disks
    /// removed (consistent or not), a new recording `lifeboat-1` added, and the tracking
    /// record set to generation 1. For disks just made equal to a point (a recovered VM
    /// before its first boot, home after a failback): changes count from here.
    pub(crate) async fn track_afresh_offline(&self, vm: &crate::spec::VmName) -> Result<()> {
        let dir = self.vm_dir(vm)?;
        if crate::qemu::process::read_live_pid(&dir).is_some() {
            return Err(HypervisorError::WrongState {
                vm: vm.clone(),
                state: "running".into(),
                what: "stop it before its tracking is restarted".into(),
            });
        }
        let spec = VmSpec::load(&dir.spec())?;
        for d in spec.disks.iter().filter(|d| d.format == DiskFormat::Qcow2) {
            restart_bitmaps(&d.path, &tracking::bitmap_name(1)).await?;
        }
        crate::qemu::record::write(&dir, crate::qemu::record::Record::Active(1))
    }
}

/// Removes every Lifeboat bitmap of a qcow2 image that no process has open (consistent or
/// not) and adds a recording one named `name`: tracking of that disk starts afresh.
pub(crate) async fn restart_bitmaps(path: &Path, name: &str) -> Result<()> {
    let json = qemu_img(&["info", "-U", "--output=json", "-f", "qcow2"], path).await?;
    let info: Info = serde_json::from_slice(&json).map_err(|e| HypervisorError::Tool {
        tool: "qemu-img info".into(),
        reason: e.to_string(),
    })?;
    let ours = info
        .format_specific
        .map(|f| f.data.bitmaps)
        .unwrap_or_default()
        .into_iter()
        .filter(|b| tracking::parse_generation(&b.name).is_some());
    for b in ours {
        qemu_img_bitmap(&["--remove"], path, &b.name).await?;
    }
    qemu_img_bitmap(&["--add", "--enable"], path, name).await
}

async fn qemu_img_bitmap(op: &[&str], path: &Path, name: &str) -> Result<()> {
    let out = tokio::process::Command::new("qemu-img")
        .arg("bitmap")
        .args(op)
        .args(["-f", "qcow2"])
        .arg(path)
        .arg(name)
        .output()
        .await
        .map_err(|e| HypervisorError::Tool {
            tool: "qemu-img bitmap".into(),
            reason: format!("{e} (install qemu-utils)"),
        })?;
    if !out.status.success() {
        return Err(HypervisorError::Tool {
            tool: format!("qemu-img bitmap {}", op[0]),
            reason: format!(
                "{} {name}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}
