//! `PUT /api/v1/protections/{id}/network`: a protected VM's failover network settings
//! (docs/networking.md), checked against the VM's NICs and the recovery host's networks
//! before they are stored.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lifeboat_types::{MoveKind, NetworkSettings, ProtectionId, ProtectionState};
use serde::{Deserialize, Serialize};

use super::protection::{load, network_map};
use super::{db_error, error, ApiError, ServerState};
use crate::network::{check_move, vm_nics, CheckError, ASK};

/// The settings as stored, and what could not be checked now.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkSettingsSet {
    pub vm: String,
    pub network_settings: NetworkSettings,
    /// What was not checked (a recovery host that did not answer, a network whose
    /// subnet it does not know): checked again before each move.
    pub notes: Vec<String>,
}

#[utoipa::path(put, path = "/api/v1/protections/{id}/network", tag = "protection",
    params(("id" = String, Path, description = "The protection's id")),
    request_body = NetworkSettings,
    responses((status = 200, description = "Stored, with what could not be checked now", body = NetworkSettingsSet),
               (status = 400, description = "A NIC the VM lacks, an address that is no host's or outside its network's subnet, a gateway outside it, a network the recovery host lacks, a DNS record its server refuses to look up (wrong TSIG key, a zone it does not hold) or outside its zone: nothing stored", body = ApiError),
               (status = 404, description = "No such protection", body = ApiError),
               (status = 409, description = "The VM is not at home (failed over, moving): its failback restores what its failover applied; nothing stored", body = ApiError),
               (status = 503, description = "The VM's host does not answer: its NICs cannot be checked", body = ApiError)))]
pub async fn set_network(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<ProtectionId>,
    Json(req): Json<NetworkSettings>,
) -> Response {
    let req = req.without_keep_only();
    let (p, hosts) = match load(&s, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    // A failback restores what the failover applied: settings changed while the VM is
    // away (or moving) would leave it at home with the recovery site's address.
    if !matches!(
        p.state,
        ProtectionState::Protected
            | ProtectionState::Degraded
            | ProtectionState::Enabling
            | ProtectionState::InitialSync
            | ProtectionState::FailedBack
    ) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "{} is {}: its failback restores the network its failover applied; change the settings once it is home again (nothing was stored)",
                p.vm, p.state
            ),
        );
    }
    let find = |host_id: &str| hosts.iter().find(|h| h.host.id == host_id);
    // Home lists the VM's NICs, running or not (a moved VM keeps their MACs).
    let Some(vm_host) = find(&p.host_id) else {
        return error(StatusCode::NOT_FOUND, "the VM's host is no longer enrolled");
    };
    let nics = match vm_nics(vm_host, &p.vm, ASK).await {
        Ok(n) => n,
        Err(e @ CheckError::NoVm(_)) => {
            return error(StatusCode::CONFLICT, format!("{e}; nothing was stored"))
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; nothing was stored — try again when it answers"),
            )
        }
    };
    let macs: Vec<String> = nics.iter().map(|n| n.mac.clone()).collect();
    let mut notes = Vec::new();
    let checked = match find(&p.recovery_host_id) {
        None => {
            notes.push("the recovery host is no longer enrolled".to_string());
            req.check(&macs).map_err(CheckError::Refused)
        }
        Some(rhost) => {
            let kinds = [MoveKind::Failover, MoveKind::Test];
            check_move(&req, &kinds, &nics, &network_map(&p), rhost)
                .await
                .map(|n| notes.extend(n))
        }
    };
    match checked {
        Ok(()) => {}
        Err(CheckError::Refused(e)) => {
            return error(StatusCode::BAD_REQUEST, format!("{e}; nothing was stored"))
        }
        // Asked after the settings passed their own checks and the VM's NICs.
        Err(CheckError::Unreachable(e) | CheckError::NoVm(e)) => {
            notes.push(format!("{e}: checked again before each move"))
        }
    }
    if let Some(record) = &req.dns {
        // The record's server answers, knows the key and holds the zone: asked now, so a
        // wrong key is found here rather than in a failover.
        match crate::dns_switch::check(record).await {
            Ok(_) => {}
            Err(e) if e.is_settings() => {
                return error(StatusCode::BAD_REQUEST, format!("{e}; nothing was stored"))
            }
            Err(e) => notes.push(format!("{e}: checked again before each failover")),
        }
    }
    let json = match serde_json::to_string(&req) {
        Ok(j) => j,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match s.db.set_network_settings(&p.id, &json).await {
        Ok(true) => {}
        Ok(false) => return error(StatusCode::NOT_FOUND, format!("no protection {id}")),
        Err(e) => return db_error(e),
    }
    Json(NetworkSettingsSet {
        vm: p.vm.clone(),
        network_settings: req,
        notes,
    })
    .into_response()
}
