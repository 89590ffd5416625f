//! Committed migrations are frozen. A database that ran a migration keeps its checksum,
//! and sqlx refuses to start against it when the file changed ("previously applied but
//! has been modified"): an edited migration breaks every upgrade in the field. So every
//! migration's SHA-256 is recorded in `tests/frozen_migrations.sha256` when it is added,
//! and this test fails when one changes or goes. A new migration is recorded with
//! `UPDATE_FROZEN_MIGRATIONS=1 cargo test -p lifeboat-server --test frozen_migrations`,
//! which only ever appends.

use std::collections::BTreeMap;
use std::path::Path;

fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn committed_migrations_never_change() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let list_path = root.join("tests/frozen_migrations.sha256");
    let list = std::fs::read_to_string(&list_path).unwrap_or_default();
    let frozen: BTreeMap<String, String> = list
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (hash, name) = l
                .split_once("  ")
                .unwrap_or_else(|| panic!("not `HASH  NAME`: {l:?}"));
            (name.to_string(), hash.to_string())
        })
        .collect();
    let mut on_disk = BTreeMap::new();
    for e in std::fs::read_dir(root.join("migrations"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".sql") {
            on_disk.insert(name, sha256_hex(&std::fs::read(e.path()).unwrap()));
        }
    }
    let mut problems = Vec::new();
    for (name, hash) in &frozen {
        match on_disk.get(name) {
            None => problems.push(format!(
                "{name} was released and is gone: databases that ran it refuse this binary"
            )),
            Some(now) if now != hash => problems.push(format!(
                "{name} changed after it was released: put the change in a new migration"
            )),
            Some(_) => {}
        }
    }
    let new: Vec<(&String, &String)> = on_disk
        .iter()
        .filter(|(name, _)| !frozen.contains_key(*name))
        .collect();
    if std::env::var_os("UPDATE_FROZEN_MIGRATIONS").is_some() {
        let mut text = list.clone();
        for (name, hash) in &new {
            text.push_str(&format!("{hash}  {name}\n"));
        }
        std::fs::write(&list_path, text).unwrap();
    } else {
        for (name, _) in &new {
            problems.push(format!(
                "{name} is not recorded: run UPDATE_FROZEN_MIGRATIONS=1 cargo test -p \
                 lifeboat-server --test frozen_migrations, and commit the list with it"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(on_disk.len() >= 12, "the migrations were not found");
}
