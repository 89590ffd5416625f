//! The protection state machine (DESIGN.md, "Operations").
//!
//! ```text
//!                 SyncStarted              Healthy
//!   (new) Enabling ─────────► InitialSync ─────────► Protected ◄──────┐
//!            │                    │  Unhealthy          │  ▲ Healthy   │
//!            │                    └───────────► Degraded ─┘           │
//!            │ Disable (from Enabling, InitialSync, Protected,        │
//!            ▼          Degraded, FailedBack)                         │
//!        Disabling ── DisableUndone ─► InitialSync | Protected        │
//!                                                                     │
//!   Protected | Degraded | FailedBack ── FailOver ─► FailingOver ─────┤ FailoverUndone
//!                                                       │ FailedOverTo
//!                                                       ▼
//!      ReprotectUndone ┌────────────────────────► FailedOver ◄───────────────┐
//!                      │             Reprotect      │ │ FailBack            │
//!                      └── Reprotecting ◄───────────┘ ▼                     │
//!                              │ Reprotected     FailingBack ── FailbackUndone
//!                              ▼                    ▲ │ CameHome   (back where it came from)
//!                       ProtectedReversed ──────────┘ ▼
//!                        │  ▲   FailBack           FailedBack ── Reprotect ─► Protected
//!             Unhealthy  ▼  │ Healthy
//!                       DegradedReversed ── FailBack ─► FailingBack
//! ```
//!
//! `ProtectedReversed`: after a committed failover, the VM runs at the recovery site and
//! is replicated from there into the vault; home (fenced) is its recovery host. A failback
//! from it (planned: only the delta; or unplanned, after the recovery site is lost: from
//! its newest point) brings it home. `DegradedReversed` is the same VM whose syncs from
//! the recovery site fail or whose newest point is older than its policy allows, as
//! `Degraded` is for a VM protected from home.
//!
//! Unprotected is the absence of a row. A test failover and a drill run beside
//! `Protected` and never change the state. [`ProtectionState::on`] is the one transition
//! function: the server's store refuses any state change it does not allow.

use serde::{Deserialize, Serialize};

/// Where a protected VM is in its life (see the module's diagram).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProtectionState {
    /// Replication was asked for; no sync has started yet.
    #[default]
    Enabling,
    /// The first full copy runs: no recovery point yet.
    InitialSync,
    /// Points are taken within the policy's RPO.
    Protected,
    /// Syncs fail, or the newest point is older than the policy allows.
    Degraded,
    /// `unprotect` is stopping it: no new sync starts.
    Disabling,
    /// A planned or unplanned failover is moving it to its recovery host: no new sync.
    FailingOver,
    /// It runs on its recovery host; the source is fenced and not replicated.
    FailedOver,
    /// `failback` is bringing it home: no sync.
    FailingBack,
    /// Home again, replication paused until `reprotect`.
    FailedBack,
    /// `reprotect` after a committed failover: the first point of the VM where it runs now
    /// is being taken (an incremental over the failover's point).
    Reprotecting,
    /// It runs at the recovery site and is replicated from there into the vault; home,
    /// fenced, is its recovery host.
    ProtectedReversed,
    /// Replicated from the recovery site, but its syncs fail or its newest point is older
    /// than the policy allows (the recovery host unreachable, the vault gone…).
    DegradedReversed,
}

crate::named_enum!(ProtectionState, "protection state", {
    Enabling => "enabling",
    InitialSync => "initial_sync",
    Protected => "protected",
    Degraded => "degraded",
    Disabling => "disabling",
    FailingOver => "failing_over",
    FailedOver => "failed_over",
    FailingBack => "failing_back",
    FailedBack => "failed_back",
    Reprotecting => "reprotecting",
    ProtectedReversed => "protected_reversed",
    DegradedReversed => "degraded_reversed",
});

