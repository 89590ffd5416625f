//! `LibvirtDriver`: the `Hypervisor` for a libvirt host, protecting the domains its
//! administrator already has without redefining them. Inventory and state come from
//! libvirt's API; cuts from libvirt's pull-mode backup job along a checkpoint chain
//! (`tracking`); app-consistent points from the guest agent through libvirt; every
//! point carries the domain's XML besides the neutral spec.
//!
//! What the driver keeps of its own, per domain, is in its state folder (private to the
//! agent): the tracking record, and markers for a fenced, held or frozen domain. The
//! backup job's NBD socket and scratch images go to a work folder libvirt's QEMU (its own
//! user) may write, under `work_root`.
//!
//! A recovered VM is defined from its point's neutral spec with the firmware, machine
//! and type of the stored XML (`define`), runs on local overlays over the point served
//! by the agent, and hydrates through libvirt's block pull.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{HypervisorError, Result};
use crate::hypervisor::{
    Cut, CutDisk, CutKind, DiskHydration, DiskInfo, Extent, Hypervisor, ShutdownOutcome, VmInfo,
    VmState,
};
use crate::libvirt::backup::{BackupRequest, LibvirtCut};
use crate::libvirt::call::{self, failed};
use crate::libvirt::domain_xml::{self, DiskSource, DomainDescription, NicSource};
use crate::libvirt::tracking::{self, Record};
use crate::libvirt::{define, fence};
use crate::spec::{DiskFormat, DiskName, DiskSpec, NetworkKind, NicSpec, VmName, VmSpec};
use crate::tracking::{bitmap_name, TrackingStatus};

#[derive(Debug, Clone)]
pub struct LibvirtConfig {
    /// libvirt's connection URI (`qemu:///system`).
    pub uri: String,
    /// Where the driver keeps its records (private).
    pub state_dir: PathBuf,
    /// Where each domain's backup job puts its NBD socket and scratch images: a folder
    /// libvirt's QEMU may reach. Default `/var/lib/libvirt/lifeboat`.
    pub work_root: PathBuf,
    /// The uid and gid libvirt runs QEMU as, who must write the work folder (Debian's
    /// `libvirt-qemu`, Fedora's `qemu`); `None`: QEMU runs as root.
    pub qemu_owner: Option<(u32, u32)>,
    pub io_timeout: Duration,
    /// The domain type recovered VMs are defined with (`kvm`, or `qemu` for TCG); `None`:
    /// the source domain's, else `kvm` where /dev/kvm exists.
    pub domain_type: Option<String>,
}

impl LibvirtConfig {
    /// The defaults for the system libvirt, with records under `home/libvirt`.
    pub fn new(home: &Path) -> LibvirtConfig {
        LibvirtConfig {
            uri: crate::libvirt::SYSTEM_URI.into(),
            state_dir: home.join("libvirt"),
            work_root: "/var/lib/libvirt/lifeboat".into(),
            qemu_owner: ["libvirt-qemu", "qemu"].into_iter().find_map(user_ids),
            io_timeout: Duration::from_secs(60),
            domain_type: None,
        }
    }
}

/// A user's uid and gid from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

#[derive(Clone)]
pub struct LibvirtDriver {
    config: Arc<LibvirtConfig>,
    /// Each recovered disk's size (`VM/disk`), asked of libvirt once while no pull runs
    /// (see `hydrate`).
    disk_sizes: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

/// What one visit to libvirt sees of a domain for its tracking and cuts.
struct Look {
    spec: VmSpec,
    /// Our checkpoints' generations, oldest first.
    gens: Vec<u64>,
    /// Each disk of the spec with its size in bytes (for a cut).
    sizes: Vec<(DiskName, u64)>,
    /// Bytes the newest checkpoint has seen written (for the status).
    dirty: u64,
}

impl Look {
    /// The generation a fresh chain starts at: past every checkpoint and record seen, so
    /// a name is never reused.
    fn next_generation(&self, recorded: Option<u64>) -> u64 {
        self.gens.iter().copied().chain(recorded).max().unwrap_or(0) + 1
    }
}

/// What a visit to libvirt is for: a cut ends a backup job a dead agent left and needs
/// the disks' sizes; a status wants the bytes written since the last cut.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Cut,
    Status,
}

/// The spec of the domain, from its persistent XML (`--inactive`), as stored with each
/// point.
fn spec_from(dom: &virt::domain::Domain, vm: &VmName) -> Result<VmSpec> {
    let name = vm.as_str();
    let xml = dom
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .map_err(|e| failed(name, "reading its XML", e))?;
    let description = domain_xml::parse(&xml).map_err(|e| failed(name, "reading its XML", e))?;
    spec_of(vm, &description, &xml)
}

impl LibvirtDriver {
    /// libvirt's active virtual networks: (name, the host bridge it runs on).
    pub async fn networks(&self) -> Result<Vec<(String, String)>> {
        call::with_conn(&self.config.uri, |conn| {
            let names = conn.list_networks().map_err(|e| {
                HypervisorError::Unsupported(format!("listing libvirt networks: {e}"))
            })?;
            Ok(names
                .into_iter()
                .filter_map(|name| {
                    let bridge = conn
                        .lookup_network_by_name(&name)
                        .ok()?
                        .bridge_name()
                        .ok()?;
                    Some((name, bridge))
                })
                .collect())
        })
        .await
    }

