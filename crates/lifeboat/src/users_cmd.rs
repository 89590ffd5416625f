//! `lifeboat users list|add|set-role|passwd|remove` and `lifeboat audit`: the server's
//! users and roles (admins), and its audit log (operators and admins). The server
//! decides who may; these only ask.

use std::path::Path;

use anyhow::{bail, Result};
use lifeboat_server::api::audit::AuditPage;
use lifeboat_server::auth::Role;
use serde_json::{json, Value};

use crate::cli::{ServerConn, UsersCommand};
use crate::output::{table, Output};
use crate::secrets::user_password;
use crate::server_client::ServerClient;

/// A user's path: names are plain (the server refuses others), but a typo must not
/// become another route.
fn user_path(name: &str) -> Result<String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        bail!("{name:?} is not a user name: names have letters, digits, '.', '_', '-' or '@'");
    }
    Ok(format!("/api/v1/users/{name}"))
}

pub async fn run(out: Output, home: &Path, cmd: UsersCommand) -> Result<()> {
    match cmd {
        UsersCommand::List { conn } => {
            let users: Vec<Value> = ServerClient::new(&conn, home)?.get("/api/v1/users").await?;
            out.show(&users, |users| {
                let mut rows = vec![vec!["NAME".to_string(), "ROLE".into(), "CHANGED".into()]];
                for u in users {
                    rows.push(
                        ["name", "role", "updated_at"]
                            .iter()
                            .map(|k| u[*k].as_str().unwrap_or("").to_string())
                            .collect(),
                    );
                }
                table(&rows);
            });
        }
        UsersCommand::Add { name, role, conn } => {
            user_path(&name)?;
            let server = ServerClient::new(&conn, home)?;
            let password = user_password(&name)?;
            let user: Value = server
                .post(
                    "/api/v1/users",
                    &json!({ "name": name, "role": role, "password": password }),
                )
                .await?;
            out.show(&user, |_| {
                println!("Added {name} ({role}); they can log in to the dashboard now.")
            });
        }
        UsersCommand::SetRole { name, role, conn } => {
            let path = format!("{}/role", user_path(&name)?);
            let user: Value = ServerClient::new(&conn, home)?
                .put(&path, &json!({ "role": role }))
                .await?;
            out.show(&user, |_| {
                println!("{name} is {} now.", role.with_article());
                if role < Role::Admin {
                    println!("Their API tokens act as at most {role}.");
                }
            });
        }
        UsersCommand::Passwd { name, conn } => {
            let path = format!("{}/password", user_path(&name)?);
            let server = ServerClient::new(&conn, home)?;
            let password = user_password(&name)?;
            server
                .put::<()>(&path, &json!({ "password": password }))
                .await?;
            out.show(&json!({ "user": name, "password_set": true }), |_| {
                println!("Set the password of {name}; their sessions have ended.")
            });
        }
        UsersCommand::Remove { name, conn } => {
            let path = user_path(&name)?;
            ServerClient::new(&conn, home)?.delete::<()>(&path).await?;
            out.show(&json!({ "removed": name }), |_| {
                println!("Removed {name}, with their sessions and API tokens.")
            });
        }
    }
    Ok(())
}

pub async fn audit(
    out: Output,
    home: &Path,
    limit: i64,
    before: Option<String>,
    conn: ServerConn,
) -> Result<()> {
    let mut path = format!("/api/v1/audit?limit={limit}");
    if let Some(b) = &before {
        if !b
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        {
            bail!("{b:?} is not an audit row id (see --json: next_before)");
        }
        path.push_str(&format!("&before={b}"));
    }
    let page: Value = ServerClient::new(&conn, home)?.get(&path).await?;
    out.show(&page, |page| {
        let page: AuditPage = match serde_json::from_value(page.clone()) {
            Ok(p) => p,
            Err(_) => return println!("{page}"),
        };
        if page.entries.is_empty() {
            println!("Nothing recorded.");
            return;
        }
        let mut rows = vec![[
            "WHEN", "WHO", "VIA", "FROM", "CALL", "TARGET", "STATUS", "DETAIL",
        ]
        .map(String::from)
        .to_vec()];
        for e in &page.entries {
            rows.push(vec![
                e.at.clone(),
                if e.actor.is_empty() {
                    "(no such user)".into()
                } else {
                    e.actor.clone()
                },
                e.via.clone(),
                e.address.clone(),
                format!("{} {}", e.method, e.route),
                e.target.clone(),
                if e.status == 0 {
                    "-".into()
                } else {
                    e.status.to_string()
                },
                e.detail.clone(),
            ]);
        }
        table(&rows);
        if let Some(b) = &page.next_before {
            println!("Older rows: lifeboat audit --before {b}");
        }
    });
    Ok(())
}
