//! The Users page (admins) and the Audit log page (operators and admins): which role
//! each needs is in `api::access`, like everything else.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{columns, page, time};
use super::pages::or_fail;
use super::{url_encode, CurrentSession};
use crate::auth::{Role, MIN_PASSWORD_LEN};
use crate::db::AuditRow;
use crate::http::ServerState;

fn role_select(id: Option<&str>, label: Option<&str>, chosen: Role) -> Markup {
    html! {
        select id=[id] name="role" aria-label=[label] {
            @for r in Role::ALL {
                option value=(r.as_str()) selected[r == chosen] { (r.as_str()) }
            }
        }
    }
}

pub async fn users(State(s): State<Arc<ServerState>>, session: CurrentSession) -> Response {
    let users = or_fail!(s.db.users().await);
    let body = html! {
        p { "Viewers read. Operators also run operations on VMs: protect and unprotect, test failover and cleanup, planned and unplanned failover, commit, failback, reprotect, scan. Admins also enroll hosts and manage users and everyone's API tokens. A role change holds at once, in open sessions too; a user's tokens never act above the user's role." }
        section aria-labelledby="new-user-h" {
            h2 id="new-user-h" { "New user" }
            form data-api="/api/v1/users" data-method="POST" data-then="/users" {
                div class="field" {
                    label for="user-name" { "Name" }
                    input id="user-name" name="name" type="text" required maxlength="64" pattern="[A-Za-z0-9._@\\-]+" autocomplete="off";
                }
                div class="field" {
                    label for="user-role" { "Role" }
                    (role_select(Some("user-role"), None, Role::Viewer))
                }
                div class="field" {
                    label for="user-password" { "Password" }
                    input id="user-password" name="password" type="password" required minlength=(MIN_PASSWORD_LEN) autocomplete="new-password";
                }
                button type="submit" { "Add user" }
                p role="alert" class="error" hidden {}
            }
        }
        section aria-labelledby="users-h" {
            h2 id="users-h" { "Users" }
            div class="scroll" {
                table {
                    (columns(&["Name", "Role", "Changed", "Set role", "Reset password", "Remove"]))
                    tbody {
                        @for u in &users {
                            @let base = format!("/api/v1/users/{}", url_encode(&u.name));
                            tr data-user=(u.name) {
                                th scope="row" { (u.name) @if u.name == session.user { " (you)" } }
                                td { (u.role.as_str()) }
                                td { (time(&u.updated_at)) }
                                td {
                                    form data-api={ (base) "/role" } data-method="PUT" data-then="/users" {
                                        (role_select(None, Some(&format!("Role of {}", u.name)), u.role))
                                        " " button type="submit" { "Set" }
                                        p role="alert" class="error" hidden {}
                                    }
                                }
                                td {
                                    form data-api={ (base) "/password" } data-method="PUT" data-then="/users"
                                        data-done={ "The password of " (u.name) " is set; their sessions have ended." } {
                                        input name="password" type="password" required minlength=(MIN_PASSWORD_LEN) autocomplete="new-password" aria-label={ "New password for " (u.name) };
                                        " " button type="submit" { "Reset" }
                                        p role="alert" class="error" hidden {}
                                    }
                                }
                                td {
                                    form data-api=(base) data-method="DELETE" data-then="/users"
                                        data-confirm={ "Remove " (u.name) "? Their sessions end and their API tokens stop working at once." } {
                                        button type="submit" class="danger" aria-label={ "Remove " (u.name) } { "Remove" }
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
    page("Users", "/users", &session, body)
}

#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    before: Option<String>,
}

fn outcome(row: &AuditRow) -> Markup {
    let class = match row.status {
        0 => "busy",
        200..=399 => "good",
        _ => "bad",
    };
    html! {
        span class={ "state " (class) } {
            @if row.status == 0 { "no answer" } @else { (row.status) }
        }
        @if !row.detail.is_empty() { span class="reason" { (row.detail) } }
    }
}

pub async fn audit(
    State(s): State<Arc<ServerState>>,
    session: CurrentSession,
    Query(q): Query<AuditQuery>,
) -> Response {
    let p = or_fail!(crate::api::audit::page(&s.db, None, q.before.as_deref()).await);
    let body = html! {
        p { "Every login (and failed one), logout and change — who, from where, what, and how it ended — newest first. Also " code { "lifeboat audit" } " and " code { "GET /api/v1/audit" } ". No password, token, passphrase or enrollment code is ever written here." }
        @if p.entries.is_empty() {
            p class="muted" { "Nothing recorded yet." }
        } @else {
            div class="scroll" {
                table {
                    (columns(&["When", "Who", "Via", "From", "Call", "Target", "Outcome"]))
                    tbody {
                        @for r in &p.entries {
                            tr {
                                td { (time(&r.at)) }
                                th scope="row" { @if r.actor.is_empty() { span class="muted" { "(no such user)" } } @else { (r.actor) } }
                                td { (r.via) }
                                td class="mono" { (r.address) }
                                td class="mono" { (r.method) " " (r.route) }
                                td class="mono" { (r.target) }
                                td { (outcome(r)) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(before) = &p.next_before {
            p { a href={ "/audit?before=" (url_encode(before)) } { "Older entries" } }
        }
    };
    page("Audit log", "/audit", &session, body)
}
