//! Protection into an S3 vault (s3s-fs), and the vault going away: the VM turns Degraded
//! with the storage error as the reason, and Protected again once the storage is back,
//! with points that verify.

mod common;

use std::time::Duration;

use common::cluster::{boot_guest, cluster_with_vault, lifeboat, run_ok};
use lifeboat_testkit::S3Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_vault_that_goes_away_degrades_then_recovers() {
    let mut s3 = S3Server::start().await.unwrap();
    // The agents (children of this process) and the CLI reach the bucket with these.
    std::env::set_var("AWS_ACCESS_KEY_ID", &s3.access_key);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &s3.secret_key);
    std::env::set_var("AWS_ENDPOINT_URL", &s3.endpoint);
    std::env::set_var("AWS_REGION", "us-east-1");
    let url = format!("s3://{}/vault", s3.bucket);
    let cl = cluster_with_vault(None, Some(&url));
    let (_vm, _console) = boot_guest(&cl.home("alpha"), "web", &[]).await;

    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.protect_web(&["--wait", "--timeout", "10m"]);
        assert!(ok, "{out}\n{err}");
    });
    s3.kill();
    tokio::task::block_in_place(|| {
        let p = cl.wait_for("Degraded", Duration::from_secs(180), |p| {
            p["state"] == "degraded"
        });
        let reason = p["reason"].as_str().unwrap().to_string();
        assert!(
            reason.contains("vault") || reason.contains("127.0.0.1"),
            "{reason}"
        );
        eprintln!("storage gone: {reason}");
    });
    s3.restart().await.unwrap();
    tokio::task::block_in_place(|| {
        let before = cl.json(&["points", "web"]).as_array().unwrap().len();
        cl.wait_for("Protected with new points", Duration::from_secs(300), |p| {
            p["state"] == "protected"
                && cl.json(&["points", "web"]).as_array().unwrap().len() > before
        });
        let mut c = lifeboat(cl.tmp.path());
        c.args(["vault", "--vault", &url, "verify"]);
        run_ok(c);
    });
}
