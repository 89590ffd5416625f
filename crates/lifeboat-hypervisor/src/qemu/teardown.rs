//! Removing everything a cut puts into a running QEMU — exports, the NBD server, the
//! fleecing jobs and overlays — whether the cut is ours or was left by a process that
//! died. Each step tolerates the thing being gone already, so it is safe to repeat.

use std::time::Duration;

use crate::error::{HypervisorError, Result};
use crate::qemu::commands as cmd;
use crate::qemu::cut::{qmp_error, EXPORT_PREFIX, FLEECE_PREFIX};
use crate::qemu::layout::VmDir;
use crate::qemu::qmp::Qmp;

const SETTLE: Duration = Duration::from_secs(15);

pub async fn remove_leftovers(qmp: &Qmp, dir: &VmDir) -> Result<()> {
    let vm = &dir.name;
    let exports = qmp
        .run(cmd::QueryBlockExports {})
        .await
        .map_err(qmp_error(vm, "query-block-exports"))?;
    for e in exports.iter().filter(|e| e.id.starts_with(EXPORT_PREFIX)) {
        // `hard` drops any client still connected; ours are gone, a dead owner's must go.
        let del = qapi::qmp::block_export_del {
            id: e.id.clone(),
            mode: Some(qapi::qmp::BlockExportRemoveMode::hard),
        };
        if let Err(err) = qmp.run(del).await {
            tracing::debug!(%vm, export = %e.id, "block-export-del: {err}");
        }
    }
    wait_until(dir, "NBD exports to close", || async {
        let left = qmp
            .run(cmd::QueryBlockExports {})
            .await
            .map_err(qmp_error(vm, "query-block-exports"))?;
        Ok(!left.iter().any(|e| e.id.starts_with(EXPORT_PREFIX)))
    })
    .await?;
    // Fails harmlessly when no server runs.
    let _ = qmp.run(qapi::qmp::nbd_server_stop {}).await;

    let jobs = qmp
        .run(cmd::QueryBlockJobs {})
        .await
        .map_err(qmp_error(vm, "query-block-jobs"))?;
    for j in jobs.iter().filter(|j| j.device.starts_with(FLEECE_PREFIX)) {
        let cancel = qapi::qmp::block_job_cancel {
            device: j.device.clone(),
            force: Some(true),
        };
        if let Err(err) = qmp.run(cancel).await {
            tracing::debug!(%vm, job = %j.device, "block-job-cancel: {err}");
        }
    }
    wait_until(dir, "fleecing jobs to end", || async {
        let left = qmp
            .run(cmd::QueryBlockJobs {})
            .await
            .map_err(qmp_error(vm, "query-block-jobs"))?;
        Ok(!left.iter().any(|j| j.device.starts_with(FLEECE_PREFIX)))
    })
    .await?;

    let nodes = qmp
        .run(cmd::QueryNamedBlockNodes { flat: true })
        .await
        .map_err(qmp_error(vm, "query-named-block-nodes"))?;
    for n in &nodes {
        if let Some(name) = n
            .node_name
            .as_deref()
            .filter(|n| n.starts_with(FLEECE_PREFIX))
        {
            qmp.run(qapi::qmp::blockdev_del {
                node_name: name.to_string(),
            })
            .await
            .map_err(qmp_error(vm, "blockdev-del (fleecing overlay)"))?;
        }
    }

    let _ = std::fs::remove_file(dir.nbd_socket());
    if let Ok(entries) = std::fs::read_dir(&dir.dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("fleece-") && name.ends_with(".qcow2") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

async fn wait_until<F, Fut>(dir: &VmDir, what: &str, mut done: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        if done().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HypervisorError::Timeout {
                vm: dir.name.clone(),
                what: format!("waiting for {what}"),
                secs: SETTLE.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
