//! Who may call what: the one table of the role each route needs ([`required_role`]),
//! and the API's gate that enforces it. The dashboard's pages go through the same table
//! (`web::require_login`), and pages hide what a role may not do by asking it too — the
//! server refuses regardless.
//!
//! The caller was identified by `crate::audit` (so that the refusal is on record too);
//! this gate only decides.

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error;
use crate::audit::AuditNote;
use crate::auth::{self, Caller, Role, Via};

/// The role a call needs: `route` as declared in the routers (`/api/v1/tokens/{id}`).
/// Reads need a viewer; state-changing routes not listed here need an admin, so a route
/// added later is closed until someone decides who may use it.
pub fn required_role(method: &Method, route: &str) -> Role {
    // axum answers HEAD with the GET handler (and its body's length): the same role.
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    match (method.as_str(), route) {
        // Who may log in, and with what role, is the admins' business.
        ("GET", "/api/v1/users" | "/users") => Role::Admin,
        // Operators answer for the moves they make: they see who did what, and when. The
        // rows hold no secret.
        ("GET", "/api/v1/audit" | "/audit") => Role::Operator,
        _ if !auth::changes_state(method) => Role::Viewer,
        // Everyone makes and revokes their own tokens, never above their own role
        // (`tokens`); admins may revoke anyone's.
        ("POST", "/api/v1/tokens") | ("DELETE", "/api/v1/tokens/{id}") => Role::Viewer,
        // Operations on VMs, and scanning the network for agents.
        ("POST", "/api/v1/protections")
        | ("DELETE", "/api/v1/protections/{id}")
        | ("PUT", "/api/v1/protections/{id}/network")
        | (
            "POST",
            "/api/v1/protections/{id}/failover"
            | "/api/v1/protections/{id}/failover/cleanup"
            | "/api/v1/protections/{id}/failover/commit"
            | "/api/v1/protections/{id}/failback"
            | "/api/v1/protections/{id}/reprotect"
            | "/api/v1/operations/{id}/cancel"
            | "/api/v1/scan",
        ) => Role::Operator,
        // Enrolling hosts, managing users, and whatever is not listed above.
        _ => Role::Admin,
    }
}

/// Whether `caller` may make this call.
pub fn may(caller_role: Role, method: &Method, route: &str) -> bool {
    caller_role >= required_role(method, route)
}

/// The refusal's words: the role needed, and who asked with which role.
pub fn refusal(caller: &Caller, needed: Role) -> String {
    format!(
        "this needs the {needed} role (or higher); {} is {}",
        caller.describe(),
        caller.role.with_article()
    )
}

