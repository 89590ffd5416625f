//! The dashboard's pages but a VM's own (`vm_page`). Each reads what it shows straight
//! from the database (and, for VMs, from the agents); the parts that change are
//! `fragments`, with the ids `live` refreshes.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::response::Response;
use maud::{html, Markup};

use super::fragments::{counts, protection_cells, recoveries_table, running_ops};
use super::layout::{age, columns, may, not_for_role, page, size, time};
use super::paging::{PageNumber, Paging};
use super::CurrentSession;
use crate::api::protection::ProtectionView;
use crate::api::status::overview_of;
use crate::api::{fleet, FleetVm, VmRow};
use crate::auth::Role;
use crate::db::{Host, Operation, Recovery};
use crate::failover::recovery_views;
use crate::http::ServerState;
use crate::policy::POLICIES;
use lifeboat_types::RecoveryKind;

macro_rules! or_fail {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return super::layout::failure(&e.to_string()),
        }
    };
}
pub(crate) use or_fail;

pub async fn overview(
    State(s): State<Arc<ServerState>>,
    session: CurrentSession,
    axum::extract::Query(at): axum::extract::Query<PageNumber>,
) -> Response {
    let mut o = or_fail!(overview_of(&s.db).await);
    let recoveries = or_fail!(s.db.recoveries().await);
    let paging = Paging::new(o.protections.len(), &at);
    let rows = paging.rows();
    o.protections.truncate(rows.end);
    o.protections.drain(..rows.start);
    let nav = paging.nav("/", "Pages of protected VMs");
    let body = html! {
        section aria-labelledby="counts-h" {
            h2 id="counts-h" { "At a glance" }
            div id="counts" { (counts(&o)) }
        }
        section aria-labelledby="ops-h" {
            h2 id="ops-h" { "Running operations" }
            div id="running-ops" aria-live="polite" { (running_ops(&o)) }
        }
        section aria-labelledby="vms-h" {
            h2 id="vms-h" { "Protected VMs" }
            @if o.protections.is_empty() {
                p { "No VM is protected yet. " a href="/hosts" { "Pick one on Hosts & VMs" } ", or find hosts first with " a href="/scan" { "Scan & enroll" } "." }
            } @else {
                (nav)
                div class="scroll" {
                    table {
                        (columns(&["VM", "Host", "State", "RPO", "Recovery host"]))
                        tbody {
                            @for v in &o.protections {
                                @let cells = protection_cells(v, &recoveries);
                                tr {
                                    th scope="row" { a href=(vm_href(&v.host_id, &v.vm)) { (v.vm) } }
                                    td { (v.host) }
                                    td id=(cells[0].0) { (cells[0].1) }
                                    td id=(cells[1].0) { (cells[1].1) }
                                    td { (v.recovery_host) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Overview", "/", &session, body)
}

pub fn vm_href(host_id: &str, vm: &str) -> String {
    // One path segment each: a `/` in them is encoded too.
    let segment = |x: &str| super::url_encode(x).replace('/', "%2F");
    format!("/hosts/{}/vms/{}", segment(host_id), segment(vm))
}

/// Hosts & VMs: each host's VMs, 100 VM rows a page in the order of the hosts (by name,
/// then address); a host whose VMs span pages is on each of them, with its counts in
/// full. A host with no VMs is on the page where its rows would be.
pub async fn hosts(
    State(s): State<Arc<ServerState>>,
    session: CurrentSession,
    axum::extract::Query(at): axum::extract::Query<PageNumber>,
) -> Response {
    let fleet = or_fail!(fleet(&s).await);
    let paging = Paging::new(fleet.vms.len(), &at);
    let rows = paging.rows();
    // Only this page's rows are drawn, their protections read whole.
    let (page_rows, views) = or_fail!(fleet.rows(&s.db, &fleet.vms[rows.clone()]).await);
    let hosts: Vec<&Host> = fleet.hosts.iter().map(|h| &h.host).collect();
    // Each host's rows in the whole list (sorted as the hosts are: by name, then
    // address), and which of them this page shows.
    let host_of = |v: &FleetVm| {
        let h = fleet.host(v);
        (h.hostname.as_str(), h.address.as_str())
    };
    let spans: Vec<(&Host, Range<usize>)> = hosts
        .iter()
        .map(|h| {
            let key = (h.hostname.as_str(), h.address.as_str());
            let start = fleet.vms.partition_point(|v| host_of(v) < key);
            let end = fleet.vms.partition_point(|v| host_of(v) <= key);
            (*h, start..end)
        })
        .collect();
    let shown = |all: &Range<usize>| match all.is_empty() {
        true => paging.page_of(all.start) == paging.this,
        false => all.start < rows.end && all.end > rows.start,
    };
    let nav = paging.nav("/hosts", "Pages of VMs");
    // With several pages, where each host's VMs start.
    let index = html! {
        @if paging.pages > 1 {
            nav class="pages" aria-label="Hosts" {
                "Hosts: "
                @for (i, (h, all)) in spans.iter().enumerate() {
                    @if i > 0 { ", " }
                    a href={ "/hosts?page=" (paging.page_of(all.start)) "#host-" (h.id) } { (h.hostname) } " (" (all.len()) ")"
                }
            }
        }
    };
    let body = html! {
        @if hosts.is_empty() {
            p { "No host is enrolled. " a href="/scan" { "Scan for agents and enroll one" } "." }
        }
        @for p in &fleet.unreachable {
            p role="alert" class="error" { "Host " (p.host) " (" (p.address) ") did not answer: " (p.error) }
        }
        (index)
        (nav)
        @for (h, all) in spans.iter().filter(|(_, all)| shown(all)) {
            @let here = all.start.max(rows.start)..all.end.min(rows.end);
            @let protected = fleet.vms[all.clone()].iter().filter(|v| v.protection_id.is_some()).count();
            section class="host" aria-labelledby={ "host-" (h.id) } {
                h2 id={ "host-" (h.id) } { (h.hostname) " " span class="muted" { (h.address) } }
                @if let Some(health) = s.health.get(h.id.as_str()) {
                    @if let Some(skew) = &health.version_skew {
                        p role="alert" class="error" { "Agent version skew: " (skew) }
                    } @else if let Some(v) = &health.agent_version {
                        p class="muted" { "Agent " (v) }
                    }
                }
                @if all.is_empty() {
                    p class="muted" { "No VMs reported." }
                } @else {
                    p class="muted" {
                        (all.len()) " VMs, " (protected) " protected"
                        @if here.len() < all.len() { "; " (here.start - all.start + 1) "–" (here.end - all.start) " on this page" }
                        "."
                    }
                    div class="scroll" {
                        table {
                            (columns(&["VM", "Running", "Protection", "RPO", "Last recovery point", "Recovery host"]))
                            tbody {
                                @for v in &page_rows[here.start - rows.start..here.end - rows.start] { (vm_row(h.id.as_str(), v, &views, &fleet.recoveries)) }
                            }
                        }
                    }
                }
            }
        }
        (nav)
    };
    page("Hosts & VMs", "/hosts", &session, body)
}

fn vm_row(host_id: &str, v: &VmRow, views: &[ProtectionView], recoveries: &[Recovery]) -> Markup {
    let run = v.state["state"].as_str().unwrap_or("?");
    let view = v
        .protection_id
        .as_ref()
        .and_then(|id| views.iter().find(|p| &p.id == id));
    html! {
        tr data-vm=(v.vm) {
            th scope="row" { a href=(vm_href(host_id, &v.vm)) { (v.vm) } }
            td { (run) @if v.fenced.is_some() { " " span class="state bad" title=(v.fenced.as_deref().unwrap_or("")) { "fenced" } } }
            @match (view, &v.recovery_kind) {
                (Some(p), _) => {
                    @let cells = protection_cells(p, recoveries);
                    td id=(cells[0].0) { (cells[0].1) }
                    td id=(cells[1].0) { (cells[1].1) }
                    td id=(cells[2].0) { (cells[2].1) }
                    td { (p.recovery_host) }
                }
                (None, Some(kind)) => {
                    td {
                        span class="state moved" { (recovery_kind_label(*kind)) } " of " (v.recovered_from.as_deref().unwrap_or("?"))
                        span class="reason" { (format!("{:.0}% local", v.hydrated_percent.unwrap_or(0.0))) }
                    }
                    td { "-" }
                    td { "from " (time(v.recovered_point_time.as_deref().unwrap_or(""))) }
                    td { "-" }
                }
                (None, None) => {
                    td { span class="state none" { "Unprotected" } }
                    td { "-" } td { "-" } td { "-" }
                }
            }
        }
    }
}

pub fn recovery_kind_label(kind: RecoveryKind) -> &'static str {
    match kind {
        RecoveryKind::Test => "Test copy",
        RecoveryKind::Planned => "Planned failover",
        RecoveryKind::Unplanned => "Unplanned failover",
    }
}

pub async fn scan(session: CurrentSession) -> Response {
    if !may(&session, &Method::POST, "/api/v1/scan") {
        let body = html! {
            p { "Agents answer a discovery hello before they are enrolled. The scan runs from the server." }
            (not_for_role(&session, "operators (scan) and admins (scan and enroll)"))
        };
        return page("Scan & enroll", "/scan", &session, body);
    }
    let enroll = may(&session, &Method::POST, "/api/v1/hosts");
    let body = html! {
        p { "Agents answer a discovery hello before they are enrolled. The scan runs from the server, which is where enrolled agents will be reached from." }
        @if !enroll { p class="muted" { "You are " (session.role.with_article()) ": you can scan; admins enroll." } }
        form id="scan-form" data-api="/api/v1/scan" data-method="POST" data-render="scan" {
            div class="field" {
                label for="cidr" { "Address range" }
                input id="cidr" name="cidr" type="text" required placeholder="192.168.1.0/24" aria-describedby="cidr-hint";
                small id="cidr-hint" { "An IPv4 address or range, at most a /16." }
            }
            div class="field" {
                label for="ports" { "Agent ports" }
                input id="ports" name="ports" type="text" data-type="ports" value="7443" aria-describedby="ports-hint";
                small id="ports-hint" { "Comma-separated." }
            }
            button type="submit" { "Scan" }
            p role="alert" class="error" hidden {}
        }
        section aria-labelledby="found-h" {
            h2 id="found-h" { "Agents found" }
            div id="scan-results" aria-live="polite" { p class="muted" { "Nothing scanned yet." } }
        }
        // Without the template the scan's results offer no enrollment (app.js).
        @if enroll { template id="enroll-template" {
            form class="enroll" data-api="/api/v1/hosts" data-method="POST" data-then="/hosts" {
                input type="hidden" name="address";
                input type="hidden" name="fingerprint";
                label { "Enrollment code " input name="code" type="text" required autocomplete="off"; }
                button type="submit" { "Enroll" }
                p role="alert" class="error" hidden {}
            }
        } }
    };
    page("Scan & enroll", "/scan", &session, body)
}

pub async fn recovery_site(State(s): State<Arc<ServerState>>, session: CurrentSession) -> Response {
    let views = or_fail!(recovery_views(&s.db).await);
    let body = html! {
        p { "VMs running on recovery hosts: test copies beside production, and VMs failed over. Each started from a recovery point and copies the rest of its disks from the vault in the background (Local)." }
        div id="recoveries" aria-live="polite" { (recoveries_table(&views)) }
    };
    page("Recovery site", "/recovery-site", &session, body)
}

/// The operations history: each with its steps' log.
pub fn operations_list(ops: &[Operation], names: &BTreeMap<String, String>) -> Markup {
    html! {
        div class="scroll" {
            table {
                (columns(&["Started", "VM", "Operation", "Status", "Step and log"]))
                tbody {
                    @for op in ops {
                        tr {
                            td { (time(&op.created_at)) }
                            td { (names.get(op.host_id.as_str()).map_or("?", |s| s.as_str())) "/" (op.vm) }
                            td { (op.kind) }
                            td { span class={ "state " (match op.status.as_str() { "succeeded" => "good", "failed" => "bad", _ => "busy" }) } { (op.status) } }
                            td {
                                (op.step)
                                @if !op.log.is_empty() {
                                    details { summary { "Log" } pre { (op.log) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub async fn host_names(s: &ServerState) -> Result<BTreeMap<String, String>, crate::db::DbError> {
    Ok(s.db
        .hosts()
        .await?
        .into_iter()
        .map(|h| (h.id.into(), h.hostname))
        .collect())
}

pub async fn operations(State(s): State<Arc<ServerState>>, session: CurrentSession) -> Response {
    let o = or_fail!(overview_of(&s.db).await);
    let ops = or_fail!(s.db.operations(100).await);
    let names = or_fail!(host_names(&s).await);
    let body = html! {
        section aria-labelledby="running-h" {
            h2 id="running-h" { "Running" }
            div id="running-ops" aria-live="polite" { (running_ops(&o)) }
        }
        section aria-labelledby="history-h" {
            h2 id="history-h" { "History (newest 100)" }
            (operations_list(&ops, &names))
        }
    };
    page("Operations", "/operations", &session, body)
}

/// A vault's totals over all its protected VMs.
#[derive(Default)]
struct VaultTotals {
    vms: usize,
    bytes: i64,
    points: i64,
    /// Its first VM's row in the list by vault.
    first: usize,
}

/// Vaults & policies: each vault's totals, then its VMs, 100 rows a page (by vault, then
/// VM and host).
pub async fn vaults(
    State(s): State<Arc<ServerState>>,
    session: CurrentSession,
    axum::extract::Query(at): axum::extract::Query<PageNumber>,
) -> Response {
    let mut o = or_fail!(overview_of(&s.db).await);
    o.protections
        .sort_by(|a, b| (&a.vault, &a.vm, &a.host_id).cmp(&(&b.vault, &b.vm, &b.host_id)));
    let mut by_vault: BTreeMap<&str, VaultTotals> = BTreeMap::new();
    for (i, p) in o.protections.iter().enumerate() {
        let t = by_vault.entry(p.vault.as_str()).or_insert(VaultTotals {
            first: i,
            ..Default::default()
        });
        t.vms += 1;
        t.bytes += p.bytes_replicated;
        t.points += p.syncs_committed;
    }
    let paging = Paging::new(o.protections.len(), &at);
    let rows = paging.rows();
    let nav = paging.nav("/vaults", "Pages of VMs by vault");
    let body = html! {
        section aria-labelledby="vaults-h" {
            h2 id="vaults-h" { "Vaults in use" }
            p { "A vault is made with " code { "lifeboat vault init URL" } "; its data is encrypted before it leaves the host. Lose both the passphrase and the exported key file and the data is gone." }
            @if by_vault.is_empty() {
                p class="muted" { "No protected VM writes to a vault yet." }
            } @else {
                div class="scroll" {
                    table {
                        (columns(&["Vault", "VMs", "Replicated", "Points committed"]))
                        tbody {
                            @for (vault, t) in &by_vault {
                                tr {
                                    th scope="row" class="mono" { (vault) }
                                    td { a href={ "/vaults?page=" (paging.page_of(t.first)) "#vault-vms-h" } { (t.vms) } }
                                    td { (size(t.bytes)) }
                                    td { (t.points) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !o.protections.is_empty() {
            section aria-labelledby="vault-vms-h" {
                h2 id="vault-vms-h" { "VMs by vault" }
                (nav)
                div class="scroll" {
                    table {
                        (columns(&["VM", "Vault", "Replicated", "Points committed"]))
                        tbody {
                            @for p in &o.protections[rows] {
                                tr data-protection=(p.id) {
                                    th scope="row" { a href=(vm_href(&p.host_id, &p.vm)) { (p.host) "/" (p.vm) } }
                                    td class="mono" { (p.vault) }
                                    td { (size(p.bytes_replicated)) }
                                    td { (p.syncs_committed) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="policies-h" {
            h2 id="policies-h" { "Policies" }
            div class="scroll" {
                table {
                    (columns(&["Policy", "Sync every", "Degraded past", "App-consistent every", "Keeps"]))
                    tbody {
                        @for p in POLICIES {
                            tr {
                                th scope="row" { (p.name) }
                                td { (age(Some(p.interval_secs as f64))) }
                                td { (age(Some(p.rpo_threshold_secs as f64))) }
                                td { @if p.app_consistent_every_secs == 0 { "never" } @else { (age(Some(p.app_consistent_every_secs as f64))) } }
                                td { (p.description) }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Vaults & policies", "/vaults", &session, body)
}

pub async fn tokens(State(s): State<Arc<ServerState>>, session: CurrentSession) -> Response {
    let admin = session.role == Role::Admin;
    let tokens = or_fail!(s.db.tokens((!admin).then_some(session.user.as_str())).await);
    let body = html! {
        p { "Scripts and the CLI call the API with a token (" code { "Authorization: Bearer …" } ", or " code { "LIFEBOAT_TOKEN" } "). A token is shown once, when made; the server keeps only its digest. It acts with the role it was given, never above its maker's, and stops working when its maker is removed." }
        section aria-labelledby="new-token-h" {
            h2 id="new-token-h" { "New token" }
            form data-api="/api/v1/tokens" data-method="POST" data-render="token" {
                div class="field" {
                    label for="token-name" { "What it is for" }
                    input id="token-name" name="name" type="text" required maxlength="64" placeholder="backup-script";
                }
                div class="field" {
                    label for="token-role" { "Role" }
                    select id="token-role" name="role" aria-describedby="token-role-hint" {
                        @for r in Role::ALL.into_iter().filter(|r| *r <= session.role) {
                            option value=(r.as_str()) selected[r == Role::Viewer] { (r.as_str()) }
                        }
                    }
                    small id="token-role-hint" { "At most yours (" (session.role.as_str()) ")." }
                }
                button type="submit" { "Make token" }
                p role="alert" class="error" hidden {}
            }
            div id="new-token" aria-live="polite" {}
        }
        section aria-labelledby="tokens-h" {
            h2 id="tokens-h" { @if admin { "Tokens (everyone's)" } @else { "Your tokens" } }
            div class="scroll" {
                table {
                    (columns(&["Name", "Owner", "Role", "Made", "Actions"]))
                    tbody {
                        @for t in &tokens {
                            tr {
                                th scope="row" { (t.name) }
                                td { (t.owner) }
                                td { (t.role.as_str()) }
                                td { (time(&t.created_at)) }
                                td {
                                    form data-api={ "/api/v1/tokens/" (t.id) } data-method="DELETE" data-then="/tokens"
                                        data-confirm={ "Revoke the token " (t.name) "? Scripts using it stop working at once." } {
                                        button type="submit" aria-label={ "Revoke " (t.name) } { "Revoke" }
                                        p role="alert" class="error" hidden {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("API tokens", "/tokens", &session, body)
}
