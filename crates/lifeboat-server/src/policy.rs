//! Protection policies: how often a VM is synced, when its RPO counts as too old, how long
//! its points are kept. Built in for now; `GET /api/v1/policies` lists them.

use std::time::Duration;

use lifeboat_agent::sync::Retention;
use serde::Serialize;

/// The shortest sync interval a policy may have.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Policy {
    pub name: &'static str,
    pub description: &'static str,
    /// A sync starts this often (a sync that runs longer delays the next one).
    pub interval_secs: u64,
    /// RPO above this makes the VM Degraded.
    pub rpo_threshold_secs: u64,
    /// Every point younger than this is kept.
    pub keep_within_secs: u64,
    /// Then the newest point of each hour, for this long.
    pub keep_hourly_secs: u64,
    /// Then the newest point of each day, for this long.
    pub keep_daily_secs: u64,
    /// An app-consistent point (filesystems frozen through qemu-guest-agent) at least
    /// this often; the points between are crash-consistent. 0: never.
    pub app_consistent_every_secs: u64,
}

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

pub const POLICIES: &[Policy] = &[
    Policy {
        name: "default",
        description: "a sync every 30 s, app-consistent hourly; Degraded past 2 minutes; every point for 24 h, hourly for 7 days, daily for 30 days",
        interval_secs: 30,
        rpo_threshold_secs: 120,
        keep_within_secs: DAY,
        keep_hourly_secs: 7 * DAY,
        keep_daily_secs: 30 * DAY,
        app_consistent_every_secs: HOUR,
    },
    Policy {
        name: "frequent",
        description: "a sync every 5 s, app-consistent every 15 minutes; Degraded past 30 s; every point for 2 h, hourly for 2 days, daily for 14 days",
        interval_secs: 5,
        rpo_threshold_secs: 30,
        keep_within_secs: 2 * HOUR,
        keep_hourly_secs: 2 * DAY,
        keep_daily_secs: 14 * DAY,
        app_consistent_every_secs: 15 * 60,
    },
    Policy {
        name: "hourly",
        description: "a sync every hour, each app-consistent; Degraded past 3 hours; hourly points for 7 days, daily for 90 days",
        interval_secs: HOUR,
        rpo_threshold_secs: 3 * HOUR,
        keep_within_secs: 0,
        keep_hourly_secs: 7 * DAY,
        keep_daily_secs: 90 * DAY,
        app_consistent_every_secs: HOUR,
    },
];

impl Policy {
    pub fn find(name: &str) -> Option<&'static Policy> {
        POLICIES.iter().find(|p| p.name == name)
    }

    pub fn names() -> String {
        POLICIES
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs).max(MIN_INTERVAL)
    }

    pub fn rpo_threshold(&self) -> Duration {
        Duration::from_secs(self.rpo_threshold_secs)
    }

    pub fn retention(&self) -> Retention {
        let some = |s: u64| (s > 0).then_some(s);
        Retention {
            keep_within_secs: some(self.keep_within_secs),
            keep_hourly_secs: some(self.keep_hourly_secs),
            keep_daily_secs: some(self.keep_daily_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_is_sane() {
        for p in POLICIES {
            assert!(p.interval() >= MIN_INTERVAL, "{}", p.name);
            assert!(p.rpo_threshold() > p.interval(), "{}", p.name);
            assert!(p.retention() != Retention::default(), "{}", p.name);
        }
        assert!(Policy::find("default").is_some());
    }
}
