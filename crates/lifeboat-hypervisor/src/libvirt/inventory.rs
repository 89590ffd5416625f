//! The domains of a libvirt host, defined by anyone (virsh, virt-manager, virt-install,
//! Cockpit), running or not, read through libvirt's own API (the `virt` crate, libvirt's
//! maintained Rust binding of libvirt.so) and described from their XML.

use serde::Serialize;

use crate::hypervisor::VmState;
use crate::libvirt::domain_xml::{self, DomainDescription, DomainXmlError};

/// libvirt's system instance: the domains an administrator manages.
pub const SYSTEM_URI: &str = "qemu:///system";

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("cannot reach libvirt at {uri}: {reason} (is libvirtd running? `virsh -c {uri} list` tells)")]
    Connect { uri: String, reason: String },
    #[error("libvirt at {uri}: {what}: {reason}")]
    Call {
        uri: String,
        what: String,
        reason: String,
    },
    #[error("libvirt at {uri}: domain {domain}: {source}")]
    Xml {
        uri: String,
        domain: String,
        #[source]
        source: DomainXmlError,
    },
}

/// One domain as the inventory shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LibvirtDomain {
    #[serde(flatten)]
    pub description: DomainDescription,
    pub state: VmState,
    /// Its XML as libvirt gave it (stored with each point, to define it again elsewhere).
    #[serde(skip)]
    pub xml: String,
}

/// Every domain defined at `uri`, in name order. Blocking calls run off the async
/// workers. A domain whose XML cannot be read as a domain fails the whole listing, with
/// its name: an inventory that silently drops a VM would leave it unprotected unnoticed.
pub async fn list(uri: &str) -> Result<Vec<LibvirtDomain>, LibvirtError> {
    let uri = uri.to_string();
    crate::libvirt::call::quiet_libvirt();
    tokio::task::spawn_blocking(move || list_blocking(&uri))
        .await
        .map_err(|e| LibvirtError::Call {
            uri: String::new(),
            what: "listing domains".into(),
            reason: e.to_string(),
        })?
}

fn list_blocking(uri: &str) -> Result<Vec<LibvirtDomain>, LibvirtError> {
    let call = |what: &str, e: virt::error::Error| LibvirtError::Call {
        uri: uri.to_string(),
        what: what.to_string(),
        reason: e.to_string(),
    };
    let conn = virt::connect::Connect::open(Some(uri)).map_err(|e| LibvirtError::Connect {
        uri: uri.to_string(),
        reason: e.to_string(),
    })?;
    let domains = conn
        .list_all_domains(0)
        .map_err(|e| call("listing domains", e))?;
    let mut out = Vec::with_capacity(domains.len());
    for d in domains {
        let name = d.name().map_err(|e| call("a domain's name", e))?;
        let xml = d
            .xml_desc(0)
            .map_err(|e| call(&format!("the XML of {name}"), e))?;
        let (state, _reason) = d
            .state()
            .map_err(|e| call(&format!("the state of {name}"), e))?;
        let description = domain_xml::parse(&xml).map_err(|source| LibvirtError::Xml {
            uri: uri.to_string(),
            domain: name.clone(),
            source,
        })?;
        out.push(LibvirtDomain {
            description,
            state: vm_state(state),
            xml,
        });
    }
    out.sort_by(|a, b| a.description.name.cmp(&b.description.name));
    Ok(out)
}

/// libvirt's domain state in the agent's words.
pub(crate) fn vm_state(state: virt::domain::DomainStateEnum) -> VmState {
    use virt::domain::DomainState as S;
    use virt::enumutil::Enum;
    match state {
        Enum::Known(S::Running | S::Blocked) => VmState::Running,
        Enum::Known(S::Shutoff) => VmState::Stopped,
        Enum::Known(S::Paused) => VmState::Paused("paused".into()),
        Enum::Known(S::Shutdown) => VmState::Paused("shutting down".into()),
        Enum::Known(S::PMSuspended) => VmState::Paused("suspended".into()),
        Enum::Known(S::Crashed) => VmState::Crashed("crashed".into()),
        Enum::Known(S::NoState) => VmState::Paused("no state".into()),
        Enum::Unknown(n) => VmState::Paused(format!("libvirt state {n}")),
    }
}
