//! Which agent versions a server works with. Server and agents speak one API whose
//! requests and journals change between release lines, so an agent and a server of
//! different lines are refused at enrollment and shown as skewed afterwards
//! (docs/install.md, "Upgrading"). A release line is the major version, and the minor
//! too while the major is 0 (semver: 0.x minors may break). Patch releases of one line
//! mix freely.

/// An agent of another release line than its server's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct VersionSkew {
    pub server: String,
    pub agent: String,
}

impl VersionSkew {
    /// What is wrong and what to do, for an operator.
    pub fn message(&self) -> String {
        let (Some(s), Some(a)) = (line(&self.server), line(&self.agent)) else {
            return format!(
                "agent version {:?} cannot be compared with server version {}: install the \
                 server's version on the agent",
                self.agent, self.server
            );
        };
        if a > s {
            format!(
                "the agent runs Lifeboat {}, newer than the server's {}: upgrade the server \
                 first (servers are upgraded before their agents)",
                self.agent, self.server
            )
        } else {
            format!(
                "the agent runs Lifeboat {}, older than the server's {}: upgrade the agent \
                 to {}",
                self.agent, self.server, self.server
            )
        }
    }
}

/// The release line of `version` ("0.1.3" → (0, 1); "1.4.0" → (1, 0)); `None` when it
/// is not `MAJOR.MINOR.PATCH` (a pre-release suffix is allowed).
fn line(version: &str) -> Option<(u64, u64)> {
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let major: u64 = parts.next()?.parse().ok()?;
    let minor: u64 = parts.next()?.parse().ok()?;
    let _patch: u64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(if major == 0 { (0, minor) } else { (major, 0) })
}

/// `None` when an agent of version `agent` works with a server of version `server`.
pub fn skew(server: &str, agent: &str) -> Option<VersionSkew> {
    match (line(server), line(agent)) {
        (Some(s), Some(a)) if s == a => None,
        _ => Some(VersionSkew {
            server: server.to_string(),
            agent: agent.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::skew;

    #[test]
    fn patch_releases_mix_and_release_lines_do_not() {
        assert_eq!(skew("0.1.0", "0.1.7"), None);
        assert_eq!(skew("1.2.0", "1.5.3"), None);
        assert_eq!(skew("0.2.0-rc.1", "0.2.1"), None);
        let newer = skew("0.1.0", "0.2.0").unwrap().to_string();
        assert!(newer.contains("upgrade the server first"), "{newer}");
        let older = skew("0.2.1", "0.1.9").unwrap().to_string();
        assert!(older.contains("upgrade the agent to 0.2.1"), "{older}");
        assert!(skew("2.0.0", "1.9.0").is_some());
        let odd = skew("0.1.0", "banana").unwrap().to_string();
        assert!(odd.contains("cannot be compared"), "{odd}");
        assert!(skew("0.1.0", "0.1").is_some());
        assert!(skew("0.1.0", "0.1.0.0").is_some());
    }
}