/// What happens to a protection; [`ProtectionState::on`] says where it leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// Replication asked its agent for a sync.
    SyncStarted,
    /// The newest point is within the policy's RPO and syncs succeed.
    Healthy,
    /// Syncs fail in a row, or the RPO is over the policy's threshold.
    Unhealthy,
    /// `unprotect` began.
    Disable,
    /// `unprotect` failed before it removed anything: replication goes on.
    DisableUndone { has_point: bool },
    /// A planned or unplanned failover began (or an interrupted one is run again).
    FailOver,
    /// The VM runs on its recovery host.
    FailedOverTo,
    /// A failover was undone before its point of no return: the VM runs at home.
    FailoverUndone,
    /// `failback` began (or an interrupted one is run again).
    FailBack,
    /// The VM runs at home again.
    CameHome,
    /// A failback was undone before its point of no return: the VM runs away still,
    /// replicated from there if it was (`reversed`).
    FailbackUndone { reversed: bool },
    /// `reprotect`: after a failback replication resumes from home; after a committed
    /// failover it begins where the VM runs now.
    Reprotect,
    /// The first point of the VM where it runs now is in the vault.
    Reprotected,
    /// A reprotect of a failed-over VM was undone before its first point.
    ReprotectUndone,
}

impl Event {
    /// Every event, for checks that need to know whether any event leads from one state
    /// to another.
    pub const ALL: &'static [Event] = &[
        Event::SyncStarted,
        Event::Healthy,
        Event::Unhealthy,
        Event::Disable,
        Event::DisableUndone { has_point: false },
        Event::DisableUndone { has_point: true },
        Event::FailOver,
        Event::FailedOverTo,
        Event::FailoverUndone,
        Event::FailBack,
        Event::CameHome,
        Event::FailbackUndone { reversed: false },
        Event::FailbackUndone { reversed: true },
        Event::Reprotect,
        Event::Reprotected,
        Event::ReprotectUndone,
    ];
}

/// An event the state does not allow, with what to do instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{vm_is}: {hint}")]
pub struct Refusal {
    pub from: ProtectionState,
    pub event: Event,
    vm_is: String,
    hint: &'static str,
}

impl ProtectionState {
    /// The one transition function: the state `event` leads to from `self`, or why it
    /// cannot happen now.
    pub fn on(self, event: Event) -> Result<ProtectionState, Refusal> {
        use Event as E;
        use ProtectionState as S;
        let next = match (self, event) {
            (S::Enabling | S::InitialSync, E::SyncStarted) => S::InitialSync,
            (
                S::Protected | S::Degraded | S::ProtectedReversed | S::DegradedReversed,
                E::SyncStarted,
            ) => self,
            // Replicated from the recovery site: healthy or not, it stays reversed.
            (S::ProtectedReversed | S::DegradedReversed, E::Healthy) => S::ProtectedReversed,
            (S::ProtectedReversed | S::DegradedReversed, E::Unhealthy) => S::DegradedReversed,
            (S::Enabling | S::InitialSync | S::Protected | S::Degraded, E::Healthy) => S::Protected,
            (S::Enabling | S::InitialSync | S::Protected | S::Degraded, E::Unhealthy) => {
                S::Degraded
            }
            (
                S::Enabling | S::InitialSync | S::Protected | S::Degraded | S::FailedBack,
                E::Disable,
            ) => S::Disabling,
            (S::Disabling, E::DisableUndone { has_point }) => {
                if has_point {
                    S::Protected
                } else {
                    S::InitialSync
                }
            }
            (S::Protected | S::Degraded | S::FailedBack | S::FailingOver, E::FailOver) => {
                S::FailingOver
            }
            (S::FailingOver, E::FailedOverTo) => S::FailedOver,
            (S::FailingOver, E::FailoverUndone) => S::Protected,
            (
                S::FailedOver | S::FailingBack | S::ProtectedReversed | S::DegradedReversed,
                E::FailBack,
            ) => S::FailingBack,
            (S::FailingBack, E::CameHome) => S::FailedBack,
            (S::FailingBack, E::FailbackUndone { reversed }) => {
                if reversed {
                    S::ProtectedReversed
                } else {
                    S::FailedOver
                }
            }
            (S::FailedBack, E::Reprotect) => S::Protected,
            (S::FailedOver | S::Reprotecting, E::Reprotect) => S::Reprotecting,
            (S::Reprotecting, E::Reprotected) => S::ProtectedReversed,
            (S::Reprotecting, E::ReprotectUndone) => S::FailedOver,
            _ => return Err(self.refuse(event)),
        };
        Ok(next)
    }

