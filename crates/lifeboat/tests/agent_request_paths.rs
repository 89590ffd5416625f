//! Ids and names in an agent's requests never reach a file outside its folders. A
//! recovery id `../../victim` once made `GET` read, and `DELETE` remove, the JSON file
//! HOME/victim.json — and kill and undefine the VM that file named. Every such request
//! is now a 400 that says what an id may be, and nothing on the host changes.

mod common;

use common::cluster::{lifeboat, run_ok};
use common::start_agent;
use serde_json::Value;

#[tokio::test]
async fn ids_and_names_from_requests_never_leave_the_agents_folders() {
    let tmp = tempfile::Builder::new()
        .prefix("lbr")
        .tempdir_in("/tmp")
        .unwrap();
    let home = tmp.path().join("home");
    let agent = start_agent(&home, "alpha");
    let (client, credential) = common::enrolled_raw_client(&agent).await;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", agent.port);

    // The victims: a VM of this host, and a file outside the journal naming it the way
    // a recovery record would.
    let disk = tmp.path().join("victim.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let spec = tmp.path().join("victim.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"victim\"\nmemory_mib = 64\n[[disks]]\nname = \"vda\"\npath = \"{}\"\nformat = \"raw\"\n",
            disk.display()
        ),
    )
    .unwrap();
    let mut define = lifeboat(&home);
    define.args(["vm", "define"]).arg(&spec);
    run_ok(define);
    let victim = home.join("victim.json");
    let record = serde_json::json!({
        "recovery_id": "victim", "vm": "victim", "point": "1795703838177-f4359ed2",
        "kind": "test", "vault_url": "file:///nonexistent", "disks": ["vda"],
        "forwards": [], "hydrated": true, "created_at": "2026-12-01T00:00:00Z"
    });
    let victim_text = serde_json::to_vec_pretty(&record).unwrap();
    std::fs::write(&victim, &victim_text).unwrap();

    // HOME/agent/recoveries/../../victim.json is HOME/victim.json.
    for (method, path) in [
        ("GET", "/api/v1/recoveries/..%2F..%2Fvictim"),
        ("DELETE", "/api/v1/recoveries/..%2F..%2Fvictim"),
        ("GET", "/api/v1/recoveries/%2E%2E%2F%2E%2E%2Fvictim"),
        ("DELETE", "/api/v1/recoveries/.hidden"),
        ("GET", "/api/v1/syncs/..%2F..%2Fvictim"),
    ] {
        let method: reqwest::Method = method.parse().unwrap();
        let resp = client
            .request(method.clone(), url(path))
            .bearer_auth(&credential)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 400, "{method} {path}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(
            msg.contains("id") && msg.contains("A-Z a-z 0-9 . _ -"),
            "{method} {path}: {msg}"
        );
    }
    // The same ids in a request body, and a VM name in a path.
    let resp = client
        .post(url("/api/v1/recoveries"))
        .bearer_auth(&credential)
        .json(
            &serde_json::json!({"recovery_id": "../../victim", "point": "1795703838177-f4359ed2",
            "vm": "victim", "kind": "test",
            "vault": {"url": "file:///nonexistent", "passphrase": "p"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = client
        .post(url("/api/v1/vms/..%2F..%2Fvictim/fence"))
        .bearer_auth(&credential)
        .json(&serde_json::json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // A well-formed id reaches the journal, which has no such recovery.
    let resp = client
        .get(url("/api/v1/recoveries/victim"))
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    assert_eq!(
        std::fs::read(&victim).unwrap(),
        victim_text,
        "the file outside the journal is untouched"
    );
    let mut list = lifeboat(&home);
    list.args(["--json", "vm", "list"]);
    let vms: Value = serde_json::from_str(&run_ok(list)).unwrap();
    assert!(
        vms.to_string().contains("\"victim\""),
        "the victim VM is still defined: {vms}"
    );
}