    pub fn new(config: LibvirtConfig) -> Result<LibvirtDriver> {
        call::quiet_libvirt();
        crate::private::private_dir(&config.state_dir)
            .map_err(|e| HypervisorError::io("creating", &config.state_dir, e))?;
        // libvirt's QEMU user must pass through these to its own folders below; nobody
        // may list them.
        for dir in [config.work_root.clone(), config.work_root.join("recovered")] {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::create_dir_all(&dir).is_ok() {
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711));
            }
        }
        Ok(LibvirtDriver {
            config: Arc::new(config),
            disk_sizes: Default::default(),
        })
    }

    pub fn config(&self) -> &LibvirtConfig {
        &self.config
    }

    /// Recovered VMs live under the work root, reachable by libvirt's QEMU user, who gets
    /// each one's folder and sockets.
    pub fn recovery_place(&self) -> crate::driver::RecoveryPlace {
        crate::driver::RecoveryPlace {
            root: self.config.work_root.join("recovered"),
            owner: self.config.qemu_owner,
        }
    }

    /// The bridge with no uplink a test copy's isolated NICs go on.
    fn isolated_bridge(vm: &VmName) -> String {
        format!("lbi{:08x}", crate::qemu::bridge::name_hash(vm))
    }

    fn state_dir(&self, vm: &VmName) -> PathBuf {
        self.config.state_dir.join(vm.as_str())
    }

    fn marker(&self, vm: &VmName, name: &str) -> PathBuf {
        self.state_dir(vm).join(name)
    }

    fn set_marker(&self, vm: &VmName, name: &str, text: &str) -> Result<()> {
        let dir = self.state_dir(vm);
        crate::private::private_dir(&dir).map_err(|e| HypervisorError::io("creating", &dir, e))?;
        crate::qemu::layout::write_atomically(&dir.join(name), text.as_bytes())
    }

    fn clear_marker(&self, vm: &VmName, name: &str) {
        let _ = std::fs::remove_file(self.marker(vm, name));
    }

    fn record(&self, vm: &VmName) -> Record {
        Record::new(self.state_dir(vm))
    }

    fn fenced(&self, vm: &VmName) -> Option<String> {
        std::fs::read_to_string(self.marker(vm, "fenced"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Why the domain is fenced: the marker's reason, or the fence found in its XML
    /// when the marker is gone (a lost agent home).
    fn fenced_why(&self, vm: &VmName, xml: &str) -> Option<String> {
        self.fenced(vm).or_else(|| {
            fence::is_fenced(xml).then(|| {
                "fenced by Lifeboat (its definition carries the fence; the reason was lost)"
                    .to_string()
            })
        })
    }

    /// Runs `f` with `vm`'s domain; a domain libvirt does not know is `UnknownVm`.
    async fn domain<T: Send + 'static>(
        &self,
        vm: &VmName,
        f: impl FnOnce(&virt::domain::Domain) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        call::with_domain(&self.config.uri, vm.as_str(), f).await
    }

    /// One visit to libvirt: the domain's spec and checkpoints, and what `purpose` needs.
    async fn look(&self, vm: &VmName, purpose: Purpose) -> Result<Look> {
        let vm = vm.clone();
        self.domain(&vm.clone(), move |dom| {
            let name = vm.as_str();
            let stale = purpose == Purpose::Cut
                && call::backup_job(dom).map_err(|e| failed(name, "asking for a backup job", e))?;
            if stale {
                tracing::warn!(domain = %name, "ending a backup job left by an agent that died");
                call::end_backup(dom).map_err(|e| failed(name, "ending a stale backup", e))?;
            }
            let spec = spec_from(dom, &vm)?;
            let names = call::checkpoints(dom).map_err(|e| failed(name, "checkpoints", e))?;
            let gens = tracking::generations(&names);
            let mut sizes = Vec::new();
            let mut dirty = 0;
            match purpose {
                Purpose::Cut => {
                    for d in &spec.disks {
                        let info = dom.block_info(d.name.as_str(), 0).map_err(|e| {
                            failed(name, &format!("the size of disk {}", d.name), e)
                        })?;
                        sizes.push((d.name.clone(), info.capacity));
                    }
                }
                // What the newest checkpoint has seen written (a running domain only).
                Purpose::Status => {
                    dirty = gens
                        .last()
                        .and_then(|g| call::checkpoint_size_xml(dom, &bitmap_name(*g)).ok())
                        .map(|xml| checkpoint_size(&xml))
                        .unwrap_or(0);
                }
            }
            Ok(Look {
                spec,
                gens,
                sizes,
                dirty,
            })
        })
        .await
    }

    /// Tracking as the domain's checkpoints and the record say.
    fn status(&self, vm: &VmName, look: &Look) -> TrackingStatus {
        let record = self.record(vm);
        let checkpointable = look
            .spec
            .disks
            .iter()
            .any(|d| d.format == DiskFormat::Qcow2);
        tracking::status(
            record.generation(),
            record.broken(),
            &look.gens,
            checkpointable,
            look.dirty,
        )
    }

    /// The domain's work folder for backup jobs, made for libvirt's QEMU to write.
    fn work_dir(&self, vm: &VmName) -> Result<PathBuf> {
        let dir = self.config.work_root.join(vm.as_str());
        std::fs::create_dir_all(&dir).map_err(|e| HypervisorError::io("creating", &dir, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| HypervisorError::io("making private", &dir, e))?;
        if let Some((uid, gid)) = self.config.qemu_owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| HypervisorError::io("handing to libvirt's QEMU user", &dir, e))?;
        }
        Ok(dir)
    }

    async fn delete_checkpoints(&self, vm: &VmName, gens: Vec<u64>) -> Result<()> {
        let name = vm.to_string();
        self.domain(vm, move |dom| {
            // Newest first: each deletion merges into a parent that is deleted next.
            for g in gens.into_iter().rev() {
                call::delete_checkpoint(dom, &bitmap_name(g), false)
                    .map_err(|e| failed(&name, "checkpoints", e))?;
            }
            Ok(())
        })
        .await
    }

    /// Starts the backup job: a new checkpoint `new`, changes counted from `since` (an
    /// incremental cut) or everything (full); the cut closes generation `generation`.
    async fn begin(
        &self,
        vm: &VmName,
        look: Look,
        new: u64,
        since: Option<u64>,
        generation: u64,
    ) -> Result<DomainCut> {
        let whole: Vec<DiskName> = look
            .spec
            .disks
            .iter()
            .filter(|d| d.format != DiskFormat::Qcow2)
            .map(|d| d.name.clone())
            .collect();
        let checkpointable = whole.len() < look.spec.disks.len();
        if since.is_some() && !checkpointable {
            return Err(HypervisorError::NeedsFullResync {
                vm: vm.clone(),
                reason: "no disk can carry a checkpoint".into(),
            });
        }
        let work_dir = self.work_dir(vm)?;
        let inner = LibvirtCut::begin(BackupRequest {
            uri: &self.config.uri,
            domain: vm,
            disks: look
                .sizes
                .into_iter()
                .map(|(name, size)| CutDisk { name, size })
                .collect(),
            checkpoint: checkpointable.then(|| bitmap_name(new)),
            since: since.map(bitmap_name),
            whole,
            work_dir,
            io_timeout: self.config.io_timeout,
        })
        .await?;
        Ok(DomainCut {
            inner,
            record: self.record(vm),
            generation,
            commits: new,
        })
    }
}

