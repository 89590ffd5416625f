//! The server's top-level modules are layers (docs/operations.md, "Layers"): a module
//! uses only modules below it, so there is no import cycle, and the domain modules know
//! nothing of HTTP. This reads the sources, so a new module must be placed in `ORDER`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first: a module may name (`crate::x`) only modules before it. `lib.rs` is the
/// top and may use any.
const ORDER: &[&str] = &[
    "role",
    "db",
    "policy",
    "retention",
    "discovery",
    "auth",
    "agents",
    "host_health",
    "error",
    "vault_keys",
    "network",
    "dns_switch",
    "failover",
    "ops",
    // The schedulers: they run steps of their own, and end an enable at its first point.
    "replication",
    "recovery_watch",
    "http",
    "audit",
    "api",
    "web",
];

/// The domain: its errors are `error::AppError`, and the API maps them to statuses.
const NO_HTTP: &[&str] = &[
    "role",
    "db",
    "agents",
    "host_health",
    "error",
    "vault_keys",
    "network",
    "dns_switch",
    "failover",
    "replication",
    "recovery_watch",
    "ops",
];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/x.rs`, `src/x/**.rs`: `x`); `None` for
/// `lib.rs`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(name) => Some(name.to_string()),
        None => Some(first.to_string()),
    }
}

/// The code without its comment lines (`//`, `//!`, `///`): prose may name any module.
fn code_of(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// Every name that follows `crate::` in `code`: `crate::x::…` gives `x`, and
/// `crate::{a, b::c}` gives `a` and `b`.
fn crate_refs(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        from = at + "crate::".len();
        // `$crate::`, `my_crate::`: not this crate's root.
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| is_ident(c) || c == '$')
        {
            continue;
        }
        let rest = code[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // The group's items at its own depth: `a`, `b::{c, d}` give `a`, `b`.
            let (mut depth, mut item_start) = (0usize, true);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && depth == 0 && is_ident(c) => {
                        out.push(ident_at(&group[j..]).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                out.push(name.to_string());
            }
        }
    }
    out
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    // (from, to) → how many references.
    let mut edges: BTreeMap<(String, String), usize> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let shown = file.strip_prefix(&src).unwrap().display().to_string();
        seen.insert(module.clone());
        let Some(own) = rank(&module) else {
            problems.push(format!(
                "src/{shown}: module `{module}` is not in ORDER (tests/layers.rs): place it"
            ));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        if NO_HTTP.contains(&module.as_str()) {
            for word in ["axum", "StatusCode"] {
                if code.contains(word) {
                    problems.push(format!(
                        "src/{shown}: `{module}` mentions `{word}`; the domain knows no HTTP (return error::AppError)"
                    ));
                }
            }
        }
        for name in crate_refs(&code) {
            if name == module {
                continue;
            }
            match rank(&name) {
                Some(r) if r < own => {
                    *edges.entry((module.clone(), name)).or_default() += 1;
                }
                Some(_) => problems.push(format!(
                    "src/{shown}: `{module}` uses `crate::{name}`, which is above it in ORDER"
                )),
                None => problems.push(format!(
                    "src/{shown}: `{module}` uses `crate::{name}`, which is no module in ORDER \
                     (lib.rs is the top: nothing below uses it)"
                )),
            }
        }
    }
    for m in ORDER {
        if !seen.contains(*m) {
            problems.push(format!("ORDER names `{m}`, which has no file under src/"));
        }
    }
    println!("{} edges between modules, all downward:", edges.len());
    for ((from, to), n) in &edges {
        println!("  {from} -> {to} ({n})");
    }
    assert!(
        problems.is_empty(),
        "{} layer violation(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn references_are_found_in_every_form() {
    let code = code_of(
        "use crate::db::{Database, Host};\n\
         // crate::web in a comment\n\
         use crate::{auth, policy::{Policy, POLICIES}};\n\
         let x = crate::replication::agent_client(h);\n\
         macro_rules! m { () => { $crate::ops::run() } }\n",
    );
    assert_eq!(
        crate_refs(&code),
        ["db", "auth", "policy", "replication"].map(String::from)
    );
}