    /// Whether some event leads from `self` to `to` (staying put is always allowed).
    pub fn may_become(self, to: ProtectionState) -> bool {
        self == to || Event::ALL.iter().any(|e| self.on(*e) == Ok(to))
    }

    /// Whether replication's own events (a sync started, healthy, unhealthy) lead from
    /// `self` to `to`: the only state changes a whole-row save of replication's
    /// bookkeeping may make. Moves and `unprotect` go through [`ProtectionState::on`].
    pub fn replication_may_become(self, to: ProtectionState) -> bool {
        self == to
            || [Event::SyncStarted, Event::Healthy, Event::Unhealthy]
                .iter()
                .any(|e| self.on(*e) == Ok(to))
    }

    fn refuse(self, event: Event) -> Refusal {
        use ProtectionState as S;
        let hint = match self {
            S::Enabling | S::InitialSync => {
                "it has no recovery point yet; wait for the initial sync (`lifeboat protect VM --wait`)"
            }
            S::Disabling => "it is being unprotected",
            S::FailingOver => "a failover moves it now; wait for that operation to end",
            S::FailingBack => "a failback moves it now; wait for that operation to end",
            S::FailedOver => {
                "it runs on its recovery host; `lifeboat failback VM` brings it home first"
            }
            S::Reprotecting => "a reprotect takes its first point where it runs now; wait for that operation to end",
            S::ProtectedReversed | S::DegradedReversed => match event {
                Event::Reprotect => "it is protected already, from its recovery host",
                _ => "it runs on its recovery host, replicated from there; `lifeboat failback VM` brings it home (`--unplanned` if that host is lost)",
            },
            S::FailedBack => "it is home again and waits for `lifeboat reprotect VM`",
            S::Protected | S::Degraded => match event {
                Event::FailBack | Event::CameHome | Event::FailbackUndone { .. } => {
                    "it has not failed over"
                }
                Event::Reprotect => "it is protected already",
                _ => "that does not apply to a protected VM",
            },
        };
        Refusal {
            from: self,
            event,
            vm_is: format!("the VM is {}", self.as_str()),
            hint,
        }
    }

    /// The VM is (being) moved away or back: replication starts no sync from home.
    pub fn is_failover(self) -> bool {
        matches!(
            self,
            ProtectionState::FailingOver
                | ProtectionState::FailedOver
                | ProtectionState::FailingBack
                | ProtectionState::FailedBack
                | ProtectionState::Reprotecting
                | ProtectionState::ProtectedReversed
                | ProtectionState::DegradedReversed
        )
    }

    /// The VM runs at the recovery site and is replicated from there (healthy or not).
    pub fn is_reversed(self) -> bool {
        matches!(
            self,
            ProtectionState::ProtectedReversed | ProtectionState::DegradedReversed
        )
    }