/// An API token (`Authorization: Bearer …`), or a dashboard session whose state-changing
/// calls carry its CSRF token: the dashboard makes the very calls the CLI makes. Then
/// the role the route needs.
pub async fn authenticate(req: Request, next: Next) -> Response {
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return if auth::bearer(req.headers()).is_some() {
            error(StatusCode::UNAUTHORIZED, "wrong API token")
        } else {
            error(
                StatusCode::UNAUTHORIZED,
                "missing API token: pass --token-file or set LIFEBOAT_TOKEN (the server printed one at first start), or log in to the dashboard",
            )
        };
    };
    let note = req.extensions().get::<AuditNote>().cloned();
    let refuse = |message: String, detail: &str| {
        if let Some(n) = &note {
            n.detail(detail);
        }
        error(StatusCode::FORBIDDEN, message)
    };
    if let Via::Session(session) = &caller.via {
        let csrf_ok =
            auth::csrf_header(req.headers()).is_some_and(|t| auth::same_secret(t, &session.csrf));
        if auth::changes_state(req.method()) && !csrf_ok {
            return refuse(
                "missing or wrong CSRF token (X-CSRF-Token): reload the page and try again".into(),
                "refused: missing or wrong CSRF token",
            );
        }
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("", |m| m.as_str());
    let needed = required_role(req.method(), route);
    if caller.role < needed {
        return refuse(
            refusal(&caller, needed),
            &format!("refused: needs {needed}"),
        );
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_each_role_its_routes() {
        let (get, post, delete, put) = (Method::GET, Method::POST, Method::DELETE, Method::PUT);
        let failover = "/api/v1/protections/{id}/failover";
        assert_eq!(required_role(&get, "/api/v1/protections"), Role::Viewer);
        assert_eq!(required_role(&get, "/metrics"), Role::Viewer);
        assert_eq!(required_role(&post, failover), Role::Operator);
        assert_eq!(required_role(&post, "/api/v1/scan"), Role::Operator);
        assert_eq!(required_role(&post, "/api/v1/hosts"), Role::Admin);
        assert_eq!(required_role(&post, "/api/v1/users"), Role::Admin);
        assert_eq!(
            required_role(&put, "/api/v1/users/{name}/role"),
            Role::Admin
        );
        assert_eq!(required_role(&delete, "/api/v1/users/{name}"), Role::Admin);
        assert_eq!(required_role(&get, "/api/v1/users"), Role::Admin);
        assert_eq!(required_role(&get, "/api/v1/audit"), Role::Operator);
        assert_eq!(required_role(&post, "/api/v1/tokens"), Role::Viewer);
        // Not listed and state-changing: closed to all but admins.
        assert_eq!(required_role(&post, "/api/v1/some-new-route"), Role::Admin);
        assert!(may(Role::Operator, &post, failover) && !may(Role::Viewer, &post, failover));
    }

    /// Every state-changing route of the API's description is in the table on purpose:
    /// a new one must be added to this list, with the role it needs, or the test fails.
    #[test]
    fn every_state_changing_route_has_a_decided_role() {
        use utoipa::OpenApi;
        let decided: &[(&str, &str, Role)] = &[
            ("post", "/api/v1/hosts", Role::Admin),
            ("post", "/api/v1/scan", Role::Operator),
            ("post", "/api/v1/tokens", Role::Viewer),
            ("delete", "/api/v1/tokens/{id}", Role::Viewer),
            ("post", "/api/v1/users", Role::Admin),
            ("put", "/api/v1/users/{name}/role", Role::Admin),
            ("put", "/api/v1/users/{name}/password", Role::Admin),
            ("delete", "/api/v1/users/{name}", Role::Admin),
            ("post", "/api/v1/protections", Role::Operator),
            ("delete", "/api/v1/protections/{id}", Role::Operator),
            ("put", "/api/v1/protections/{id}/network", Role::Operator),
            ("post", "/api/v1/protections/{id}/failover", Role::Operator),
            (
                "post",
                "/api/v1/protections/{id}/failover/cleanup",
                Role::Operator,
            ),
            (
                "post",
                "/api/v1/protections/{id}/failover/commit",
                Role::Operator,
            ),
            ("post", "/api/v1/protections/{id}/failback", Role::Operator),
            ("post", "/api/v1/protections/{id}/reprotect", Role::Operator),
            ("post", "/api/v1/operations/{id}/cancel", Role::Operator),
        ];
        let doc = super::super::ApiDoc::openapi();
        let mut seen = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                ("post", &item.post),
                ("put", &item.put),
                ("delete", &item.delete),
                ("patch", &item.patch),
            ] {
                if op.is_some() {
                    seen.push((method, path.as_str()));
                }
            }
        }
        for (method, path) in &seen {
            let Some((_, _, role)) = decided.iter().find(|(m, p, _)| m == method && p == path)
            else {
                panic!("{method} {path}: decide which role it needs (access.rs)");
            };
            let m: Method = method.to_uppercase().parse().unwrap();
            assert_eq!(required_role(&m, path), *role, "{method} {path}");
        }
        assert_eq!(seen.len(), decided.len(), "{seen:?}");
    }
}