/// Makes the bridge a test copy's isolated NICs go on: no address, no uplink, nothing
/// else plugged in. Already there is fine (a retried recovery).
async fn isolated_bridge_up(bridge: &str) -> Result<()> {
    if !Path::new("/sys/class/net").join(bridge).exists() {
        let add = ["link", "add", bridge, "type", "bridge"];
        crate::qemu::bridge::run_ip(&add).await?;
    }
    crate::qemu::bridge::run_ip(&["link", "set", bridge, "up"]).await
}

/// Defines domain `name` again from its persistent XML as `edit` changes it (secrets
/// kept: the XML is read with them, so a VNC password survives). Nothing is written when
/// `edit` changes nothing.
fn redefine(
    conn: &virt::connect::Connect,
    name: &str,
    edit: impl FnOnce(&str) -> std::result::Result<String, String>,
) -> Result<()> {
    let dom = call::lookup(conn, name)?;
    let xml = dom
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE | virt::sys::VIR_DOMAIN_XML_SECURE)
        .map_err(|e| failed(name, "reading its XML", e))?;
    let new = edit(&xml).map_err(|e| failed(name, "editing its XML", e))?;
    if new != xml {
        conn.define_domain_xml(&new)
            .map_err(|e| failed(name, "redefining it", e))?;
    }
    Ok(())
}

/// The bytes a checkpoint's disks have seen written (`<disk size=…>`, from
/// `VIR_DOMAIN_CHECKPOINT_XML_SIZE`).
fn checkpoint_size(xml: &str) -> u64 {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return 0;
    };
    doc.descendants()
        .filter(|n| n.has_tag_name("disk") && n.parent().is_some_and(|p| p.has_tag_name("disks")))
        .filter_map(|n| n.attribute("size")?.parse::<u64>().ok())
        .sum()
}

/// A disk's format as Lifeboat reads it, from `<driver type=…>`; `None` for formats it
/// does not read (vmdk, vdi…).
fn disk_format(driver_type: Option<&str>) -> Option<DiskFormat> {
    match driver_type {
        Some("qcow2") => Some(DiskFormat::Qcow2),
        // libvirt's default format is raw.
        Some("raw") | None => Some(DiskFormat::Raw),
        Some(_) => None,
    }
}

