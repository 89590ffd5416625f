//! The parts of pages that change while they are open, each rendered by one function
//! for both the page and the live stream (`live`), under the element id it fills.

use maud::{html, Markup};

use super::layout::{age, columns, state_label, time};
use super::pages::recovery_kind_label;
use crate::api::protection::ProtectionView;
use crate::api::status::Overview;
use crate::db::{Operation, Recovery};
use crate::failover::RecoveryView;
use lifeboat_types::{RecoveryKind, RecoveryState};

/// Whether a test copy of protection `id` runs.
pub fn test_running(recoveries: &[Recovery], id: &str) -> bool {
    recoveries
        .iter()
        .any(|r| r.protection_id == id && r.kind == RecoveryKind::Test)
}

/// The live parts of a protection's row: state, RPO, last point (ids `state-…`, `rpo-…`,
/// `point-…`).
pub fn protection_cells(v: &ProtectionView, recoveries: &[Recovery]) -> [(String, Markup); 3] {
    [
        (
            format!("state-{}", v.id),
            state_label(v, test_running(recoveries, &v.id)),
        ),
        (format!("rpo-{}", v.id), html! { (age(v.rpo_seconds)) }),
        (
            format!("point-{}", v.id),
            html! {
                @match &v.last_point_time {
                    Some(t) => { (time(t)) " " span class="muted" { "(" (v.last_consistency.as_deref().unwrap_or("?")) ")" } }
                    None => "-",
                }
            },
        ),
    ]
}

/// Counts by state and the worst RPO (id `counts`).
pub fn counts(o: &Overview) -> Markup {
    let n = |k: &str| o.by_state.get(k).copied().unwrap_or(0);
    html! {
        dl class="counts" {
            div { dt { "Hosts" } dd { (o.hosts) } }
            div { dt { "Protected VMs" } dd { (o.protected_vms) } }
            div { dt { "Replicating" } dd { (n("enabling") + n("initial_sync")) } }
            div { dt { "Protected" } dd { (n("protected")) } }
            div { dt { "Degraded" } dd class=(if n("degraded") > 0 { "bad" } else { "" }) { (n("degraded")) } }
            div { dt { "Failed over" } dd { (n("failed_over") + n("failing_over")) } }
            @if n("protected_reversed") + n("reprotecting") > 0 { div { dt { "Protected at the recovery site" } dd { (n("protected_reversed") + n("reprotecting")) } } }
            @if n("degraded_reversed") > 0 { div { dt { "Degraded at the recovery site" } dd class="bad" { (n("degraded_reversed")) } } }
            div { dt { "Back home, not replicating" } dd { (n("failing_back") + n("failed_back")) } }
            @if n("disabling") > 0 { div { dt { "Disabling" } dd { (n("disabling")) } } }
            div {
                dt { "Worst RPO" }
                dd {
                    @match &o.worst_rpo {
                        Some(w) => { (age(Some(w.rpo_seconds))) " " span class="muted" { "(" (w.vm) " on " (w.host) ")" } }
                        None => "-",
                    }
                }
            }
        }
    }
}

/// Running operations with their progress (id `running-ops`).
pub fn running_ops(o: &Overview) -> Markup {
    html! {
        @if o.running_operations.is_empty() {
            p class="muted" { "No operation is running." }
        } @else {
            ul class="ops" {
                @for op in &o.running_operations {
                    li {
                        strong { (op.kind) } " " (op.vm) ": "
                        @if op.undoing { "undoing — " }
                        (op.step)
                        " "
                        @match (sync_progress(o, op), op.steps_total) {
                            (Some(pct), _) => progress value=(pct) max="100" aria-label={ (op.kind) " of " (op.vm) } { (pct) "%" },
                            // An operation on the engine: the steps done of its list.
                            (None, total) if total > 0 => {
                                progress value=(op.steps_done) max=(total) aria-label={ (op.kind) " of " (op.vm) } { (op.steps_done) " of " (total) }
                                " " span class="muted" { "step " (op.steps_done.min(total - 1) + 1) " of " (total) }
                            }
                            _ => progress aria-label={ (op.kind) " of " (op.vm) } {},
                        }
                    }
                }
            }
        }
    }
}

