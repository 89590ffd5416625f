//! libvirt's calls, each in one small function. They block, so they run on tokio's
//! blocking threads (`with_domain`). The safe `virt` crate has no backup, checkpoint or
//! filesystem-freeze calls yet: those go through its raw `virt-sys` bindings here.

use std::ffi::{CStr, CString};

use crate::error::{HypervisorError, Result};

/// An error of a libvirt call on `domain`.
pub(crate) fn failed(domain: &str, what: &str, reason: impl std::fmt::Display) -> HypervisorError {
    HypervisorError::Unsupported(format!("libvirt domain {domain}: {what}: {reason}"))
}

/// libvirt prints every error to stderr by default, expected ones too ("no domain backup
/// job present" when asking whether one runs); Lifeboat reports the errors it gets.
pub(crate) fn quiet_libvirt() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(virt::error::clear_error_callback);
}

/// Runs `f` with a connection to libvirt at `uri`, on a blocking thread.
pub(crate) async fn with_conn<T: Send + 'static>(
    uri: &str,
    f: impl FnOnce(&virt::connect::Connect) -> Result<T> + Send + 'static,
) -> Result<T> {
    let uri = uri.to_string();
    quiet_libvirt();
    tokio::task::spawn_blocking(move || {
        let conn = virt::connect::Connect::open(Some(&uri)).map_err(|e| {
            HypervisorError::Unsupported(format!(
                "cannot reach libvirt at {uri}: {e} (is libvirtd running? \
                 `virsh -c {uri} list` tells)"
            ))
        })?;
        f(&conn)
    })
    .await
    .map_err(|e| HypervisorError::Unsupported(format!("a libvirt call: {e}")))?
}

/// Domain `name`; one libvirt does not know is `UnknownVm`.
pub(crate) fn lookup(conn: &virt::connect::Connect, name: &str) -> Result<virt::domain::Domain> {
    conn.lookup_domain_by_name(name).map_err(|e| {
        let missing = e.code() == virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoDomain);
        match crate::spec::VmName::new(name) {
            Ok(vm) if missing => HypervisorError::UnknownVm(vm),
            _ => failed(name, "looking it up", e),
        }
    })
}

/// Runs `f` with domain `domain`, on a blocking thread.
pub(crate) async fn with_domain<T: Send + 'static>(
    uri: &str,
    domain: &str,
    f: impl FnOnce(&virt::domain::Domain) -> Result<T> + Send + 'static,
) -> Result<T> {
    let name = domain.to_string();
    with_conn(uri, move |conn| f(&lookup(conn, &name)?)).await
}

pub(crate) fn last_error() -> String {
    virt::error::Error::last_error().to_string()
}

pub(crate) type CallResult<T> = std::result::Result<T, String>;

fn cstring(s: &str) -> CallResult<CString> {
    CString::new(s).map_err(|_| "an argument holds a NUL byte".to_string())
}

