//! The keys an open vault holds, and which names' points they open: the master key opens
//! every name (format 1: one set of sub-keys; format 2: each name's, derived on first
//! use), a scope key opens one name, and a vault opened without a key (the control
//! plane's maintenance) opens none but can still list, prune and read plaintext objects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::format::{MasterKey, Name, VaultKey, VaultKeys};
use crate::store::error::{Result, VaultError};

pub(crate) enum KeyRing {
    Master {
        master: MasterKey,
        /// Format 1: every name's sub-keys.
        shared: Option<Arc<VaultKeys>>,
        /// Format 2: the names used so far.
        scopes: Mutex<HashMap<Name, Arc<VaultKeys>>>,
    },
    Scope {
        name: Name,
        keys: Arc<VaultKeys>,
    },
    Keyless,
}

impl KeyRing {
    pub(crate) fn new(key: VaultKey, scoped: bool) -> KeyRing {
        match key {
            VaultKey::Master(master) => KeyRing::Master {
                shared: (!scoped).then(|| Arc::new(VaultKeys::derive(&master))),
                master,
                scopes: Mutex::default(),
            },
            VaultKey::Scope { name, key } => KeyRing::Scope {
                keys: Arc::new(VaultKeys::derive_scope(&key)),
                name,
            },
        }
    }

    /// The sub-keys of `name`'s points, or why this vault handle has none.
    pub(crate) fn for_name(&self, name: &Name, url: &str) -> Result<Arc<VaultKeys>> {
        match self {
            KeyRing::Master {
                shared: Some(keys), ..
            } => Ok(keys.clone()),
            KeyRing::Master { master, scopes, .. } => Ok(scopes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(name.clone())
                .or_insert_with(|| Arc::new(VaultKeys::derive_scope(&master.scope_key(name))))
                .clone()),
            KeyRing::Scope { name: own, keys } if own == name => Ok(keys.clone()),
            KeyRing::Scope { name: own, .. } => Err(VaultError::OtherScope {
                url: url.to_string(),
                holds: own.clone(),
                wanted: name.clone(),
            }),
            KeyRing::Keyless => Err(VaultError::NoKey {
                url: url.to_string(),
            }),
        }
    }

    /// The master key, when this handle holds it.
    pub(crate) fn master(&self) -> Option<&MasterKey> {
        match self {
            KeyRing::Master { master, .. } => Some(master),
            _ => None,
        }
    }

    /// The one name a scope key opens.
    pub(crate) fn scope(&self) -> Option<&Name> {
        match self {
            KeyRing::Scope { name, .. } => Some(name),
            _ => None,
        }
    }
}
