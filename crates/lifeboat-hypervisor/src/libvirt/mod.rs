//! The libvirt driver, growing: so far the inventory of a libvirt host's domains, read
//! through libvirt's API and described from their XML. Protection (checkpoints and
//! pull-mode `backup-begin`) and recovery onto a libvirt host come next (issue 13); until
//! then `lifeboat agent --hypervisor libvirt` is refused.

pub mod backup;
mod call;
pub mod driver;
pub mod tracking;
pub mod domain_xml;
pub mod inventory;

pub use backup::{BackupRequest, LibvirtCut};
pub use driver::{DomainCut, LibvirtConfig, LibvirtDriver};
pub use domain_xml::{DiskSource, DiskSourceKind, DomainDescription, DomainXmlError, Firmware};
pub use inventory::{list, LibvirtDomain, LibvirtError, SYSTEM_URI};