/// For an enable operation, the initial sync's percent done.
fn sync_progress(o: &Overview, op: &Operation) -> Option<i64> {
    // Other operations have no bytes to count; a periodic sync's are not theirs.
    if op.kind != lifeboat_types::OperationKind::Enable {
        return None;
    }
    let p = o
        .protections
        .iter()
        .find(|p| p.host_id == op.host_id && p.vm == op.vm)?;
    let s = p.sync.as_ref().filter(|s| s.bytes_total > 0)?;
    Some((s.bytes_done * 100 / s.bytes_total).clamp(0, 100))
}

/// VMs brought up from recovery points (id `recoveries`).
pub fn recoveries_table(views: &[RecoveryView]) -> Markup {
    html! {
        @if views.is_empty() {
            p class="muted" { "No VM runs from a recovery point." }
        } @else {
            div class="scroll" {
                table {
                    (columns(&["VM", "Recovery host", "Kind", "Origin", "Recovery point", "State", "Local", "Reach it at"]))
                    tbody {
                        @for r in views {
                            @let rec = &r.recovery;
                            @let pct = if rec.hydrated { 100 } else if rec.hydration_total > 0 { (rec.hydrated_bytes * 100 / rec.hydration_total).clamp(0, 100) } else { 0 };
                            tr data-vm=(rec.vm) {
                                th scope="row" { (rec.vm) }
                                td { (r.host) }
                                td { (recovery_kind_label(rec.kind)) }
                                td { (r.origin_host) "/" (rec.origin_vm) }
                                td { (time(&rec.point_time)) br; span class="muted mono" { (rec.point) } }
                                // The VM as its agent last reported it; the recovery's own state when it is not simply running.
                                td {
                                    (if rec.vm_state.is_empty() { "?" } else { rec.vm_state.as_str() })
                                    @if rec.state != RecoveryState::Running { " (" (rec.state.as_str()) ")" }
                                    @if !rec.error.is_empty() { span class="reason" { (rec.error) } }
                                }
                                td { progress value=(pct) max="100" aria-label={ "Hydration of " (rec.vm) } { (pct) "%" } " " (pct) "%" }
                                td { (forwards(&rec.forwards)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn forwards(list: &[lifeboat_types::PortForward]) -> Markup {
    html! {
        @for f in list {
            span class="mono" { "port " (f.host_port) " → guest " (f.guest_port) } br;
        }
        @if list.is_empty() { "-" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The live stream shows an operation's progress: its step, and how far down its
    /// list of steps it is (or that it is undoing).
    #[test]
    fn running_operations_show_their_step_and_progress() {
        let op: Operation = serde_json::from_value(serde_json::json!({
            "id": "op-1", "host_id": "h1", "vm": "web", "protection_id": "p1",
            "kind": "failover-planned", "status": "running", "step": "final sync of the stopped VM",
            "log": "", "created_at": "", "updated_at": "", "steps_done": 4, "steps_total": 8,
            "undoing": false, "past_no_return": false, "cancel_requested": false,
            "attempts": 0, "result": null, "error": ""
        }))
        .unwrap();
        let mut o: Overview = serde_json::from_value(serde_json::json!({
            "hosts": 2, "protected_vms": 1, "by_state": {}, "worst_rpo": null,
            "running_operations": [], "protections": []
        }))
        .unwrap();
        o.running_operations = vec![op.clone()];
        let html = running_ops(&o).into_string();
        assert!(html.contains("final sync of the stopped VM"), "{html}");
        assert!(html.contains(r#"value="4" max="8""#), "{html}");
        assert!(html.contains("step 5 of 8"), "{html}");
        o.running_operations[0].undoing = true;
        let html = running_ops(&o).into_string();
        assert!(html.contains("undoing"), "{html}");
    }
}
