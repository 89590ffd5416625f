//! Bringing a VM up from a point is a job on the agent (like a final sync): asked with a
//! job id, the call answers 202 at once and the job is polled at `/api/v1/jobs/{id}`,
//! its failure told with the status the call would have answered; the same id asked
//! again after a failure runs it again; a job id is checked like every id. An ordered
//! shutdown is a job the same way.

mod common;

use std::time::{Duration, Instant};

use common::start_agent;
use serde_json::{json, Value};

#[tokio::test]
async fn bringing_a_vm_up_is_a_job_polled_by_its_id() {
    let tmp = tempfile::Builder::new()
        .prefix("lbj")
        .tempdir_in("/tmp")
        .unwrap();
    let agent = start_agent(&tmp.path().join("home"), "alpha");
    let (client, credential) = common::enrolled_raw_client(&agent).await;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", agent.port);
    let vault = format!("file://{}/no-vault", tmp.path().display());
    let ask = |job: &str, recovery: &str, resume_only: bool| {
        json!({"recovery_id": recovery, "point": "1795703838177-f4359ed2", "vm": "web",
            "kind": "test", "resume_only": resume_only, "job_id": job,
            "vault": {"url": vault, "passphrase": "p"}})
    };
    let post = |body: Value| {
        client
            .post(url("/api/v1/recoveries"))
            .bearer_auth(&credential)
            .json(&body)
            .send()
    };
    let job_end = |id: String| {
        let (client, credential, url) = (client.clone(), credential.clone(), url(""));
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let job: Value = client
                    .get(format!("{url}/api/v1/jobs/{id}"))
                    .bearer_auth(&credential)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if job["state"] != "running" {
                    return job;
                }
                assert!(Instant::now() < deadline, "job {id} still runs: {job}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // A point in a vault that is not there: 202 and a job, which fails saying why.
    let resp = post(ask("provision-r1", "r1", false)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let job: Value = resp.json().await.unwrap();
    assert_eq!(
        (job["kind"].as_str(), job["vm"].as_str()),
        (Some("provision"), Some("web"))
    );
    let ended = job_end("provision-r1".into()).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(
        ended["status"], 400,
        "as the call would have answered: {ended}"
    );
    assert!(
        ended["error"].as_str().unwrap().contains("no-vault"),
        "{ended}"
    );
    // Asked again with the same id after a failure: run again (a retry), same answer.
    let again: Value = post(ask("provision-r1", "r1", false))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["job_id"], "provision-r1");
    assert_eq!(job_end("provision-r1".into()).await["status"], 400);

    // Resuming a recovery this host never had: the job says 404, nothing is made.
    let resp = post(ask("provision-r2", "r2", true)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let ended = job_end("provision-r2".into()).await;
    assert_eq!(ended["status"], 404, "{ended}");
    assert!(!tmp.path().join("home/vms/web").exists());

    // The job id is checked like every id: it never names a file outside the journal.
    let resp = post(ask("../../escape", "r3", false)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(!tmp.path().join("home/escape.json").exists());

    // An ordered shutdown is a job too: of a VM this host does not have, it fails
    // saying so, with the status the call answers when asked without a job id.
    let shutdown = |body: Value| {
        client
            .post(url("/api/v1/vms/ghost/shutdown"))
            .bearer_auth(&credential)
            .json(&body)
            .send()
    };
    let resp = shutdown(json!({"timeout_secs": 1, "job_id": "op1-shutdown"}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["kind"], "shutdown", "{job}");
    let ended = job_end("op1-shutdown".into()).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(
        ended["error"].as_str().unwrap().contains("ghost"),
        "{ended}"
    );
    let direct = shutdown(json!({"timeout_secs": 1})).await.unwrap();
    assert_eq!(direct.status().as_u16(), ended["status"], "{ended}");
}
