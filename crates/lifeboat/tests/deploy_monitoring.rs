//! deploy/prometheus's alert rules and deploy/grafana's dashboard stand on what the
//! server really exports: the rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`: each alert fires when it should, not before), every metric
//! they and the dashboard name is one a real server's `GET /metrics` declares, and that
//! output passes `promtool check metrics` (Prometheus' naming conventions).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::start_server;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn promtool(args: &[&str], dir: &Path, stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus; scripts/test installs it)");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every `lifeboat_…` metric name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("lifeboat_") {
        let start = i + at;
        let end = bytes[start..]
            .iter()
            .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_'))
            .map_or(text.len(), |n| start + n);
        names.insert(text[start..end].to_string());
        i = end;
    }
    names
}

#[test]
fn alerts_and_dashboard_use_the_servers_real_metrics() {
    let rules = deploy().join("prometheus");
    let (ok, said) = promtool(&["check", "rules", "lifeboat-alerts.yml"], &rules, None);
    assert!(ok, "{said}");
    let (ok, said) = promtool(&["test", "rules", "lifeboat-alerts.test.yml"], &rules, None);
    assert!(ok && said.contains("SUCCESS"), "{said}");

    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server"), None);
    let out = Command::new("curl")
        .args(["-sf", "-H"])
        .arg(format!("Authorization: Bearer {}", server.token))
        .arg(format!("{}/metrics", server.url))
        .output()
        .unwrap();
    assert!(out.status.success());
    let metrics = String::from_utf8(out.stdout).unwrap();
    let declared: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(
        declared.contains("lifeboat_build_info")
            && metrics.contains(&format!(
                "lifeboat_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
        "{metrics}"
    );
    let (ok, said) = promtool(&["check", "metrics"], tmp.path(), Some(&metrics));
    assert!(ok && said.trim().is_empty(), "{said}\n{metrics}");

    let alerts = std::fs::read_to_string(rules.join("lifeboat-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(deploy().join("grafana/lifeboat.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    for (file, text) in [("alerts", &alerts), ("dashboard", &dashboard)] {
        let used = names_in(text);
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = used.difference(&declared).collect();
        assert!(
            unknown.is_empty(),
            "the {file} uses metrics the server does not export: {unknown:?} (it exports {declared:?})"
        );
    }
}
