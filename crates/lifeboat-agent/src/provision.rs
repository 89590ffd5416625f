//! Bringing a VM up from a recovery point on this host, instantly: each disk of the point
//! is served over NBD straight from the vault (read-only, through the reader's bounded
//! chunk cache) as the backing of a local qcow2 overlay; the VM boots from the overlays at
//! once and `block-stream` hydrates them in the background (`lifeboat_hypervisor::qemu::
//! hydrate`). When every disk is local the NBD servers stop and the VM needs nothing from
//! the vault.
//!
//! Files: `HOME/recovered/VM/DISK.qcow2` (the disks) and `DISK.nbd` (the sockets), so that
//! removing a recovery removes one directory and the VM's definition. The directory is
//! 0700 and everything in it 0600: the overlays fill with the VM's data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_hypervisor::qemu::hydrate::create_instant_overlay;
use lifeboat_hypervisor::{DiskFormat, Driver, Hypervisor, HypervisorError, VmName, VmSpec};
use lifeboat_vault::format::PointId;
use lifeboat_vault::{PointReader, Vault};
use tokio::task::AbortHandle;

use crate::ids::RecoveryId;
use crate::recovery::{
    Journal, RecoveryKind, RecoveryRecord, RecoveryRequest, RecoveryStatus, RemovalReport,
};
use crate::replicate::{Records, VaultCache};

