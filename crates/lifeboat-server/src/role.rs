//! Roles, from least to most: a viewer reads; an operator also runs every operation on
//! VMs (protect, unprotect, test failover and cleanup, planned and unplanned failover,
//! commit, failback, reprotect, scan); an admin also enrolls hosts, manages users and
//! every API token. Which role each route needs is one table, `api::access`.

use serde::{Deserialize, Serialize};

/// `viewer` reads; `operator` also runs operations on VMs and scans; `admin` also
/// enrolls hosts and manages users and everyone's API tokens.
// Declared from least to most: the derived order makes "may" a comparison.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

#[derive(Debug, thiserror::Error)]
#[error("role {0:?} is not known: use viewer, operator or admin")]
pub struct UnknownRole(pub String);

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// "a viewer", "an operator", "an admin": for messages.
    pub fn with_article(self) -> &'static str {
        match self {
            Role::Viewer => "a viewer",
            Role::Operator => "an operator",
            Role::Admin => "an admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
        assert!(
            "Admin".parse::<Role>().is_err(),
            "stored and sent lowercase"
        );
    }
}
