//! A VM's own page: its state, recovery points, RPO chart, operations with their logs,
//! and the actions its state allows — each a dialog whose form makes the REST call the
//! CLI makes, and which says exactly what will happen before anything does.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use chrono::{Duration, Utc};
use maud::{html, Markup};

use super::chart::rpo_chart;
use super::fragments::protection_cells;
use super::layout::{age, columns, may, not_for_role, page, refused, size, time, utc};
use super::pages::{host_names, operations_list, or_fail, recovery_kind_label, vm_href};
use super::CurrentSession;
use crate::api::protection::{view, ProtectionView};
use crate::db::{Host, PointRow, ProtectionState, Recovery};
use crate::http::ServerState;
use crate::network::NicSpec;
use crate::policy::POLICIES;
use lifeboat_types::{Addressing, HostId, MoveKind, NetworkSettings, RecoveryKind, RecoveryState};

pub async fn vm_detail(
    State(s): State<Arc<ServerState>>,
    session: CurrentSession,
    Path((host_id, vm)): Path<(HostId, String)>,
) -> Response {
    let hosts = or_fail!(s.db.hosts_with_access().await);
    let Some(host) = hosts.iter().find(|h| h.host.id == host_id).map(|h| &h.host) else {
        return refused(
            StatusCode::NOT_FOUND,
            "No such host: it may have been removed. Go back to Hosts & VMs.",
        );
    };
    let protection = or_fail!(s.db.protection_of(&host_id, &vm).await);
    let recoveries = or_fail!(s.db.recoveries().await);
    let names = or_fail!(host_names(&s).await);
    let ops: Vec<_> = or_fail!(s.db.operations(100).await)
        .into_iter()
        .filter(|o| o.host_id == host_id && o.vm == vm)
        .collect();
    // A VM brought up from a point is a copy: its page says of what.
    let as_copy = recoveries
        .iter()
        .find(|r| r.host_id == host_id && r.vm == vm);
    let others: Vec<&Host> = hosts
        .iter()
        .map(|h| &h.host)
        .filter(|h| h.id != host_id)
        .collect();
    let body = match protection {
        Some(p) => {
            let v = view(&p, &hosts);
            let points = or_fail!(s.db.points(&p.id).await);
            let since = (Utc::now() - Duration::hours(24)).to_rfc3339();
            let cuts: Vec<_> = or_fail!(s.db.point_cuts(&p.id, &since).await)
                .iter()
                .filter_map(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                .map(|c| c.with_timezone(&Utc))
                .collect();
            let test_copy = recoveries
                .iter()
                .find(|r| r.protection_id == p.id && r.kind == RecoveryKind::Test);
            let moved = recoveries
                .iter()
                .find(|r| r.protection_id == p.id && r.kind != RecoveryKind::Test && r.is_the_vm());
            let key = actions_key(&v, &recoveries);
            // The NICs for the network settings dialog; the page does not wait long for a
            // host that is down (after a disaster, the usual case).
            let home = hosts
                .iter()
                .find(|h| h.host.id == host_id)
                .expect("found above");
            let nics = crate::network::vm_nics(home, &vm, std::time::Duration::from_secs(2))
                .await
                .ok();
            html! {
                (summary(&v, &recoveries))
                section aria-labelledby="actions-h" {
                    h2 id="actions-h" { "Actions" }
                    // What the actions below were drawn for; the live stream says when
                    // that changes, and the page offers a reload.
                    span id={ "actions-key-" (v.id) } data-actions-key=(key) hidden { (key) }
                    p id="actions-stale" class="flash" role="status" hidden {
                        (v.vm) "'s state changed: " a href="" { "reload the page" } " for the actions it has now."
                    }
                    @if may(&session, &Method::POST, "/api/v1/protections/{id}/failover") {
                        (actions(&v, host, &points, test_copy, moved, nics.as_deref()))
                    } @else {
                        (not_for_role(&session, "operators and admins"))
                    }
                }
                section aria-labelledby="rpo-h" {
                    h2 id="rpo-h" { "RPO" }
                    (rpo_chart(&cuts, Utc::now(), v.rpo_threshold_seconds, &v.vm))
                }
                section aria-labelledby="points-h" {
                    h2 id="points-h" { "Recovery points (" (points.len()) ")" }
                    (points_table(&points, &v.vm))
                }
                section aria-labelledby="ops-h" {
                    h2 id="ops-h" { "Operations" }
                    (operations_list(&ops, &names))
                }
            }
        }
        None => html! {
            @if let Some(r) = as_copy {
                p {
                    strong { (recovery_kind_label(r.kind)) } " of " (names.get(r.origin_host_id.as_str()).map_or("?", |n| n.as_str())) "/" (r.origin_vm)
                    ", started from the point of " (time(&r.point_time)) "."
                }
                p { "Its actions are on " a href=(vm_href(&r.origin_host_id, &r.origin_vm)) { "the page of " (r.origin_vm) } "." }
            } @else {
                p { span class="state none" { "Unprotected" } " — " (vm) " on " (host.hostname) " is not replicated." }
                section aria-labelledby="actions-h" {
                    h2 id="actions-h" { "Actions" }
                    @if may(&session, &Method::POST, "/api/v1/protections") {
                        (enable_dialog(host, &vm, &others))
                    } @else {
                        (not_for_role(&session, "operators and admins"))
                    }
                }
            }
            section aria-labelledby="ops-h" {
                h2 id="ops-h" { "Operations" }
                (operations_list(&ops, &names))
            }
        },
    };
    page(
        &format!("{vm} on {}", host.hostname),
        "/hosts",
        &session,
        body,
    )
}

/// Which set of actions a protection's state offers: when it changes, the page's actions
/// are out of date.
pub fn actions_key(v: &ProtectionView, recoveries: &[Recovery]) -> String {
    let mine = |test: bool| {
        recoveries.iter().find(|r| {
            r.protection_id == v.id && (r.kind == RecoveryKind::Test) == test && r.is_the_vm()
        })
    };
    match v.state {
        ProtectionState::Protected | ProtectionState::Degraded => match mine(true) {
            Some(_) => "protected, test copy".into(),
            None => "protected".into(),
        },
        ProtectionState::Enabling | ProtectionState::InitialSync => "replicating".into(),
        ProtectionState::FailedOver => match mine(false) {
            Some(r) if r.state == RecoveryState::Committed => "failed over, committed".into(),
            _ => "failed over".into(),
        },
        ProtectionState::FailedBack => "failed back".into(),
        ProtectionState::ProtectedReversed | ProtectionState::DegradedReversed => {
            "protected reversed".into()
        }
        _ => "busy".into(),
    }
}

fn summary(v: &ProtectionView, recoveries: &[Recovery]) -> Markup {
    let cells = protection_cells(v, recoveries);
    html! {
        dl class="facts" {
            div { dt { "State" } dd id=(cells[0].0) { (cells[0].1) } }
            div { dt { "RPO" } dd id=(cells[1].0) { (cells[1].1) } }
            div { dt { "Last recovery point" } dd id=(cells[2].0) { (cells[2].1) } }
            div { dt { "Recovery host" } dd { (v.recovery_host) } }
            div { dt { "Policy" } dd { (v.policy) " (Degraded past " (age(Some(v.rpo_threshold_seconds as f64))) ")" } }
            div { dt { "Vault" } dd class="mono" { (v.vault) } }
            div { dt { "Replicated" } dd { (size(v.bytes_replicated)) " in " (v.syncs_committed) " syncs" } }
            @if !v.network_map.is_empty() {
                div { dt { "Network mapping" } dd class="mono" { (map_text(&v.network_map)) } }
            }
            div { dt { "Addresses after a move" } dd id={ "net-" (v.id) } { (settings_text(&v.network_settings)) } }
            @if !v.last_error.is_empty() {
                div { dt { "Last error" } dd class="error" { (v.last_error) } }
            }
        }
    }
}

fn settings_text(s: &NetworkSettings) -> Markup {
    html! {
        @if s.nics.is_empty() {
            "Every NIC keeps its address."
        } @else {
            ul class="plain" {
                @for n in &s.nics {
                    li class="mono" { (n.mac) ": failover " (n.failover) "; test " (n.test) "; home " (n.home) }
                }
                @if let Some(d) = &s.dns {
                    li { "DNS " span class="mono" { (d.name) } " on " span class="mono" { (d.server) } " (TTL " (d.ttl) " s) follows failovers and failbacks" }
                }
            }
        }
    }
}

/// The network settings dialog: a row per NIC the VM has (when its host answered) or has
/// settings for, each setting in the text form the CLI takes.
fn network_dialog(base: &str, v: &ProtectionView, nics: Option<&[NicSpec]>) -> Markup {
    let mut rows: Vec<(String, String)> = nics
        .unwrap_or_default()
        .iter()
        .map(|n| (n.mac.clone(), n.network.clone()))
        .collect();
    for n in &v.network_settings.nics {
        if !rows.iter().any(|(m, _)| m.eq_ignore_ascii_case(&n.mac)) {
            rows.push((n.mac.clone(), String::new()));
        }
    }
    let keep = Addressing::Keep;
    let current = |mac: &str, kind: MoveKind| -> String {
        v.network_settings
            .nic(mac)
            .map_or(&keep, |n| n.addressing(kind))
            .to_string()
    };
    dialog(
        Action {
            id: "dlg-network",
            label: "Network settings",
            api: &format!("{base}/network"),
            method: "PUT",
            submit: "Check and save",
            danger: false,
        },
        html! {
            p { "Per NIC, the address " (v.vm) " takes on " (v.recovery_host) " after a failover, in a test copy, and back home after a failback: "
                code { "keep" } ", " code { "dhcp" } ", or " code { "10.20.0.5/24,gw=10.20.0.1,dns=10.20.0.53" } ". "
                "They are checked against the VM's NICs and the recovery host's networks before they are saved, and again before each move." }
            @if nics.is_none() {
                p class="error" { "The VM's host did not answer: only NICs with settings are listed, and saving needs the host." }
            }
        },
        html! {
            // The DNS record is set with the CLI or the API; saving here keeps it.
            @if let Some(d) = &v.network_settings.dns {
                input type="hidden" name="dns" data-type="json" value=(serde_json::to_string(d).unwrap_or_default());
            }
            @for (i, (mac, network)) in rows.iter().enumerate() {
                fieldset data-mac=(mac) {
                    legend class="mono" { (mac) @if !network.is_empty() { " on " (network) } }
                    @for (kind, name, label) in [(MoveKind::Failover, "failover", "After a failover"), (MoveKind::Test, "test", "In a test copy"), (MoveKind::Failback, "home", "At home (failback)")] {
                        div class="field" {
                            label for={ "nic" (i) "-" (name) } { (label) }
                            input id={ "nic" (i) "-" (name) } name=(name) type="text" value=(current(mac, kind)) class="mono";
                        }
                    }
                }
            }
        },
    )
}

fn map_text(m: &std::collections::BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(a, b)| format!("{a}={b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Points shown on the page: a day of 30-second points is 2,880 rows, which would make
/// the page hundreds of kilobytes; the API and the CLI list them all.
const POINTS_SHOWN: usize = 100;

fn points_table(points: &[PointRow], vm: &str) -> Markup {
    html! {
        @if points.is_empty() {
            p class="muted" { "No point yet: the initial sync makes the first." }
        } @else {
            @if points.len() > POINTS_SHOWN {
                p class="muted" { "The newest " (POINTS_SHOWN) " of " (points.len()) "; every one: " code { "lifeboat points " (vm) } "." }
            }
            div class="scroll" {
                table {
                    (columns(&["Cut time", "Consistency", "Kind", "Read", "New in vault", "Point"]))
                    tbody {
                        @for p in points.iter().rev().take(POINTS_SHOWN) {
                            tr {
                                td { (time(&p.cut_time)) }
                                td { (consistency(&p.consistency)) }
                                td { (p.kind) @if let Some(n) = &p.note { span class="reason" { (n) } } }
                                td { (size(p.bytes_read)) }
                                td { (size(p.new_bytes)) }
                                td class="mono" { (p.point) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn consistency(c: &str) -> &str {
    match c {
        "app" => "application-consistent",
        "crash" => "crash-consistent",
        other => other,
    }
}

/// An action as its dialog shows it.
struct Action<'a> {
    /// The dialog's element id.
    id: &'a str,
    /// The button that opens it, and the dialog's heading.
    label: &'a str,
    /// The REST call the form makes.
    api: &'a str,
    method: &'a str,
    /// The button that does it.
    submit: &'a str,
    /// It stops or moves a VM, or deletes something: shown red.
    danger: bool,
}

/// A button that opens a dialog holding the action's explanation and form.
fn dialog(a: Action, explanation: Markup, fields: Markup) -> Markup {
    let Action {
        id,
        label,
        api,
        method,
        submit,
        danger,
    } = a;
    html! {
        button type="button" class=(if danger { "danger" } else { "" }) data-open=(id) aria-haspopup="dialog" { (label) "…" }
        dialog id=(id) aria-labelledby={ (id) "-h" } {
            form data-api=(api) data-method=(method) data-then="reload" {
                h2 id={ (id) "-h" } { (label) }
                div class="explain" { (explanation) }
                (fields)
                div class="buttons" {
                    button type="submit" class=(if danger { "danger" } else { "" }) { (submit) }
                    button type="button" data-close { "Cancel" }
                }
                p role="status" class="working" hidden { "Working… this can take a few minutes; closing this page stops nothing." }
                p role="alert" class="error" hidden {}
            }
        }
    }
}

fn point_select(id: &str, points: &[PointRow]) -> Markup {
    html! {
        div class="field" {
            label for=(id) { "Recovery point" }
            select id=(id) name="point" {
                @if let Some(last) = points.last() {
                    option value="latest" selected { "Latest — " (utc(&last.cut_time)) }
                }
                @if points.iter().any(|p| p.consistency == "app") {
                    option value="latest-app-consistent" { "Latest application-consistent" }
                }
                @for p in points.iter().rev().take(POINTS_SHOWN) {
                    option value=(p.point) { (utc(&p.cut_time)) " (" (p.consistency) ")" }
                }
            }
        }
    }
}

fn network_field(id: &str, current: &std::collections::BTreeMap<String, String>) -> Markup {
    html! {
        div class="field" {
            label for=(id) { "Network mapping" }
            input id=(id) name="network_map" type="text" data-type="map" value=(map_text(current))
                placeholder="user=isolated" aria-describedby={ (id) "-hint" };
            small id={ (id) "-hint" } {
                "SOURCE=TARGET per network, comma-separated. "
                @if current.is_empty() { "Empty keeps each NIC's network." } @else { "Empty uses the mapping given when replication was enabled (shown)." }
            }
        }
    }
}

fn actions(
    v: &ProtectionView,
    host: &Host,
    points: &[PointRow],
    test_copy: Option<&Recovery>,
    moved: Option<&Recovery>,
    nics: Option<&[NicSpec]>,
) -> Markup {
    let base = format!("/api/v1/protections/{}", v.id);
    let network = network_dialog(&base, v, nics);
    let (vm, home, rhost) = (&v.vm, &host.hostname, &v.recovery_host);
    let disable = dialog(
        Action {
            id: "dlg-disable",
            label: "Disable replication",
            api: &base,
            method: "DELETE",
            submit: "Disable replication",
            danger: true,
        },
        html! { p { "Replication of " (vm) " stops and its change tracking is removed. " (vm) " keeps running on " (home) ". Its recovery points stay in the vault unless you tick the box." } },
        html! { div class="field check" { input id="delete-points" name="delete_points" type="checkbox" data-query; label for="delete-points" { "Also delete its recovery points from the vault" } } },
    );
    html! {
        div class="actions" {
            @match v.state {
                ProtectionState::Protected | ProtectionState::Degraded => {
                    @if let Some(t) = test_copy {
                        (dialog(Action { id: "dlg-cleanup", label: "Cleanup test", api: &format!("{base}/failover/cleanup"), method: "POST", submit: "Remove the test copy", danger: false }, html! { p { "The test copy " (t.vm) " on " (rhost) " is stopped and everything made for it is removed. Production and replication are not touched." } }, html! {}))
                    } @else {
                        (dialog(Action { id: "dlg-test", label: "Test failover", api: &format!("{base}/failover"), method: "POST", submit: "Start the test copy", danger: false }, html! { p { "A copy of " (vm) " starts on " (rhost) " from the point you choose, on an isolated network with its own MAC address and ports. " (vm) " on " (home) " and its replication are not touched. Remove the copy with Cleanup test." } }, html! { input type="hidden" name="kind" value="test"; (point_select("test-point", points)) }))
                    }
                    (dialog(Action { id: "dlg-planned", label: "Planned failover", api: &format!("{base}/failover"), method: "POST", submit: "Shut down and fail over", danger: true }, html! { p { (vm) " on " (home) " is shut down (ACPI, forced after the timeout). A final sync copies its last writes, the copy on " (rhost) " is proven equal to it, " (home) " is fenced so " (vm) " cannot start there, and " (vm) " starts on " (rhost) ". No write is lost; " (vm) " is down from the shutdown until it starts on " (rhost) ". Replication stops until you fail back." } }, html! {
                            input type="hidden" name="kind" value="planned";
                            div class="field" {
                                label for="planned-timeout" { "Seconds for the guest to power off" }
                                input id="planned-timeout" name="shutdown_timeout_secs" type="number" min="1" value="120" data-type="int";
                            }
                            (network_field("planned-net", &v.network_map))
                        }))
                    (dialog(Action { id: "dlg-unplanned", label: "Unplanned failover", api: &format!("{base}/failover"), method: "POST", submit: "Fail over from this point", danger: true }, html! {
                            p { (vm) " starts on " (rhost) " from the recovery point you choose, without waiting for " (home) ". " strong { "Writes made on " (home) " after that point's cut time are not in it." } }
                            p { (home) " is fenced: if it comes back, " (vm) " is not started there, and its diverged writes are never copied over " (rhost) "'s. Replication stops until you fail back." }
                        }, html! { input type="hidden" name="kind" value="unplanned"; (point_select("unplanned-point", points)) (network_field("unplanned-net", &v.network_map)) }))
                    (network)
                    (disable)
                }
                ProtectionState::FailedOver | ProtectionState::ProtectedReversed | ProtectionState::DegradedReversed => {
                    @let committed = moved.is_some_and(|r| r.state == RecoveryState::Committed);
                    @if v.state.is_reversed() {
                        p class="muted" { (vm) " runs on " (rhost) " and is replicated from there into the vault; " (home) " is fenced and is its recovery host." }
                    } @else if committed {
                        p class="muted" { "The failover is committed." }
                        (dialog(Action { id: "dlg-reprotect-away", label: "Reprotect here", api: &format!("{base}/reprotect"), method: "POST", submit: "Protect it where it runs", danger: false }, html! { p { (vm) " is protected where it runs now, on " (rhost) ": synced from there into the same vault, with " (home) " (fenced) as its recovery host. Its first point holds only what it wrote since the failover." } }, html! {}))
                    } @else {
                    (dialog(Action { id: "dlg-commit", label: "Commit", api: &format!("{base}/failover/commit"), method: "POST", submit: "Commit the failover", danger: false }, html! { p { "The failover is committed: " (vm) " on " (rhost) " is the VM now. Bring it home later with Failback." } }, html! {}))
                    }
                    (dialog(Action { id: "dlg-failback", label: "Failback", api: &format!("{base}/failback"), method: "POST", submit: "Shut down and fail back", danger: true }, html! {
                            p { (vm) " on " (rhost) " is shut down, its writes since the failover are synced, only the chunks that differ are written on " (home) ", " (home) " is proven equal, and " (vm) " starts on " (home) ". Then the copy on " (rhost) " is removed." }
                            p { strong { "Writes " (home) " made after the failover's point are overwritten" } ": they were never part of the recovered VM." }
                        }, html! {
                            div class="field" {
                                label for="failback-timeout" { "Seconds for the guest to power off" }
                                input id="failback-timeout" name="shutdown_timeout_secs" type="number" min="1" value="120" data-type="int";
                            }
                        }))
                    (dialog(Action { id: "dlg-failback-unplanned", label: "Unplanned failback", api: &format!("{base}/failback"), method: "POST", submit: "Bring it home from this point", danger: true }, html! {
                            p { "For when " (rhost) " is lost: " (vm) " starts on " (home) " from the recovery point you choose, without waiting for " (rhost) ". " strong { "Writes made on " (rhost) " after that point's cut time are not in it." } }
                            p { "The copy on " (rhost) " is fenced (now, or as soon as its host answers) and kept, never started again." }
                        }, html! { input type="hidden" name="unplanned" value="true" data-type="bool"; (point_select("failback-point", points)) }))
                }
                ProtectionState::FailedBack => {
                    (dialog(Action { id: "dlg-reprotect", label: "Reprotect", api: &format!("{base}/reprotect"), method: "POST", submit: "Reprotect", danger: false }, html! { p { "Replication of " (vm) " from " (home) " to " (rhost) " resumes; the next sync is incremental, building on the failback's point." } }, html! {}))
                    (network)
                    (disable)
                }
                ProtectionState::Enabling | ProtectionState::InitialSync => {
                    p class="muted" { "Failover is possible once the initial sync has made the first recovery point." }
                    (network)
                    (disable)
                }
                _ => { p class="muted" { "An operation is running on " (vm) "; its actions come back when it ends." } }
            }
        }
    }
}

fn enable_dialog(host: &Host, vm: &str, others: &[&Host]) -> Markup {
    html! {
        div class="actions" {
            @if others.is_empty() {
                p class="muted" { "Enroll a second host to recover on before enabling replication (" a href="/scan" { "Scan & enroll" } ")." }
            } @else {
                (dialog(Action { id: "dlg-enable", label: "Enable replication", api: "/api/v1/protections", method: "POST", submit: "Enable replication", danger: false }, html! { p { (vm) " on " (host.hostname) " is copied into the vault (the initial sync, with progress), then synced on the policy's schedule; each sync makes a recovery point. Failover becomes possible once the first point is committed." } }, html! {
                        input type="hidden" name="vm" value=(vm);
                        input type="hidden" name="host" value=(host.id);
                        div class="field" {
                            label for="enable-vault" { "Vault URL" }
                            input id="enable-vault" name="vault" type="text" required placeholder="file:///var/lib/lifeboat/vault" aria-describedby="enable-vault-hint";
                            small id="enable-vault-hint" { "file://, s3:// or azure://; made with lifeboat vault init." }
                        }
                        div class="field" {
                            label for="enable-pass" { "Vault passphrase" }
                            input id="enable-pass" name="vault_passphrase" type="password" required autocomplete="off";
                        }
                        div class="field" {
                            label for="enable-rhost" { "Recovery host" }
                            select id="enable-rhost" name="recovery_host" required {
                                @for h in others { option value=(h.id) { (h.hostname) " (" (h.address) ")" } }
                            }
                        }
                        div class="field" {
                            label for="enable-policy" { "Policy" }
                            select id="enable-policy" name="policy" {
                                @for p in POLICIES { option value=(p.name) selected[p.name == "default"] { (p.name) " — " (p.description) } }
                            }
                        }
                        (network_field("enable-net", &Default::default()))
                    }))
            }
        }
    }
}