/// The neutral spec of a domain, with its XML: what a point stores so any driver can
/// bring it up. Disks Lifeboat cannot read (network disks, images in other formats) and
/// values out of a spec's range are refused with the reason.
pub fn spec_of(vm: &VmName, d: &DomainDescription, xml: &str) -> Result<VmSpec> {
    let invalid = |reason: String| HypervisorError::InvalidSpec {
        path: PathBuf::from(format!("libvirt domain {vm}")),
        reason,
    };
    let mut disks = Vec::new();
    for disk in d.disks.iter().filter(|disk| !disk.read_only) {
        let name = DiskName::new(&disk.target).map_err(|e| invalid(format!("disk: {e}")))?;
        let path = match &disk.source {
            DiskSource::File { path } => path.clone(),
            DiskSource::Block { device } => device.clone(),
            DiskSource::Other { kind } => {
                return Err(invalid(format!(
                    "disk {name} is a {kind} disk; Lifeboat protects file and block-device disks"
                )))
            }
        };
        let format = disk_format(disk.format.as_deref()).ok_or_else(|| {
            invalid(format!(
                "disk {name} is a {} image; Lifeboat protects qcow2 and raw disks",
                disk.format.as_deref().unwrap_or_default()
            ))
        })?;
        disks.push(DiskSpec { name, path, format });
    }
    let nics = d
        .nics
        .iter()
        .map(|n| {
            let network = match &n.source {
                NicSource::Bridge(b) => format!("bridge:{b}"),
                NicSource::Network(net) => format!("network:{net}"),
                NicSource::Other(kind) => {
                    return Err(invalid(format!(
                        "a NIC of type {kind:?}; Lifeboat moves bridge and network NICs"
                    )))
                }
            };
            Ok(NicSpec {
                mac: n
                    .mac
                    .clone()
                    .ok_or_else(|| invalid("a NIC without a MAC address".into()))?,
                network,
                host_forwards: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let spec = VmSpec {
        name: vm.clone(),
        uuid: d.uuid,
        memory_mib: u32::try_from(d.memory_mib).unwrap_or(u32::MAX),
        vcpus: d.vcpus,
        disks,
        nics,
        boot_order: Vec::new(),
        libvirt_xml: Some(xml.to_string()),
        seed: None,
    };
    spec.check().map_err(invalid)?;
    Ok(spec)
}

/// A cut through libvirt's backup job that records its checkpoint when committed.
pub struct DomainCut {
    inner: LibvirtCut,
    record: Record,
    generation: u64,
    /// The generation the record says once this cut is committed.
    commits: u64,
}

impl Cut for DomainCut {
    fn kind(&self) -> CutKind {
        self.inner.kind()
    }
    fn generation(&self) -> u64 {
        self.generation
    }
    fn disks(&self) -> &[CutDisk] {
        self.inner.disks()
    }
    async fn changed_extents(&self, disk: &DiskName) -> Result<Vec<Extent>> {
        self.inner.changed_extents(disk).await
    }
    async fn read(&self, disk: &DiskName, offset: u64, length: u32) -> Result<bytes::Bytes> {
        self.inner.read(disk, offset, length).await
    }
    async fn commit(self) -> Result<()> {
        self.inner.commit().await?;
        self.record.set_generation(self.commits)
    }
    async fn abort(self) -> Result<()> {
        self.inner.abort().await
    }
}

impl Hypervisor for LibvirtDriver {
    type Cut = DomainCut;

    /// Defines a recovered VM: the domain written from its spec (`define::domain_xml`),
    /// its serial console in the folder of its disks, test copies on a bridge of their own.
    async fn define(&self, spec: VmSpec) -> Result<VmSpec> {
        let invalid = |reason: String| HypervisorError::InvalidSpec {
            path: PathBuf::from(format!("recovered VM {}", spec.name)),
            reason,
        };
        let stored = spec
            .libvirt_xml
            .as_deref()
            .and_then(|x| domain_xml::parse(x).ok());
        let domain_type = self
            .config
            .domain_type
            .clone()
            .or_else(|| stored.as_ref().and_then(|d| d.domain_type.clone()))
            .unwrap_or_else(|| {
                if Path::new("/dev/kvm").exists() {
                    "kvm".into()
                } else {
                    "qemu".into()
                }
            });
        let folder = spec
            .disks
            .first()
            .and_then(|d| d.path.parent())
            .ok_or_else(|| invalid("no disk".into()))?
            .to_path_buf();
        let serial = folder.join("serial.sock");
        // An isolated NIC with exposed ports is a restricted user network instead
        // (`define`): the bridge is for the others.
        let isolated = spec
            .nics
            .iter()
            .any(|n| n.network == "isolated" && n.host_forwards.is_empty())
            .then(|| Self::isolated_bridge(&spec.name));
        let xml = define::domain_xml(
            &spec,
            stored.as_ref(),
            &define::Placement {
                domain_type: &domain_type,
                isolated_bridge: isolated.as_deref(),
                serial_socket: &serial,
                console_log: &folder.join("console.log"),
            },
        )
        .map_err(invalid)?;
        if let Some(bridge) = &isolated {
            isolated_bridge_up(bridge).await?;
        }
        let name = spec.name.clone();
        call::with_conn(&self.config.uri, move |conn| {
            if conn.lookup_domain_by_name(name.as_str()).is_ok() {
                return Err(HypervisorError::AlreadyDefined(name));
            }
            conn.define_domain_xml(&xml)
                .map_err(|e| failed(name.as_str(), "defining it", e))?;
            Ok(())
        })
        .await?;
        Ok(spec)
    }
    async fn undefine(&self, vm: &VmName) -> Result<()> {
        let name = vm.to_string();
        self.domain(vm, move |dom| {
            if dom.is_active().unwrap_or(false) {
                dom.destroy().map_err(|e| failed(&name, "stopping it", e))?;
            }
            dom.undefine_flags(
                virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM
                    | virt::sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
            )
            .map_err(|e| failed(&name, "undefining it", e))?;
            Ok(())
        })
        .await?;
        // A VM of that name later may have other disks.
        let prefix = format!("{vm}/");
        self.disk_sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !k.starts_with(&prefix));
        let bridge = Self::isolated_bridge(vm);
        if Path::new("/sys/class/net").join(&bridge).exists() {
            let _ = tokio::process::Command::new("ip")
                .args(["link", "del", &bridge])
                .output()
                .await;
        }
        let _ = std::fs::remove_dir_all(self.state_dir(vm));
        Ok(())
    }
    async fn spec(&self, vm: &VmName) -> Result<VmSpec> {
        let vm = vm.clone();
        self.domain(&vm.clone(), move |dom| spec_from(dom, &vm))
            .await
    }
    async fn start(&self, vm: &VmName) -> Result<()> {
        self.refuse_fenced(vm)?;
        let name = vm.to_string();
        let v = vm.clone();
        self.domain(vm, move |dom| {
            dom.create().map_err(|e| failed(&name, "starting it", e))?;
            // As the QEMU driver does: switches learn at once where a moved VM's MACs
            // are (a stretched subnet, docs/networking.md). libvirt has no call for it;
            // its monitor pass-through marks the domain "custom-monitor" in its log.
            let bridged = spec_from(dom, &v).is_ok_and(|spec| {
                spec.nics.iter().any(|n| {
                    matches!(
                        NetworkKind::parse(&n.network),
                        Some(NetworkKind::Bridge(_) | NetworkKind::LibvirtNetwork(_))
                    )
                })
            });
            if bridged {
                if let Err(e) = call::announce(dom) {
                    tracing::warn!(domain = %name, error = %e, "announcing the domain's NICs failed");
                }
            }
            Ok(())
        })
        .await?;
        self.clear_marker(vm, "held");
        Ok(())
    }
    async fn start_held(&self, vm: &VmName) -> Result<()> {
        self.refuse_fenced(vm)?;
        self.set_marker(vm, "held", "")?;
        let name = vm.to_string();
        let started = self
            .domain(vm, move |dom| {
                dom.create_with_flags(virt::sys::VIR_DOMAIN_START_PAUSED)
                    .map_err(|e| failed(&name, "starting it paused", e))?;
                Ok(())
            })
            .await;
        if started.is_err() {
            // Not held: a domain paused later by its administrator is not a held one.
            self.clear_marker(vm, "held");
        }
        started
    }
    async fn fence(&self, vm: &VmName, why: &str) -> Result<bool> {
        self.set_marker(vm, "fenced", why)?;
        let name = vm.to_string();
        call::with_conn(&self.config.uri, move |conn| {
            let dom = call::lookup(conn, &name)?;
            // Autostart would bring it back at the next boot of the host or libvirtd.
            if let Err(e) = dom.set_autostart(false) {
                tracing::warn!(domain = %name, "turning autostart off: {e}");
            }
            let running = dom.is_active().unwrap_or(false);
            if running {
                dom.destroy().map_err(|e| failed(&name, "stopping it", e))?;
            }
            redefine(conn, &name, fence::add_fence)?;
            Ok(running)
        })
        .await
    }
    async fn unfence(&self, vm: &VmName) -> Result<()> {
        let name = vm.to_string();
        call::with_conn(&self.config.uri, move |conn| {
            redefine(conn, &name, |xml| {
                Ok(fence::remove_fence(xml).unwrap_or_else(|| xml.to_string()))
            })
        })
        .await?;
        self.clear_marker(vm, "fenced");
        Ok(())
    }
    async fn set_seed(&self, vm: &VmName, seed: Option<std::path::PathBuf>) -> Result<()> {
        let name = vm.to_string();
        call::with_conn(&self.config.uri, move |conn| {
            redefine(conn, &name, |xml| {
                crate::libvirt::define::with_seed(xml, seed.as_deref())
            })
        })
        .await
    }
    async fn shutdown(&self, vm: &VmName, timeout: Duration) -> Result<ShutdownOutcome> {
        match self.state(vm).await? {
            VmState::Stopped => return Ok(ShutdownOutcome::AlreadyStopped),
            // CPUs that do not run cannot answer the power button.
            VmState::Paused(_) => {
                self.kill(vm).await?;
                return Ok(ShutdownOutcome::Forced);
            }
            _ => {}
        }
        let name = vm.to_string();
        self.domain(vm, move |dom| {
            // The power button, as the QEMU driver presses it: not the guest agent's
            // shutdown, which libvirt would try first and which skips the guest's ACPI
            // handler.
            dom.shutdown_flags(virt::sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                .map_err(|e| failed(&name, "shutting it down", e))?;
            Ok(())
        })
        .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.state(vm).await? == VmState::Stopped {
                return Ok(ShutdownOutcome::GuestPoweredOff);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!(vm = %vm, "guest did not power off in {timeout:?}; stopping the domain");
        self.kill(vm).await?;
        Ok(ShutdownOutcome::Forced)
    }
    async fn kill(&self, vm: &VmName) -> Result<()> {
        let name = vm.to_string();
        self.domain(vm, move |dom| {
            if dom.is_active().unwrap_or(false) {
                dom.destroy().map_err(|e| failed(&name, "stopping it", e))?;
            }
            Ok(())
        })
        .await?;
        self.clear_marker(vm, "held");
        Ok(())
    }
    async fn state(&self, vm: &VmName) -> Result<VmState> {
        let name = vm.to_string();
        let state = self
            .domain(vm, move |dom| {
                let (s, _) = dom
                    .state()
                    .map_err(|e| failed(&name, "reading its state", e))?;
                Ok(crate::libvirt::inventory::vm_state(s))
            })
            .await?;
        Ok(match state {
            // Started with its CPUs held for a final cut: QEMU's word for it.
            VmState::Paused(_) if self.marker(vm, "held").exists() => {
                VmState::Paused(VmState::HELD.into())
            }
            VmState::Stopped => {
                self.clear_marker(vm, "held");
                VmState::Stopped
            }
            other => other,
        })
    }
    async fn list(&self) -> Result<Vec<VmInfo>> {
        let domains = crate::libvirt::inventory::list(&self.config.uri)
            .await
            .map_err(|e| HypervisorError::Unsupported(e.to_string()))?;
        let mut out = Vec::new();
        for d in domains {
            let Ok(name) = VmName::new(&d.description.name) else {
                tracing::warn!(
                    domain = %d.description.name,
                    "libvirt domain not listed: Lifeboat names VMs with lowercase letters, \
                     digits and '-' (rename it with `virsh domrename`)"
                );
                continue;
            };
            let mut disks = Vec::new();
            for disk in &d.description.disks {
                // Network disks and unknown formats are listed by the spec's refusal.
                let (path, Some(format)) = (
                    match &disk.source {
                        DiskSource::File { path } | DiskSource::Block { device: path } => {
                            path.clone()
                        }
                        DiskSource::Other { .. } => continue,
                    },
                    disk_format(disk.format.as_deref()),
                ) else {
                    continue;
                };
                let Ok(disk_name) = DiskName::new(&disk.target) else {
                    continue;
                };
                let (virtual_size, allocated_size) =
                    crate::qemu::driver::image_sizes(&path, format)
                        .await
                        .unwrap_or((0, 0));
                disks.push(DiskInfo {
                    name: disk_name,
                    path,
                    format,
                    virtual_size,
                    allocated_size,
                });
            }
            let nics = spec_of(&name, &d.description, &d.xml)
                .map(|s| s.nics)
                .unwrap_or_default();
            out.push(VmInfo {
                fenced: self.fenced_why(&name, &d.xml),
                name,
                uuid: d.description.uuid,
                state: d.state,
                memory_mib: u32::try_from(d.description.memory_mib).unwrap_or(u32::MAX),
                vcpus: d.description.vcpus,
                disks,
                nics,
            });
        }
        Ok(out)
    }
    async fn tracking_status(&self, vm: &VmName) -> Result<TrackingStatus> {
        let look = self.look(vm, Purpose::Status).await?;
        Ok(self.status(vm, &look))
    }
    async fn begin_full_cut(&self, vm: &VmName) -> Result<DomainCut> {
        // A full cut starts the chain afresh: whatever checkpoints we had go.
        let look = self.look(vm, Purpose::Cut).await?;
        let record = self.record(vm);
        let next = look.next_generation(record.generation());
        self.delete_checkpoints(vm, look.gens.clone()).await?;
        record.clear()?;
        self.begin(vm, look, next, None, next).await
    }
    async fn begin_incremental_cut(&self, vm: &VmName) -> Result<DomainCut> {
        let look = self.look(vm, Purpose::Cut).await?;
        let g = match self.status(vm, &look) {
            TrackingStatus::Tracking { generation, .. } => generation,
            TrackingStatus::CutOpen { generation } => {
                // The open cut's new checkpoint goes; its changes merge back into `g`.
                let open: Vec<u64> = look
                    .gens
                    .iter()
                    .copied()
                    .filter(|x| *x > generation)
                    .collect();
                self.delete_checkpoints(vm, open).await?;
                generation
            }
            TrackingStatus::NotTracking => {
                return Err(HypervisorError::NotTracking { vm: vm.clone() })
            }
            TrackingStatus::NeedsFullResync { reason } => {
                return Err(HypervisorError::NeedsFullResync {
                    vm: vm.clone(),
                    reason,
                })
            }
        };
        let record = self.record(vm);
        if record.generation() != Some(g) {
            record.set_generation(g)?;
        }
        match self.begin(vm, look, g + 1, Some(g), g).await {
            Ok(cut) => Ok(cut),
            Err(e) => {
                // libvirt refusing a backup from our checkpoint (a bitmap QEMU lost or
                // marked inconsistent) must not be retried forever: resync next time.
                let _ = record.set_broken(&format!(
                    "an incremental backup from checkpoint {} failed: {e}",
                    bitmap_name(g)
                ));
                Err(e)
            }
        }
    }
    async fn reset_tracking(&self, vm: &VmName) -> Result<()> {
        let look = self.look(vm, Purpose::Cut).await?;
        self.delete_checkpoints(vm, look.gens).await?;
        self.record(vm).clear()
    }
    /// libvirt creates checkpoints of running domains only; a stopped one gets its
    /// bitmaps written into its qcow2 images (`qemu-img bitmap`) and the checkpoint
    /// redefined over them, so the next sync is incremental from here.
    async fn track_afresh(&self, vm: &VmName) -> Result<()> {
        if self.state(vm).await? != VmState::Stopped {
            return Err(HypervisorError::WrongState {
                vm: vm.clone(),
                state: "running".into(),
                what: "stop it before its tracking is restarted".into(),
            });
        }
        let look = self.look(vm, Purpose::Status).await?;
        let name = vm.to_string();
        let gens = look.gens.clone();
        self.domain(vm, move |dom| {
            for g in &gens {
                call::delete_checkpoint(dom, &bitmap_name(*g), true)
                    .map_err(|e| failed(&name, "checkpoints", e))?;
            }
            Ok(())
        })
        .await?;
        let record = self.record(vm);
        let next = look.next_generation(record.generation());
        record.clear()?;
        let disks = &look.spec.disks;
        if !disks.iter().any(|d| d.format == DiskFormat::Qcow2) {
            return Ok(());
        }
        for d in disks.iter().filter(|d| d.format == DiskFormat::Qcow2) {
            crate::qemu::offline::restart_bitmaps(&d.path, &bitmap_name(next)).await?;
        }
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let xml = crate::libvirt::backup::checkpoint_xml(
            &bitmap_name(next),
            disks
                .iter()
                .map(|d| (&d.name, d.format == DiskFormat::Qcow2)),
            Some(created),
        );
        let name = vm.to_string();
        self.domain(vm, move |dom| {
            call::redefine_checkpoint(dom, &xml)
                .map_err(|e| failed(&name, "redefining its checkpoint", e))
        })
        .await?;
        record.set_generation(next)
    }
    /// Each disk's copy from the vault into its overlay: libvirt's block pull (QEMU's
    /// block-stream), started for a disk that still has its backing and no job.
    async fn hydrate(&self, vm: &VmName, speed: Option<u64>) -> Result<Vec<DiskHydration>> {
        let name = vm.to_string();
        let sizes = self.disk_sizes.clone();
        self.domain(vm, move |dom| {
            let xml = dom
                .xml_desc(0)
                .map_err(|e| failed(&name, "reading its XML", e))?;
            let disks = domain_xml::disk_backings(&xml).map_err(|e| failed(&name, "its XML", e))?;
            // Every disk's pull first. Debian 12's QEMU 7.2 (what libvirtd runs here)
            // segfaulted (in bdrv_refresh_filename) when a disk's size was asked (`query-block`) just as
            // another disk's pull finished and dropped its NBD backing: 2 of about 10 test
            // copies in `qemu_libvirt_recovery`. So sizes are asked only while no pull
            // runs, once, and kept.
            let mut jobs = Vec::new();
            for (target, backed) in disks {
                let Ok(disk) = DiskName::new(&target) else {
                    continue;
                };
                let job = call::block_job(dom, &target)
                    .map_err(|e| failed(&name, &format!("disk {target}'s job"), e))?;
                jobs.push((disk, target, backed, job));
            }
            let mut pulling = jobs.iter().any(|j| j.3.is_some());
            let mut known = sizes.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = Vec::new();
            for (_, target, _, _) in &jobs {
                let key = format!("{name}/{target}");
                if known.contains_key(&key) || pulling {
                    continue;
                }
                let size = dom
                    .block_info(target, 0)
                    .map(|i| i.capacity)
                    .map_err(|e| failed(&name, &format!("the size of disk {target}"), e))?;
                known.insert(key, size);
            }
            for (disk, target, backed, job) in jobs {
                // Unknown only after an agent restart during a pull: the job's own end.
                let size = known
                    .get(&format!("{name}/{target}"))
                    .copied()
                    .or(job.map(|(_, end)| end))
                    .unwrap_or(0);
                // One disk's pull at a time. With two at once, QEMU 7.2 still
                // segfaulted (null pointer, the same spot) about 4 s into a copy of the
                // two-disk test domain in 1 of 3 runs on a busy machine: as one pull ended
                // and libvirt dropped that disk's NBD backing, the other's was running.
                let (done, total, hydrated) = match job {
                    Some((cur, end)) => (cur, end.max(1), false),
                    None if backed && !pulling => {
                        call::block_pull(dom, &target, speed.unwrap_or(0))
                            .map_err(|e| failed(&name, &format!("hydrating disk {target}"), e))?;
                        pulling = true;
                        (0, size, false)
                    }
                    None if backed => (0, size, false),
                    None => (size, size, true),
                };
                out.push(DiskHydration {
                    disk,
                    done,
                    total,
                    hydrated,
                });
            }
            Ok(out)
        })
        .await
    }
    async fn freeze_guest(&self, vm: &VmName, limit: Duration) -> Result<Option<u64>> {
        // Marked first: if this process dies between here and the thaw, the next sync
        // thaws (`thaw_guest`).
        self.set_marker(vm, "frozen", "")?;
        let (this, domain) = (self.clone(), vm.clone());
        let task = tokio::spawn(async move {
            let name = domain.to_string();
            this.domain(&domain, move |dom| {
                call::fs_freeze(dom, true).map_err(|e| failed(&name, "freezing its filesystems", e))
            })
            .await
        });
        let abort = task.abort_handle();
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(Ok(n))) => Ok(Some(u64::from(n))),
            Ok(Ok(Err(e))) => {
                tracing::info!(vm = %vm, "no app-consistent point: {e}");
                self.clear_marker(vm, "frozen");
                Ok(None)
            }
            Ok(Err(e)) => Err(failed(vm.as_str(), "freezing its filesystems", e)),
            Err(_) => {
                // A hung guest agent: the point is crash-consistent, and a freeze that
                // lands late is thawed by the next sync (the marker stays).
                abort.abort();
                tracing::warn!(vm = %vm, "the guest agent did not freeze within {limit:?}");
                Ok(None)
            }
        }
    }
    async fn thaw_guest(&self, vm: &VmName, limit: Duration) -> Result<()> {
        if !self.marker(vm, "frozen").exists() {
            return Ok(());
        }
        let name = vm.to_string();
        let call = self.domain(vm, move |dom| {
            call::fs_freeze(dom, false).map_err(|e| failed(&name, "thawing its filesystems", e))
        });
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(_)) => {
                self.clear_marker(vm, "frozen");
                Ok(())
            }
            Ok(Err(e))
                if e.to_string().contains("not connected")
                    || e.to_string().contains("not configured")
                    || e.to_string().contains("not running") =>
            {
                // No agent, or the domain stopped: nothing stays frozen.
                self.clear_marker(vm, "frozen");
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HypervisorError::Timeout {
                vm: vm.clone(),
                what: "thawing the guest's filesystems".into(),
                secs: limit.as_secs(),
            }),
        }
    }
}

impl LibvirtDriver {
    fn refuse_fenced(&self, vm: &VmName) -> Result<()> {
        match self.fenced(vm) {
            Some(why) => Err(HypervisorError::WrongState {
                vm: vm.clone(),
                state: "fenced".into(),
                what: format!("it must not start on this host: {why}"),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoints_size_sums_its_disks() {
        let xml = "<domaincheckpoint><name>lifeboat-2</name><disks>\
                   <disk name='vda' checkpoint='bitmap' bitmap='lifeboat-2' size='65536'/>\
                   <disk name='vdb' checkpoint='no'/>\
                   <disk name='vdc' checkpoint='bitmap' size='4096'/></disks>\
                   <domain><devices><disk size='9'/></devices></domain></domaincheckpoint>";
        assert_eq!(checkpoint_size(xml), 69632);
        assert_eq!(checkpoint_size("not xml"), 0);
    }

    #[test]
    fn a_domain_becomes_a_neutral_spec_with_its_xml() {
        let xml = "<domain><name>web1</name><uuid>5b6a0a3e-6a43-4d2a-9c3f-2b8f5d6c7e01</uuid>\
                   <memory unit='MiB'>256</memory><vcpu>2</vcpu><devices>\
                   <disk type='file' device='disk'><driver type='qcow2'/>\
                   <source file='/i/web1.qcow2'/><target dev='vda'/></disk>\
                   <disk type='block' device='disk'><source dev='/dev/vg/d'/><target dev='vdb'/></disk>\
                   <disk type='file' device='cdrom'><target dev='sda'/><readonly/></disk>\
                   <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br0'/></interface>\
                   <interface type='network'><mac address='52:54:00:12:34:57'/><source network='default'/></interface>\
                   </devices></domain>";
        let vm = VmName::new("web1").unwrap();
        let s = spec_of(&vm, &domain_xml::parse(xml).unwrap(), xml).unwrap();
        assert_eq!((s.memory_mib, s.vcpus, s.disks.len()), (256, 2, 2));
        assert_eq!(s.disks[0].format, DiskFormat::Qcow2);
        assert_eq!(
            (s.disks[1].format, s.disks[1].path.as_path()),
            (DiskFormat::Raw, Path::new("/dev/vg/d"))
        );
        assert_eq!(s.nics[0].network, "bridge:br0");
        assert_eq!(s.nics[1].network, "network:default");
        assert_eq!(s.libvirt_xml.as_deref(), Some(xml));
        // The spec round-trips through the point's TOML.
        let back = VmSpec::parse(&s.to_toml(), Path::new("point")).unwrap();
        assert_eq!(back, s);

        for (bad, want) in [
            (
                "<disk type='network' device='disk'><target dev='vda'/></disk>",
                "network disk",
            ),
            (
                "<disk type='file' device='disk'><driver type='vmdk'/><source file='/x'/>\
                 <target dev='vda'/></disk>",
                "vmdk image",
            ),
            (
                "<interface type='user'><mac address='52:54:00:12:34:56'/></interface>",
                "type \"user\"",
            ),
        ] {
            let xml = format!(
                "<domain><name>web1</name><memory unit='MiB'>256</memory><devices>{bad}\
                 <disk type='file' device='disk'><source file='/a'/><target dev='vdz'/></disk>\
                 </devices></domain>"
            );
            let e = spec_of(&vm, &domain_xml::parse(&xml).unwrap(), &xml)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