/// Chunks kept in memory per recovered VM while it reads from the vault.
const CHUNK_CACHE: usize = 64 << 20;
/// How often hydration is looked at.
const HYDRATION_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("vault: {0}")]
    Vault(#[from] lifeboat_vault::VaultError),
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The VM's own seed from the point, for a move that keeps its addresses. Not for a test
/// copy: its NICs have other MACs than the seed's network configuration names, and it
/// must not run production's user-data; without a seed it falls back to DHCP, where its
/// exposed ports lead. A seed that does not expand is left out: the copy still boots.
fn own_seed(manifest: &lifeboat_vault::format::Manifest, req: &RecoveryRequest) -> Option<Vec<u8>> {
    if req.kind == RecoveryKind::Test {
        return None;
    }
    manifest.guest_seed_image().unwrap_or_else(|e| {
        tracing::warn!(point = %req.point, "the VM's own seed is left out: {e}");
        None
    })
}

/// A seed refused for what it says is the request's fault; one not written is this
/// host's (a full disk), which the caller may retry.
fn seed_error(e: crate::guest_seed::SeedError) -> RecoveryError {
    match e {
        crate::guest_seed::SeedError::Io { path, source } => RecoveryError::Io {
            what: format!("writing the cloud-init seed {path}"),
            source,
        },
        other => RecoveryError::Invalid(other.to_string()),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RecoveryError {
    let what = what.into();
    move |source| RecoveryError::Io { what, source }
}

/// What runs for a recovery in this process: its NBD servers and its hydration watcher.
struct Live {
    tasks: Vec<AbortHandle>,
    error: Arc<Mutex<Option<String>>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The recoveries of this host.
pub struct Recoveries {
    /// Where recovered VMs' folders go, and who else must open their sockets.
    place: lifeboat_hypervisor::RecoveryPlace,
    journal: Journal,
    live: Mutex<HashMap<RecoveryId, Live>>,
    /// One request at a time changes recoveries: bringing up and removing are short.
    busy: tokio::sync::Mutex<()>,
    /// Bytes per second hydration may copy at most (the operator's cap).
    hydrate_rate: Option<u64>,
}

impl Recoveries {
    pub fn open(home: &Path, agent_home: &Path) -> std::io::Result<Recoveries> {
        Ok(Recoveries {
            place: lifeboat_hypervisor::RecoveryPlace {
                root: home.join("recovered"),
                owner: None,
            },
            journal: Journal::open(agent_home)?,
            live: Mutex::new(HashMap::new()),
            busy: tokio::sync::Mutex::new(()),
            hydrate_rate: None,
        })
    }

    /// Keeps recovered VMs where this host's driver wants them (`Driver::recovery_place`).
    pub fn with_place(mut self, place: lifeboat_hypervisor::RecoveryPlace) -> Self {
        self.place = place;
        self
    }

    /// Caps hydration at `rate` bytes per second (`lifeboat agent --hydrate-rate`).
    pub fn with_hydrate_rate(mut self, rate: Option<u64>) -> Self {
        self.hydrate_rate = rate;
        self
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn dir(&self, vm: &VmName) -> PathBuf {
        self.place.root.join(vm.as_str())
    }

    /// Gives `path` to the hypervisor's QEMU user (when it runs as one): it binds the
    /// VM's sockets in the VM's folder and opens its disks and seed.
    fn hand_to_qemu(&self, path: &Path) -> Result<(), RecoveryError> {
        if let Some((uid, gid)) = self.place.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io(format!("handing {} to QEMU's user", path.display())))?;
        }
        Ok(())
    }

    /// Writes a cloud-init seed for a VM of this host that is no recovery (a failback
    /// restoring its home address), where the hypervisor's QEMU may read it; returns its
    /// path. Replaces the one written before.
    pub fn write_seed(
        &self,
        vm: &VmName,
        instance_id: &str,
        nics: &[lifeboat_types::NicAddressing],
    ) -> Result<PathBuf, RecoveryError> {
        // A VM name never starts with '.', so this folder is no recovered VM's.
        let dir = self.place.root.join(".seeds").join(vm.as_str());
        for d in [&self.place.root, &self.place.root.join(".seeds"), &dir] {
            lifeboat_hypervisor::private::private_dir(d)
                .map_err(io(format!("creating {}", d.display())))?;
            self.hand_to_qemu(d)?;
        }
        let seed = dir.join("cidata.img");
        crate::guest_seed::write(&seed, instance_id, nics).map_err(seed_error)?;
        self.hand_to_qemu(&seed)?;
        Ok(seed)
    }

    /// Brings the VM up (or, for a recovery already here, makes sure its point is served
    /// until it is hydrated) and reports it.
    pub async fn ensure(
        self: &Arc<Self>,
        driver: &Driver,
        vaults: &VaultCache,
        records: &Records,
        req: &RecoveryRequest,
    ) -> Result<RecoveryStatus, RecoveryError> {
        let id =
            RecoveryId::new(&req.recovery_id).map_err(|e| RecoveryError::Invalid(e.to_string()))?;
        let vm = VmName::new(&req.vm).map_err(RecoveryError::Invalid)?;
        let point: PointId = req
            .point
            .parse()
            .map_err(|e| RecoveryError::Invalid(format!("point {:?}: {e}", req.point)))?;
        let _busy = self.busy.lock().await;
        let record = match self.journal.load(&id) {
            Some(r) => r,
            None if req.resume_only => {
                return Err(RecoveryError::NotFound(format!(
                    "no recovery {} on this host (removed?)",
                    req.recovery_id
                )))
            }
            None => {
                if let Some(other) = self.journal.of_vm(&vm) {
                    return Err(RecoveryError::Conflict(format!(
                        "VM {vm} on this host was brought up by recovery {}; remove it first",
                        other.recovery_id
                    )));
                }
                if driver.spec(&vm).await.is_ok() {
                    return Err(RecoveryError::Conflict(format!(
                        "a VM named {vm} already exists on this host; it is not replaced"
                    )));
                }
                let vault = vaults
                    .open(&req.vault)
                    .await
                    .map_err(|e| RecoveryError::Invalid(e.to_string()))?;
                let reader = Arc::new(open_point(&vault, &point).await?);
                let record = self.provision(driver, &id, &vm, req, &reader).await?;
                if req.kind != RecoveryKind::Test {
                    // Tracked from its first boot, on the point it starts from: its first
                    // sync (a failback's) reads only what the guest wrote here. Hydration's
                    // copies do not mark the bitmap (block-stream, checked on QEMU 7.2).
                    driver.track_afresh(&vm).await?;
                    records.set_last_point(&vm, &req.point).map_err(|e| {
                        RecoveryError::Invalid(format!("recording the VM's point: {e}"))
                    })?;
                }
                self.start_live(driver, &record, Some(reader));
                return Ok(self.status_of(driver, record).await);
            }
        };
        if record.point != req.point || record.vm != vm {
            return Err(RecoveryError::Conflict(format!(
                "recovery {} brought up {} from point {}, not {} from {}",
                record.recovery_id, record.vm, record.point, req.vm, req.point
            )));
        }
        let is_live = self.live.lock().unwrap().contains_key(&record.recovery_id);
        if !record.hydrated && !is_live {
            // The agent restarted: serve the point again (QEMU waits for it, see
            // `hydrate::nbd_backing`) and watch hydration again.
            let vault = vaults
                .open(&req.vault)
                .await
                .map_err(|e| RecoveryError::Invalid(e.to_string()))?;
            let reader = Arc::new(open_point(&vault, &point).await?);
            self.start_live(driver, &record, Some(reader));
        }
        Ok(self.status_of(driver, record).await)
    }

    async fn provision(
        &self,
        driver: &Driver,
        id: &RecoveryId,
        vm: &VmName,
        req: &RecoveryRequest,
        reader: &Arc<PointReader>,
    ) -> Result<RecoveryRecord, RecoveryError> {
        let manifest = reader.manifest();
        let config = manifest.vm_config.as_deref().ok_or_else(|| {
            RecoveryError::Invalid(format!(
                "point {} carries no VM spec (written before Lifeboat kept one); restore its disks with `lifeboat vault restore` instead",
                req.point
            ))
        })?;
        let text = std::str::from_utf8(config)
            .map_err(|_| RecoveryError::Invalid("the point's VM spec is not UTF-8".into()))?;
        let mut spec = VmSpec::parse(text, Path::new("the point's VM spec"))?;
        // A point's spec comes from another host: a seed it names is a path of that host
        // (or a forged one). Only a seed written here is ever attached.
        spec.seed = None;
        // Likewise a forward's guest address is set below for this copy, or not at all.
        for f in spec
            .nics
            .iter_mut()
            .flat_map(|n| n.host_forwards.iter_mut())
        {
            f.guest_addr = None;
        }
        crate::recovery::check_network_map(&req.network_map).map_err(RecoveryError::Invalid)?;
        let dir = self.dir(vm);
        let mut forwards = Vec::new();
        if !req.expose.is_empty() {
            // The exposed ports ride on the copy's first NIC (a restricted user network,
            // on either driver).
            match spec.nics.first_mut() {
                None => {
                    return Err(RecoveryError::Invalid(format!(
                        "--expose: VM {} has no NIC to reach it through",
                        req.vm
                    )))
                }
                Some(nic) => nic
                    .host_forwards
                    .extend(req.expose.iter().map(|&guest_port| {
                        lifeboat_hypervisor::spec::HostForward {
                            host_port: 0,
                            guest_port,
                            public: true,
                            guest_addr: None,
                        }
                    })),
            }
        }
        spec.name = vm.clone();
        if req.kind == RecoveryKind::Test {
            spec.uuid = None; // a test copy is another machine
        }
        // Addressing is named by the MAC in the VM's definition; a test copy's NIC gets
        // another MAC below, which the seed must name.
        let mut guest_network = Vec::new();
        for wanted in &req.guest_network {
            if !spec
                .nics
                .iter()
                .any(|n| n.mac.eq_ignore_ascii_case(&wanted.mac))
            {
                return Err(RecoveryError::Invalid(format!(
                    "network settings name NIC {}, which VM {} does not have; change them with `lifeboat network`",
                    wanted.mac, req.vm
                )));
            }
        }
        for nic in &mut spec.nics {
            let wanted = req
                .guest_network
                .iter()
                .find(|w| w.mac.eq_ignore_ascii_case(&nic.mac));
            if req.kind == RecoveryKind::Test {
                nic.network = "isolated".into();
                nic.mac = test_mac(&nic.mac, &req.recovery_id);
            } else if let Some(to) = crate::recovery::mapped_network(&nic.network, &req.network_map)
            {
                nic.network = to;
            }
            // Checked before anything changes: a NIC this host cannot plug is refused.
            lifeboat_hypervisor::qemu::bridge::check_network(
                &nic.network,
                Path::new("/sys/class/net"),
                matches!(driver, Driver::Libvirt(_)),
            )
            .map_err(RecoveryError::Invalid)?;
            match driver {
                Driver::Qemu(_) if matches!(nic.network.as_str(), "user" | "isolated") => {}
                // A libvirt host forwards only the ports a test copy exposes (added above
                // with no host port yet); the source's own forwards were on a user network,
                // which a libvirt host maps to a bridge.
                Driver::Libvirt(_) if nic.network == "isolated" => nic
                    .host_forwards
                    .retain(|f| f.host_port == 0 && req.expose.contains(&f.guest_port)),
                // A bridged NIC is reached at its own address, not through host ports: no
                // forward is made, so none is reported.
                _ => nic.host_forwards.clear(),
            }
            if let Some(w) = wanted {
                let mut addressing = w.addressing.clone();
                if let lifeboat_types::Addressing::Static(a) = &mut addressing {
                    // A port forwarded to a guest given a static address on QEMU's user
                    // network must lead to that address, not to the one its DHCP offers.
                    if let std::net::IpAddr::V4(v4) = a.address.addr() {
                        for f in &mut nic.host_forwards {
                            f.guest_addr = Some(v4);
                        }
                    }
                    // Isolated is QEMU's restricted user network under the QEMU driver,
                    // and under libvirt when the copy exposes ports (libvirt/define.rs).
                    // Replies to a client of an exposed port go to that client's address:
                    // without a gateway the copy could answer only the host's loopback.
                    // The network's own gateway, 10.0.2.2, leads nowhere else.
                    let user_network =
                        matches!(driver, Driver::Qemu(_)) || !nic.host_forwards.is_empty();
                    let user_net: ipnet::IpNet = "10.0.2.0/24".parse().expect("a subnet");
                    if user_network
                        && nic.network == "isolated"
                        && a.gateway.is_none()
                        && user_net.contains(&a.address.addr())
                    {
                        a.gateway = Some(std::net::Ipv4Addr::new(10, 0, 2, 2).into());
                    }
                }
                guest_network.push(lifeboat_types::NicAddressing {
                    mac: nic.mac.clone(),
                    addressing,
                });
            }
            for f in &mut nic.host_forwards {
                // Ports are this host's: keep the source's when free, else take another.
                if req.kind == RecoveryKind::Test || f.host_port == 0 || !port_free(f.host_port) {
                    f.host_port = free_port().map_err(io("finding a free port"))?;
                }
                forwards.push(*f);
            }
        }
        let record = RecoveryRecord {
            recovery_id: id.clone(),
            vm: vm.clone(),
            point: req.point.clone(),
            kind: req.kind,
            vault_url: req.vault.url.clone(),
            disks: spec.disks.iter().map(|d| d.name.clone()).collect(),
            forwards,
            hydrated: false,
            created_at: chrono::Utc::now(),
        };
        self.journal
            .save(&record)
            .map_err(io("writing the recovery's record"))?;
        // It holds the VM's disks and the sockets that serve the point: its owner's only.
        lifeboat_hypervisor::private::private_dir(&dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        self.hand_to_qemu(&dir)?;
        for d in &mut spec.disks {
            let stored = manifest
                .disks
                .iter()
                .find(|m| m.name.as_str() == d.name.as_str())
                .ok_or_else(|| {
                    RecoveryError::Invalid(format!(
                        "the point's VM spec names disk {}, which the point does not hold",
                        d.name
                    ))
                })?;
            let overlay = dir.join(format!("{}.qcow2", d.name));
            let socket = dir.join(format!("{}.nbd", d.name));
            create_instant_overlay(&overlay, stored.size, &socket, d.name.as_str()).await?;
            d.path = overlay;
            d.format = DiskFormat::Qcow2;
        }
        if !guest_network.is_empty() {
            // A new cloud-init instance, so the guest applies this network once.
            let seed = dir.join("cidata.img");
            crate::guest_seed::write(&seed, &format!("lifeboat-{id}"), &guest_network)
                .map_err(seed_error)?;
            self.hand_to_qemu(&seed)?;
            spec.seed = Some(seed);
        } else if let Some(image) = own_seed(manifest, req) {
            // No address changes: the copy boots with the seed the VM booted with at
            // home, so cloud-init sees the same instance and keeps what it configured.
            let seed = dir.join("own-seed.img");
            std::fs::write(&seed, image)
                .map_err(io(format!("writing the VM's own seed {}", seed.display())))?;
            self.hand_to_qemu(&seed)?;
            spec.seed = Some(seed);
        }
        // The sockets must answer before QEMU opens its backing files.
        driver.define(spec).await?;
        Ok(record)
    }

    /// Starts serving the point and watching hydration; for a new recovery, starts the VM.
    fn start_live(
        self: &Arc<Self>,
        driver: &Driver,
        record: &RecoveryRecord,
        reader: Option<Arc<PointReader>>,
    ) {
        let dir = self.dir(&record.vm);
        let mut tasks = Vec::new();
        if let Some(reader) = reader {
            for disk in &record.disks {
                let socket = dir.join(format!("{disk}.nbd"));
                match crate::point_export::serve(
                    reader.clone(),
                    disk.as_str(),
                    &socket,
                    self.place.owner,
                ) {
                    Ok(task) => tasks.push(task),
                    Err(e) => tracing::warn!(vm = %record.vm, %disk, "serving the point: {e}"),
                }
            }
        }
        let error = Arc::new(Mutex::new(None));
        let me = self.clone();
        let driver = driver.clone();
        let id = record.recovery_id.clone();
        let err = error.clone();
        tasks.push(tokio::spawn(async move { me.watch(&driver, &id, &err).await }).abort_handle());
        self.live
            .lock()
            .unwrap()
            .insert(record.recovery_id.clone(), Live { tasks, error });
    }

    /// Starts the VM if it never ran, then follows hydration until every disk is local.
    async fn watch(&self, driver: &Driver, id: &RecoveryId, error: &Mutex<Option<String>>) {
        let set = |e: Option<String>| *error.lock().unwrap() = e;
        loop {
            let Some(mut record) = self.journal.load(id) else {
                return;
            };
            let vm = record.vm.clone();
            match driver.state(&vm).await {
                Ok(lifeboat_hypervisor::VmState::Stopped) if !self.started_once(&record) => {
                    match driver.start(&vm).await {
                        Ok(()) => {
                            let started = self.dir(&record.vm).join("started");
                            let _ = lifeboat_hypervisor::private::write_private(&started, b"");
                            tracing::info!(%vm, point = %record.point, "recovered VM started");
                        }
                        Err(e) => set(Some(format!("starting {vm}: {e}"))),
                    }
                }
                Ok(lifeboat_hypervisor::VmState::Running) => {
                    match driver.hydrate(&vm, self.hydrate_rate).await {
                        Ok(disks) if disks.iter().all(|d| d.hydrated) => {
                            // Serving stops before the record says hydrated, so a recovery
                            // reported hydrated has no socket left. Under `busy`, a resume
                            // cannot start serving in between; a crash in between serves
                            // the point again after the restart until this runs again.
                            let _busy = self.busy.lock().await;
                            self.stop_serving(&record);
                            record.hydrated = true;
                            if let Err(e) = self.journal.save(&record) {
                                set(Some(format!("recording hydration: {e}")));
                            } else {
                                tracing::info!(%vm, "hydrated: the VM needs nothing from the vault");
                                set(None);
                                return;
                            }
                        }
                        Ok(_) => set(None),
                        Err(e) => set(Some(format!("hydration: {e}"))),
                    }
                }
                _ => {}
            }
            tokio::time::sleep(HYDRATION_POLL).await;
        }
    }

    fn started_once(&self, record: &RecoveryRecord) -> bool {
        self.dir(&record.vm).join("started").exists()
    }

    /// Drops the NBD servers of a hydrated recovery (this runs inside its watcher, which
    /// ends once the record says hydrated).
    fn stop_serving(&self, record: &RecoveryRecord) {
        if let Some(mut live) = self.live.lock().unwrap().remove(&record.recovery_id) {
            // The watcher is the last task and is returning: do not abort it mid-way.
            live.tasks.pop();
        }
        for disk in &record.disks {
            let _ = std::fs::remove_file(self.dir(&record.vm).join(format!("{disk}.nbd")));
        }
    }

    pub async fn status(
        &self,
        driver: &Driver,
        id: &RecoveryId,
    ) -> Result<RecoveryStatus, RecoveryError> {
        let record = self
            .journal
            .load(id)
            .ok_or_else(|| RecoveryError::NotFound(format!("no recovery {id} on this host")))?;
        Ok(self.status_of(driver, record).await)
    }

    async fn status_of(&self, driver: &Driver, record: RecoveryRecord) -> RecoveryStatus {
        let error = self
            .live
            .lock()
            .unwrap()
            .get(&record.recovery_id)
            .and_then(|l| l.error.lock().unwrap().clone());
        let vm = &record.vm;
        let state = driver.state(vm).await;
        let hydration = match &state {
            Ok(lifeboat_hypervisor::VmState::Running) if !record.hydrated => driver
                .hydrate(vm, self.hydrate_rate)
                .await
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let vm_state = match state {
            Ok(lifeboat_hypervisor::VmState::Stopped) => "stopped".into(),
            Ok(lifeboat_hypervisor::VmState::Running) => "running".into(),
            Ok(lifeboat_hypervisor::VmState::Paused(why)) => format!("paused ({why})"),
            Ok(lifeboat_hypervisor::VmState::Crashed(why)) => format!("crashed ({why})"),
            Err(HypervisorError::UnknownVm(_)) => "missing".into(),
            Err(e) => format!("unknown ({e})"),
        };
        RecoveryStatus {
            record,
            vm_state,
            hydration,
            error,
        }
    }

    /// Removes everything a recovery created here: its VM (killed), its disks, its
    /// sockets and its record. Removing what is not there is not an error.
    pub async fn remove(
        &self,
        driver: &Driver,
        id: &RecoveryId,
    ) -> Result<RemovalReport, RecoveryError> {
        let _busy = self.busy.lock().await;
        let Some(record) = self.journal.load(id) else {
            return Ok(RemovalReport {
                recovery_id: id.to_string(),
                removed: false,
                vm: None,
            });
        };
        self.live.lock().unwrap().remove(id);
        let vm = record.vm.clone();
        match driver.kill(&vm).await {
            Ok(()) | Err(HypervisorError::UnknownVm(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match driver.undefine(&vm).await {
            Ok(()) | Err(HypervisorError::UnknownVm(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let dir = self.dir(&record.vm);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RecoveryError::Io {
                    what: format!("removing {}", dir.display()),
                    source: e,
                })
            }
            _ => {}
        }
        self.journal
            .remove(id)
            .map_err(io("removing the recovery's record"))?;
        tracing::info!(vm = %record.vm, recovery = %id, "recovery removed");
        Ok(RemovalReport {
            recovery_id: id.to_string(),
            removed: true,
            vm: Some(record.vm.to_string()),
        })
    }
}

async fn open_point(vault: &Vault, point: &PointId) -> Result<PointReader, RecoveryError> {
    let found = vault.find_point(point).await.map_err(|e| match e {
        lifeboat_vault::VaultError::UnknownPoint { .. } => {
            RecoveryError::NotFound(format!("point {point} is not in vault {}", vault.url()))
        }
        other => other.into(),
    })?;
    Ok(PointReader::open(vault, &found, CHUNK_CACHE).await?)
}

/// A MAC for a test copy: locally administered, derived from the source MAC and the
/// recovery, so it never equals the production VM's.
fn test_mac(source: &str, recovery_id: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{source}/{recovery_id}").as_bytes(),
    );
    let b = digest.as_ref();
    format!(
        "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0] | 0x01, // never 52:54:00, QEMU's range for source VMs
        b[1],
        b[2],
        b[3]
    )
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's watcher resumes with `resume_only`: racing a removal, it must get
    /// "not found", never a VM brought up again.
    #[tokio::test]
    async fn resume_only_never_brings_a_vm_up() {
        let home = tempfile::tempdir().unwrap();
        let driver = Driver::Qemu(
            lifeboat_hypervisor::QemuDriver::new(lifeboat_hypervisor::QemuConfig::new(home.path()))
                .unwrap(),
        );
        let recoveries =
            Arc::new(Recoveries::open(home.path(), &home.path().join("agent")).unwrap());
        let req = RecoveryRequest {
            recovery_id: "r1".into(),
            vault: crate::sync::VaultAccess::passphrase("file:///nonexistent", &"x".into(), "vm"),
            point: "1795703838177-f4359ed2".into(),
            vm: "web".into(),
            kind: RecoveryKind::Test,
            resume_only: true,
            network_map: Default::default(),
            expose: Vec::new(),
            guest_network: Vec::new(),
            job_id: None,
        };
        let records = Records::open(&home.path().join("agent")).unwrap();
        let sealing = crate::sealing::SealingKey::load_or_create(home.path()).unwrap();
        let err = recoveries
            .ensure(&driver, &VaultCache::new(Arc::new(sealing)), &records, &req)
            .await
            .unwrap_err();
        assert!(matches!(err, RecoveryError::NotFound(_)), "{err}");
        assert!(recoveries.journal().all().is_empty());
        assert!(!home.path().join("vms/web").exists());
    }

    #[test]
    fn test_macs_differ_from_the_source_and_are_stable() {
        let a = test_mac("52:54:00:12:34:56", "r1");
        assert_ne!(a, "52:54:00:12:34:56");
        assert!(!a.starts_with("52:54:00:"));
        assert_eq!(a, test_mac("52:54:00:12:34:56", "r1"));
        assert_ne!(a, test_mac("52:54:00:12:34:56", "r2"));
    }
}
