//! The libvirt driver, growing: so far the inventory of a libvirt host's domains, read
//! through libvirt's API and described from their XML. Protection (checkpoints and
//! pull-mode `backup-begin`) and recovery onto a libvirt host come next (issue 13); until
//! then `lifeboat agent --hypervisor libvirt` is refused.

pub mod backup;
mod call;
pub mod define;
pub mod domain_xml;
pub mod driver;
pub mod fence;
pub mod inventory;
pub mod tracking;

pub use backup::{BackupRequest, LibvirtCut};
pub use domain_xml::{DiskSource, DiskSourceKind, DomainDescription, DomainXmlError, Firmware};
pub use driver::{DomainCut, LibvirtConfig, LibvirtDriver};
pub use inventory::{list, LibvirtDomain, LibvirtError, SYSTEM_URI};
