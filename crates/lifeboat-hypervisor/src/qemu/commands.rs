//! QMP commands whose generated `qapi` types do not fit QEMU 7.2, declared here with the
//! same wire names, plus builders for the generated transaction actions we use.
//!
//! Each reply struct names only the fields we read, so fields added or dropped by other
//! QEMU versions do not break parsing; each field we do read was checked against 7.2.

use qapi::qmp;
use serde::{Deserialize, Serialize};

macro_rules! qmp_command {
    ($ty:ty, $name:literal, $ok:ty) => {
        impl qapi::Command for $ty {
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
            type Ok = $ok;
        }
        impl qmp::QmpCommand for $ty {}
    };
}

/// `query-named-block-nodes` with `flat: true`: the only view that still shows a disk's
/// node and bitmaps while a fleecing filter sits on top of it.
#[derive(Debug, Serialize)]
pub struct QueryNamedBlockNodes {
    pub flat: bool,
}
qmp_command!(
    QueryNamedBlockNodes,
    "query-named-block-nodes",
    Vec<NamedNode>
);

#[derive(Debug, Clone, Deserialize)]
pub struct NamedNode {
    #[serde(rename = "node-name", default)]
    pub node_name: Option<String>,
    pub drv: String,
    /// The backing file named in the image, if any: an instant-recovery overlay keeps its
    /// NBD backing until hydration ends.
    #[serde(default)]
    pub backing_file: Option<String>,
    #[serde(rename = "dirty-bitmaps", default)]
    pub dirty_bitmaps: Vec<BitmapInfo>,
    pub image: NodeImage,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeImage {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BitmapInfo {
    /// Empty for QEMU's internal bitmaps (a backup job's copy-before-write filter has one).
    #[serde(default)]
    pub name: String,
    pub count: u64,
    pub granularity: u32,
    pub recording: bool,
    pub busy: bool,
    pub persistent: bool,
    #[serde(default)]
    pub inconsistent: bool,
}

/// `blockdev-add` of the fleecing overlay: a qcow2 file whose backing is the live disk's
/// node, so reads of blocks not yet copied fall through to the (frozen by copy-before-write)
/// live data.
#[derive(Debug, Serialize)]
pub struct BlockdevAddOverlay {
    pub driver: &'static str,
    #[serde(rename = "node-name")]
    pub node_name: String,
    pub file: OverlayFile,
    pub backing: String,
}
#[derive(Debug, Serialize)]
pub struct OverlayFile {
    pub driver: &'static str,
    pub filename: String,
}
qmp_command!(BlockdevAddOverlay, "blockdev-add", qapi::Empty);

impl BlockdevAddOverlay {
    pub fn new(node_name: String, filename: String, backing: String) -> Self {
        BlockdevAddOverlay {
            driver: "qcow2",
            node_name,
            file: OverlayFile {
                driver: "file",
                filename,
            },
            backing,
        }
    }
}

/// `nbd-server-start` on a Unix socket.
#[derive(Debug, Serialize)]
pub struct NbdServerStartUnix {
    pub addr: UnixAddr,
}
#[derive(Debug, Serialize)]
pub struct UnixAddr {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub data: UnixPath,
}
#[derive(Debug, Serialize)]
pub struct UnixPath {
    pub path: String,
}
qmp_command!(NbdServerStartUnix, "nbd-server-start", qapi::Empty);

impl NbdServerStartUnix {
    pub fn new(path: String) -> Self {
        NbdServerStartUnix {
            addr: UnixAddr {
                kind: "unix",
                data: UnixPath { path },
            },
        }
    }
}

/// `block-export-add` of a read-only NBD export, optionally with dirty bitmaps that the
/// client reads as `qemu:dirty-bitmap:NAME`.
#[derive(Debug, Serialize)]
pub struct BlockExportAddNbd {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    #[serde(rename = "node-name")]
    pub node_name: String,
    pub name: String,
    pub writable: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bitmaps: Vec<String>,
}
qmp_command!(BlockExportAddNbd, "block-export-add", qapi::Empty);

#[derive(Debug, Serialize)]
pub struct QueryBlockExports {}
qmp_command!(QueryBlockExports, "query-block-exports", Vec<ExportInfo>);

#[derive(Debug, Clone, Deserialize)]
pub struct ExportInfo {
    pub id: String,
    #[serde(rename = "node-name")]
    pub node_name: String,
}

#[derive(Debug, Serialize)]
pub struct QueryBlockJobs {}
qmp_command!(QueryBlockJobs, "query-block-jobs", Vec<JobInfo>);

#[derive(Debug, Clone, Deserialize)]
pub struct JobInfo {
    /// The job id (QMP calls it `device` for historical reasons).
    pub device: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    /// Progress: `offset` bytes of `len` done.
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub len: u64,
}

/// `block-stream` with neither base nor top: copies everything the node's backing chain
/// holds into the node, then drops the backing (also from the image header).
#[derive(Debug, Serialize)]
pub struct BlockStream {
    #[serde(rename = "job-id")]
    pub job_id: String,
    pub device: String,
    /// Bytes per second at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<u64>,
}
qmp_command!(BlockStream, "block-stream", qapi::Empty);

/// The status of the VM as QEMU sees it (`query-status`), reduced to what we use.
#[derive(Debug, Serialize)]
pub struct QueryStatus {}
qmp_command!(QueryStatus, "query-status", StatusReply);

#[derive(Debug, Clone, Deserialize)]
pub struct StatusReply {
    pub running: bool,
    pub status: String,
}

// ---- transaction actions, from the generated types ----

pub fn add_bitmap(node: &str, name: &str, persistent: bool) -> qmp::TransactionAction {
    qmp::TransactionAction::block_dirty_bitmap_add(qmp::BlockDirtyBitmapAddWrapper {
        data: qmp::BlockDirtyBitmapAdd {
            node: node.into(),
            name: name.into(),
            persistent: Some(persistent),
            disabled: None,
            granularity: None,
        },
    })
}

fn bitmap(node: &str, name: &str) -> qmp::BlockDirtyBitmapWrapper {
    qmp::BlockDirtyBitmapWrapper {
        data: qmp::BlockDirtyBitmap {
            node: node.into(),
            name: name.into(),
        },
    }
}

pub fn disable_bitmap(node: &str, name: &str) -> qmp::TransactionAction {
    qmp::TransactionAction::block_dirty_bitmap_disable(bitmap(node, name))
}

pub fn remove_bitmap(node: &str, name: &str) -> qmp::TransactionAction {
    qmp::TransactionAction::block_dirty_bitmap_remove(bitmap(node, name))
}

/// Merges `source` into `target` (both on `node`): the undo of a cut that failed.
pub fn merge_bitmap(node: &str, source: &str, target: &str) -> qmp::TransactionAction {
    qmp::TransactionAction::block_dirty_bitmap_merge(qmp::BlockDirtyBitmapMergeWrapper {
        data: qmp::BlockDirtyBitmapMerge {
            node: node.into(),
            target: target.into(),
            bitmaps: vec![qmp::BlockDirtyBitmapOrStr::local(source.into())],
        },
    })
}

/// A `blockdev-backup` with `sync: none`: from now on QEMU copies each block into
/// `target` just before the guest overwrites it, so `target` reads as the disk at this
/// instant. It runs until cancelled.
pub fn fleece(job_id: &str, device: &str, target: &str) -> qmp::TransactionAction {
    qmp::TransactionAction::blockdev_backup(qmp::BlockdevBackupWrapper {
        data: qmp::BlockdevBackup {
            target: target.into(),
            base: qmp::BackupCommon {
                job_id: Some(job_id.into()),
                device: device.into(),
                sync: qmp::MirrorSyncMode::none,
                auto_dismiss: Some(true),
                auto_finalize: None,
                bitmap: None,
                bitmap_mode: None,
                compress: None,
                discard_source: None,
                filter_node_name: None,
                on_source_error: None,
                on_target_error: None,
                speed: None,
                x_perf: None,
            },
        },
    })
}

pub fn transaction(actions: Vec<qmp::TransactionAction>) -> qmp::transaction {
    qmp::transaction {
        actions,
        properties: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `query-named-block-nodes` entry as QEMU 7.2 sends it while a fleecing job runs:
    /// the backup job's internal bitmap has no name. Parsing it once failed a cut.
    #[test]
    fn nodes_with_internal_nameless_bitmaps_parse() {
        let reply = r#"[{"node-name":"vda","drv":"qcow2","ro":false,"file":"/d.qcow2",
            "image":{"virtual-size":67108864,"actual-size":19070976,"filename":"/d.qcow2","format":"qcow2"},
            "dirty-bitmaps":[
              {"busy":true,"recording":true,"persistent":false,"granularity":65536,"count":0},
              {"name":"lifeboat-2","busy":false,"recording":true,"persistent":true,"granularity":65536,"count":131072}
            ],"unknown-future-field":1}]"#;
        let nodes: Vec<NamedNode> = serde_json::from_str(reply).unwrap();
        assert_eq!(nodes[0].dirty_bitmaps.len(), 2);
        assert_eq!(nodes[0].dirty_bitmaps[0].name, "");
        assert_eq!(nodes[0].dirty_bitmaps[1].count, 131072);
        assert_eq!(nodes[0].image.virtual_size, 64 << 20);
    }

    #[test]
    fn transaction_actions_serialise_as_qemu_expects() {
        let t = transaction(vec![
            add_bitmap("vda", "lifeboat-2", true),
            disable_bitmap("vda", "lifeboat-1"),
            fleece("lb-fleece-vda", "vda", "lb-fleece-vda"),
        ]);
        let json = serde_json::to_value(&t).unwrap();
        let a = &json["actions"];
        assert_eq!(a[0]["type"], "block-dirty-bitmap-add");
        assert_eq!(a[0]["data"]["persistent"], true);
        assert_eq!(a[1]["type"], "block-dirty-bitmap-disable");
        assert_eq!(a[2]["type"], "blockdev-backup");
        assert_eq!(a[2]["data"]["sync"], "none");
        assert_eq!(a[2]["data"]["job-id"], "lb-fleece-vda");
        // Fields newer than QEMU 7.2 must not be sent.
        assert!(a[2]["data"].get("discard-source").is_none());
    }
}