/// `virDomainBackupBegin`; `checkpoint` is created atomically with the job.
pub(crate) fn backup_begin(
    dom: &virt::domain::Domain,
    backup: &str,
    checkpoint: Option<&str>,
) -> CallResult<()> {
    let b = cstring(backup)?;
    let c = checkpoint.map(cstring).transpose()?;
    let c_ptr = c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: the domain pointer is live for `dom`'s lifetime; the strings outlive the call.
    let rc = unsafe { virt::sys::virDomainBackupBegin(dom.as_ptr(), b.as_ptr(), c_ptr, 0) };
    if rc < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Whether a backup job runs on the domain (one a dead agent left behind, or one being
/// torn down). Only libvirt's "no domain backup" means none: another error (libvirtd
/// restarting, the connection lost) says nothing either way and is returned.
pub(crate) fn backup_job(dom: &virt::domain::Domain) -> CallResult<bool> {
    // SAFETY: as above; the returned string is ours to free.
    unsafe {
        let xml = virt::sys::virDomainBackupGetXMLDesc(dom.as_ptr(), 0);
        if xml.is_null() {
            let e = virt::error::Error::last_error();
            let none =
                e.code() == virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoDomainBackup);
            return if none { Ok(false) } else { Err(e.to_string()) };
        }
        libc::free(xml.cast());
        Ok(true)
    }
}

/// Ends the domain's backup job (a pull backup runs until told to stop) and waits until
/// libvirt no longer reports it. libvirt tears a backup down after `virDomainAbortJob`
/// returns: a cut begun at once may still see the old job, and aborting it again says
/// "no job is active". Both mean the job is ending, not that it failed to end.
pub(crate) fn end_backup(dom: &virt::domain::Domain) -> CallResult<()> {
    const GONE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);
    // SAFETY: as above.
    let rc = unsafe { virt::sys::virDomainAbortJob(dom.as_ptr()) };
    if rc < 0 {
        let e = virt::error::Error::last_error();
        let no_job =
            e.code() == virt::enumutil::Enum::Known(virt::error::ErrorNumber::OperationInvalid);
        if !no_job {
            return Err(e.to_string());
        }
    }
    let deadline = std::time::Instant::now() + GONE_WITHIN;
    while backup_job(dom)? {
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "the backup job still runs {}s after it was ended",
                GONE_WITHIN.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// QEMU's `announce-self` through libvirt's monitor pass-through: a few RARP frames from
/// every NIC (as after a live migration), the same rounds as the QEMU driver's.
pub(crate) fn announce(dom: &virt::domain::Domain) -> CallResult<()> {
    const ANNOUNCE: &str =
        r#"{"execute":"announce-self","arguments":{"initial":50,"max":550,"rounds":5,"step":100}}"#;
    dom.qemu_monitor_command(ANNOUNCE, 0)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The names of the domain's checkpoints.
pub(crate) fn checkpoints(dom: &virt::domain::Domain) -> CallResult<Vec<String>> {
    let mut list: *mut virt::sys::virDomainCheckpointPtr = std::ptr::null_mut();
    // SAFETY: libvirt fills `list` with `n` checkpoint pointers, each freed once below,
    // and the array itself with `free`.
    unsafe {
        let n = virt::sys::virDomainListAllCheckpoints(dom.as_ptr(), &mut list, 0);
        if n < 0 {
            return Err(last_error());
        }
        let mut names = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            let cp = *list.add(i);
            let name = virt::sys::virDomainCheckpointGetName(cp);
            if !name.is_null() {
                names.push(CStr::from_ptr(name).to_string_lossy().into_owned());
            }
            virt::sys::virDomainCheckpointFree(cp);
        }
        libc::free(list.cast());
        Ok(names)
    }
}

/// Runs `f` on checkpoint `name` of the domain (looked up, and freed after).
fn with_checkpoint<T>(
    dom: &virt::domain::Domain,
    name: &str,
    f: impl FnOnce(virt::sys::virDomainCheckpointPtr) -> CallResult<T>,
) -> CallResult<T> {
    let n = cstring(name)?;
    // SAFETY: the domain pointer is live for `dom`'s lifetime; the checkpoint pointer is
    // used only inside `f` and freed once, here.
    unsafe {
        let cp = virt::sys::virDomainCheckpointLookupByName(dom.as_ptr(), n.as_ptr(), 0);
        if cp.is_null() {
            return Err(format!("looking up checkpoint {name}: {}", last_error()));
        }
        let out = f(cp);
        virt::sys::virDomainCheckpointFree(cp);
        out
    }
}

/// The XML of checkpoint `name` with each disk's bytes written since it (a running
/// domain only).
pub(crate) fn checkpoint_size_xml(dom: &virt::domain::Domain, name: &str) -> CallResult<String> {
    with_checkpoint(dom, name, |cp| {
        // SAFETY: `cp` is live inside `with_checkpoint`; the string is freed once.
        unsafe {
            let xml = virt::sys::virDomainCheckpointGetXMLDesc(
                cp,
                virt::sys::VIR_DOMAIN_CHECKPOINT_XML_SIZE,
            );
            if xml.is_null() {
                return Err(format!("checkpoint {name}: {}", last_error()));
            }
            let text = CStr::from_ptr(xml).to_string_lossy().into_owned();
            libc::free(xml.cast());
            Ok(text)
        }
    })
}

/// Deletes checkpoint `name`: with its bitmaps (libvirt merges them into the parent's),
/// or its metadata only (`metadata_only`: its bitmaps stay in the images), which is what
/// a stopped domain allows.
pub(crate) fn delete_checkpoint(
    dom: &virt::domain::Domain,
    name: &str,
    metadata_only: bool,
) -> CallResult<()> {
    let flags = if metadata_only {
        virt::sys::VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
    } else {
        0
    };
    with_checkpoint(dom, name, |cp| {
        // SAFETY: `cp` is live inside `with_checkpoint`.
        if unsafe { virt::sys::virDomainCheckpointDelete(cp, flags) } < 0 {
            return Err(format!("deleting checkpoint {name}: {}", last_error()));
        }
        Ok(())
    })
}

/// Freezes (`freeze`) or thaws the guest's filesystems through its agent; the number of
/// filesystems.
pub(crate) fn fs_freeze(dom: &virt::domain::Domain, freeze: bool) -> CallResult<u32> {
    // SAFETY: as above; no mount points (all of them).
    let rc = unsafe {
        if freeze {
            virt::sys::virDomainFSFreeze(dom.as_ptr(), std::ptr::null_mut(), 0, 0)
        } else {
            virt::sys::virDomainFSThaw(dom.as_ptr(), std::ptr::null_mut(), 0, 0)
        }
    };
    if rc < 0 {
        return Err(last_error());
    }
    Ok(rc as u32)
}

/// The block job on `disk`, if one runs: (bytes done, bytes in all).
pub(crate) fn block_job(dom: &virt::domain::Domain, disk: &str) -> CallResult<Option<(u64, u64)>> {
    let d = cstring(disk)?;
    let mut info = virt::sys::virDomainBlockJobInfo {
        type_: 0,
        bandwidth: 0,
        cur: 0,
        end: 0,
    };
    // SAFETY: as above; `info` is a plain struct libvirt fills.
    let rc = unsafe { virt::sys::virDomainGetBlockJobInfo(dom.as_ptr(), d.as_ptr(), &mut info, 0) };
    match rc {
        r if r < 0 => Err(last_error()),
        0 => Ok(None),
        _ => Ok(Some((info.cur, info.end))),
    }
}

/// Starts copying `disk`'s backing into it (QEMU's block-stream), at most `bytes_per_sec`
/// (0: no cap); the backing is dropped when it completes.
pub(crate) fn block_pull(
    dom: &virt::domain::Domain,
    disk: &str,
    bytes_per_sec: u64,
) -> CallResult<()> {
    let d = cstring(disk)?;
    let bandwidth = std::os::raw::c_ulong::try_from(bytes_per_sec).unwrap_or(0);
    // SAFETY: as above.
    let rc = unsafe {
        virt::sys::virDomainBlockPull(
            dom.as_ptr(),
            d.as_ptr(),
            bandwidth,
            virt::sys::VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES,
        )
    };
    if rc < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Tells libvirt about a checkpoint whose bitmaps are already in the images (`REDEFINE`):
/// how a stopped domain gets one.
pub(crate) fn redefine_checkpoint(dom: &virt::domain::Domain, xml: &str) -> CallResult<()> {
    let x = cstring(xml)?;
    // SAFETY: as above; the returned checkpoint is freed at once.
    unsafe {
        let cp = virt::sys::virDomainCheckpointCreateXML(
            dom.as_ptr(),
            x.as_ptr(),
            virt::sys::VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE,
        );
        if cp.is_null() {
            return Err(last_error());
        }
        virt::sys::virDomainCheckpointFree(cp);
    }
    Ok(())
}