    /// Replication is failing or behind its policy, wherever it runs from.
    pub fn is_degraded(self) -> bool {
        matches!(
            self,
            ProtectionState::Degraded | ProtectionState::DegradedReversed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for s in ProtectionState::ALL {
            assert_eq!(s.as_str().parse::<ProtectionState>().unwrap(), *s);
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        let e = "running".parse::<ProtectionState>().unwrap_err();
        assert!(e.to_string().contains("initial_sync"), "{e}");
    }

    #[test]
    fn the_diagram_holds() {
        use Event as E;
        use ProtectionState as S;
        // The life of a VM that fails over, comes home and is protected again.
        let mut s = S::Enabling;
        for e in [
            E::SyncStarted,
            E::Healthy,
            E::Unhealthy,
            E::Healthy,
            E::FailOver,
            E::FailedOverTo,
            E::FailBack,
            E::CameHome,
            E::Reprotect,
        ] {
            s = s.on(e).unwrap();
        }
        assert_eq!(s, S::Protected);
        // Undone moves go back where they came from.
        assert_eq!(S::FailingOver.on(E::FailoverUndone), Ok(S::Protected));
        assert_eq!(
            S::FailingBack.on(E::FailbackUndone { reversed: false }),
            Ok(S::FailedOver)
        );
        assert_eq!(
            S::FailingBack.on(E::FailbackUndone { reversed: true }),
            Ok(S::ProtectedReversed)
        );
        assert_eq!(S::Reprotecting.on(E::ReprotectUndone), Ok(S::FailedOver));
    }

    #[test]
    fn reversed_protection_follows_a_committed_failover() {
        use Event as E;
        use ProtectionState as S;
        let mut s = S::FailedOver;
        for e in [
            E::Reprotect,
            E::Reprotected,
            E::SyncStarted,
            E::Unhealthy,
            E::Healthy,
        ] {
            s = s.on(e).unwrap();
        }
        assert_eq!(s, S::ProtectedReversed);
        // Failing syncs from the recovery site make it degraded, and it stays reversed.
        assert_eq!(
            S::ProtectedReversed.on(E::Unhealthy),
            Ok(S::DegradedReversed)
        );
        assert_eq!(
            S::DegradedReversed.on(E::SyncStarted),
            Ok(S::DegradedReversed)
        );
        assert_eq!(S::DegradedReversed.on(E::Healthy), Ok(S::ProtectedReversed));
        // Replication from the recovery site never turns it into a VM protected from home.
        for from in [S::ProtectedReversed, S::DegradedReversed] {
            assert!(!from.replication_may_become(S::Protected));
            assert!(!from.replication_may_become(S::Degraded));
        }
        // A degraded reversed VM still goes home by a failback (the recovery site lost).
        assert_eq!(S::DegradedReversed.on(E::FailBack), Ok(S::FailingBack));
        for e in [E::FailOver, E::Disable, E::Reprotect] {
            assert!(S::DegradedReversed.on(e).is_err());
        }
        // It goes home only by a failback; it cannot fail over or be unprotected.
        assert_eq!(S::ProtectedReversed.on(E::FailBack), Ok(S::FailingBack));
        for e in [E::FailOver, E::Disable, E::Reprotect] {
            let r = S::ProtectedReversed.on(e).unwrap_err();
            assert!(r.to_string().contains("recovery host"), "{r}");
        }
        assert_eq!(S::FailingBack.on(E::CameHome), Ok(S::FailedBack));
    }

    #[test]
    fn refusals_say_why() {
        use Event as E;
        use ProtectionState as S;
        // `unprotect` never turns a VM running on its recovery host into `disabling`.
        let r = S::FailedOver.on(E::Disable).unwrap_err();
        assert!(r.to_string().contains("failback"), "{r}");
        assert!(S::InitialSync.on(E::FailOver).is_err());
        assert!(S::Protected
            .on(E::FailBack)
            .unwrap_err()
            .to_string()
            .contains("not failed over"));
        assert!(
            S::FailedOver.on(E::Healthy).is_err(),
            "replication never revives a moved VM"
        );
        assert!(!S::FailedOver.may_become(S::Protected));
        assert!(S::FailingOver.may_become(S::Protected));
        assert!(!S::Disabling.may_become(S::FailingOver));
        // Replication's bookkeeping never ends a move.
        assert!(!S::FailingOver.replication_may_become(S::Protected));
        assert!(!S::FailedBack.replication_may_become(S::Protected));
        assert!(S::InitialSync.replication_may_become(S::Degraded));
    }
}
