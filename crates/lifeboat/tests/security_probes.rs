//! The security review's probes (issue 12, docs/security.md), kept running: each test
//! plays an attacker against real `lifeboat agent` and `lifeboat server` processes and
//! checks what an operator relies on.
//!
//! - floods of connections that never finish a request lock nobody out, and are closed;
//! - a compromised agent cannot grow the server's memory with an endless reply, nor
//!   make it resend a request (a vault passphrase) elsewhere with a redirect;
//! - a host cannot be picked in place of another by taking its name, nor by taking a
//!   VM's name while the VM's real host is down;
//! - the server's files hold nothing that opens a vault: neither the passphrase nor the
//!   master key nor any VM's key (the check qemu_failover runs is proven here);
//! - secrets stay out of the process list, and request bodies are bounded.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::cluster::{cluster, lifeboat, run_ok};
use common::hostile_agent::{Attack, HostileAgent, Recorder};
use common::login::{post_login, session_cookie};
use common::{
    agent_command, enroll, spawn_agent, start_agent, start_agent_on, start_server,
    start_server_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What a legitimate request must take at most while a flood holds connections (tens of
/// milliseconds here; without the limits it never answers).
const ANSWER_LIMIT: Duration = Duration::from_secs(2);
/// The listeners' idle limit (serve::admission) and the slack a busy machine needs.
const IDLE_CLOSE_LIMIT: Duration = Duration::from_secs(15 + 15);

/// Opens `per_source` connections from each address of `sources` to `target` at once,
/// writing `payload` (half a request, or nothing) on each; keeps the ones that opened
/// within a few seconds (a listener that stopped accepting leaves the rest hanging).
async fn flood(
    target: SocketAddr,
    sources: &[IpAddr],
    per_source: usize,
    payload: &[u8],
) -> Vec<TcpStream> {
    let attempts = sources
        .iter()
        .flat_map(|s| std::iter::repeat_n(*s, per_source))
        .map(|source| async move {
            let socket = TcpSocket::new_v4().ok()?;
            socket.bind(SocketAddr::new(source, 0)).ok()?;
            let connect = tokio::time::timeout(Duration::from_secs(3), socket.connect(target));
            let mut stream = connect.await.ok()?.ok()?;
            if !payload.is_empty() {
                stream.write_all(payload).await.ok()?;
            }
            Some(stream)
        });
    futures::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Connections that are opened again as soon as the listener closes them.
struct Churn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reconnects: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Churn {
    async fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// `per_source` connections from each of `sources` to `target`, each sending the first
/// bytes of a TLS record and opened again as soon as the listener closes it.
fn churn(target: SocketAddr, sources: Vec<IpAddr>, per_source: usize) -> Churn {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let reconnects = std::sync::Arc::new(AtomicUsize::new(0));
    let tasks = sources
        .into_iter()
        .flat_map(|s| std::iter::repeat_n(s, per_source))
        .map(|source| {
            let (stop, reconnects) = (stop.clone(), reconnects.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Some(mut stream) =
                        flood(target, &[source], 1, b"\x16\x03\x01\x02").await.pop()
                    else {
                        continue;
                    };
                    reconnects.fetch_add(1, Ordering::Relaxed);
                    let mut buf = [0u8; 64];
                    // Held until the listener closes it (or the flood stops).
                    while !stop.load(Ordering::Relaxed) {
                        match tokio::time::timeout(
                            Duration::from_millis(200),
                            stream.read(&mut buf),
                        )
                        .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            _ => {}
                        }
                    }
                }
            })
        })
        .collect();
    Churn {
        stop,
        reconnects,
        tasks,
    }
}

/// How many of `streams` the peer has closed by `deadline` (the rest are still open).
async fn closed_by(streams: Vec<TcpStream>, deadline: Instant) -> (usize, usize) {
    let waits = streams.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                // A TLS alert or an HTTP error answer: wait for the close itself.
                Ok(Ok(_)) => continue,
            }
        }
    });
    let closed = futures::future::join_all(waits).await;
    let n = closed.iter().filter(|c| **c).count();
    (n, closed.len() - n)
}

/// The peak resident set of process `pid`, MiB.
fn peak_rss_mib(pid: u32) -> i64 {
    (lifeboat_testkit::status_kb(pid, "VmHWM").unwrap() >> 20) as i64
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Times `what`, which must succeed within ANSWER_LIMIT.
async fn answers_quickly<T, E: std::fmt::Debug>(
    name: &str,
    what: impl std::future::Future<Output = Result<T, E>>,
) -> Duration {
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), what).await;
    let took = started.elapsed();
    match r {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("{name} failed after {took:?} under the flood: {e:?}"),
        Err(_) => panic!("{name} did not answer within 20 s under the flood"),
    }
    assert!(
        took < ANSWER_LIMIT,
        "{name} took {took:?} under the flood (limit {ANSWER_LIMIT:?})"
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_half_open_connections_lock_nobody_out_and_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    // The flood needs 1,500 sockets of this process.
    lifeboat_agent::serve::admission::raise_open_file_limit();

    // An agent allowed 200 open files (the review's setting, where 189 idle TLS
    // connections made it unreachable), flooded from 20 addresses: more connections than
    // its limit, so newcomers push idle ones out.
    let mut limited = agent_command(&tmp.path().join("limited"), "limited", 0, &[]);
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        limited.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 200,
                rlim_max: 200,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let limited = spawn_agent(limited);
    // A plain-HTTP agent (loopback only, as `lifeboat up` and tests use it).
    let plain = spawn_agent(agent_command(
        &tmp.path().join("plain"),
        "plain",
        0,
        &["--insecure-http"],
    ));
    // The server over TLS, with the dashboard.
    let server = start_server_with(&tmp.path().join("server"), None, true);
    let password =
        std::fs::read_to_string(tmp.path().join("server/server/admin.password")).unwrap();
    let server_addr: SocketAddr = server.url.trim_start_matches("https://").parse().unwrap();
    let server_http =
        lifeboat_agent::client::pinned_http_client(&server.fingerprint, Duration::from_secs(20))
            .unwrap();
    let login = post_login(&server_http, &server.url, "admin", password.trim()).await;
    let session = session_cookie(&login).expect("the admin logs in");

    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let sources: Vec<IpAddr> = (2..22).map(loopback).collect();
    let started = Instant::now();
    let mut held = Vec::new();
    // Half of them silent, half with the first bytes of a TLS record or request line.
    held.extend(flood(at(limited.port), &sources, 13, b"").await);
    held.extend(flood(at(limited.port), &sources, 12, b"\x16\x03\x01\x02").await);
    held.extend(flood(at(plain.port), &[loopback(2)], 500, b"GET /api/v1/hel").await);
    held.extend(flood(server_addr, &[loopback(2)], 250, b"").await);
    held.extend(flood(server_addr, &[loopback(2)], 250, b"\x16\x03\x01\x02").await);
    let opened = held.len();
    eprintln!(
        "1,500 connections attempted in {:?}; {opened} still open",
        started.elapsed()
    );
    assert!(
        opened >= 1000,
        "only {opened} connections opened: the flood is no flood"
    );

    let limited_client = lifeboat_agent::client::AgentClient::new(
        &format!("127.0.0.1:{}", limited.port),
        &limited.fingerprint,
        Duration::from_secs(20),
    )
    .unwrap();
    let took = answers_quickly("the limited agent's hello", limited_client.hello()).await;
    eprintln!("limited agent's hello under the flood: {took:?}");
    let plain_http = reqwest::Client::new();
    let took = answers_quickly(
        "the plain agent's hello",
        plain_http
            .get(format!("http://127.0.0.1:{}/api/v1/hello", plain.port))
            .send(),
    )
    .await;
    eprintln!("plain agent's hello under the flood: {took:?}");
    let took = answers_quickly("a logged-in dashboard page", async {
        let r = server_http
            .get(format!("{}/hosts", server.url))
            .header("cookie", &session)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200);
        r.text().await
    })
    .await;
    eprintln!("logged-in /hosts under the flood: {took:?}");

    // A flood that churns: as soon as one of its connections is pushed out it opens
    // another, from 10 more addresses, so the limited agent (50 slots) pushes one out at
    // every accept. A real client's new connection still gets its request in.
    let churn = churn(at(limited.port), (30..40).map(loopback).collect(), 8);
    // A hello every 200 ms for 3 s while the flood churns (pacing, not waiting).
    let mut slowest = Duration::ZERO;
    for _ in 0..15 {
        let took = answers_quickly(
            "the limited agent's hello under churn",
            limited_client.hello(),
        )
        .await;
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("limited agent's slowest hello of 15 under churn: {slowest:?}");
    let reconnects = churn.stop().await;
    eprintln!("the churning flood reconnected {reconnects} times");
    assert!(
        reconnects > 100,
        "the flood did not churn ({reconnects} reconnects)"
    );

    // Every connection that never sent a whole request is closed by the listener.
    let (closed, open) = closed_by(held, started + IDLE_CLOSE_LIMIT).await;
    eprintln!(
        "{closed} of {opened} held connections closed by the listeners within {:?}",
        started.elapsed()
    );
    assert_eq!(
        open, 0,
        "{open} half-open connections still open after {IDLE_CLOSE_LIMIT:?}"
    );
    // And the limited agent still answers afterwards.
    limited_client.hello().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_agent_cannot_grow_the_server_or_redirect_its_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server"), None);
    let pid = server.child.id();
    let hostile = HostileAgent::start(&tmp.path().join("hostile"), Attack::EndlessInventory).await;
    let address = hostile.addr.to_string();
    let (ok, _, err) = enroll(
        &server,
        Some(&server.token),
        &address,
        "any-code",
        Some(&hostile.fingerprint),
    );
    assert!(ok, "the double enrolls as an agent would: {err}");
    let http = reqwest::Client::new();
    let vms = |http: reqwest::Client| {
        let (url, token) = (server.url.clone(), server.token.clone());
        async move {
            let r = http
                .get(format!("{url}/api/v1/vms"))
                .bearer_auth(token)
                .send()
                .await
                .expect("the server answers GET /api/v1/vms");
            assert_eq!(r.status().as_u16(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    // Warm up (the first list allocates what every list needs), then measure.
    hostile.set(Attack::Redirect("http://127.0.0.1:9/".into()));
    vms(http.clone()).await;
    let before = peak_rss_mib(pid);

    // An endless inventory: cut off at the bound, the host named as not answering.
    hostile.set(Attack::EndlessInventory);
    let started = Instant::now();
    let list = vms(http.clone()).await;
    let took = started.elapsed();
    let problem = list["unreachable"][0]["error"].as_str().unwrap_or_default();
    assert!(problem.contains("larger than"), "{list:#}");
    let grew_mib = peak_rss_mib(pid) - before;
    let sent_mib = hostile.sent.load(std::sync::atomic::Ordering::Relaxed) >> 20;
    eprintln!(
        "endless inventory: answered in {took:?}; the double sent {sent_mib} MiB; the server's peak RSS grew {grew_mib} MiB"
    );
    assert!(
        grew_mib < 60,
        "the server's peak RSS grew by {grew_mib} MiB on one endless reply"
    );

    // Just under the byte bound, but made of tiny values: refused before it is parsed
    // (parsed, it would take many times its size).
    hostile.set(Attack::TinyVms);
    let list = vms(http.clone()).await;
    let problem = list["unreachable"][0]["error"].as_str().unwrap_or_default();
    assert!(problem.contains("JSON values"), "{list:#}");
    let grew_mib = peak_rss_mib(pid) - before;
    eprintln!("an inventory of tiny VMs: the server's peak RSS grew {grew_mib} MiB in all");
    assert!(
        grew_mib < 60,
        "the server's peak RSS grew by {grew_mib} MiB on a reply of tiny values"
    );

    // A redirect: never followed, so nothing reaches the address it names.
    let recorder = Recorder::start().await;
    hostile.set(Attack::Redirect(recorder.url.clone()));
    let list = vms(http.clone()).await;
    let problem = list["unreachable"][0]["error"].as_str().unwrap_or_default();
    assert!(problem.contains("never followed"), "{list:#}");
    // Enabling protection sends the vault passphrase to the agents: a 307 on that call
    // must not carry it anywhere else.
    hostile.set(Attack::InventoryThenRedirect(recorder.url.clone()));
    let r = http
        .post(format!("{}/api/v1/protections", server.url))
        .bearer_auth(&server.token)
        .json(&serde_json::json!({
            "vm": "web",
            "vault": "file:///nonexistent-vault",
            "vault_passphrase": "passphrase-that-must-not-travel",
            "recovery_host": address,
        }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(!status.is_success(), "{status}: {body}");
    assert!(body.contains("never followed"), "{status}: {body}");
    // A followed redirect would have been made before the server answered.
    assert_eq!(
        recorder.connections(),
        0,
        "a redirect was followed: {:?}",
        String::from_utf8_lossy(&recorder.received.lock().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_named_like_the_recovery_site_is_never_picked_in_its_place() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server"), None);
    let beta = start_agent(&tmp.path().join("beta"), "beta");
    let impostor = start_agent(&tmp.path().join("impostor"), "beta");
    for a in [&beta, &impostor] {
        let (ok, _, err) = enroll(
            &server,
            Some(&server.token),
            &format!("127.0.0.1:{}", a.port),
            a.code.as_deref().unwrap(),
            Some(&a.fingerprint),
        );
        assert!(ok, "{err}");
    }
    let (ok, _, err) = common::client_with(
        &server,
        Some(&server.token),
        &[
            "protect",
            "web",
            "--vault",
            "file:///nonexistent-vault",
            "--recovery-host",
            "beta",
        ],
        &[("LIFEBOAT_PASSPHRASE", "any passphrase")],
    );
    assert!(!ok);
    assert!(
        err.contains("2 enrolled hosts are named beta")
            && err.contains(&format!("127.0.0.1:{}", impostor.port)),
        "{err}"
    );
}

/// A compromised host that copies a VM's name while the VM's real host is down is not
/// picked in its place: a VM named without its host must be found on every host, and
/// every host must answer (else the impostor would get the vault's passphrase).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_named_without_its_host_is_refused_while_a_host_is_down() {
    let mut cl = cluster(None);
    // web: a VM defined (not running) on alpha.
    let disk = cl.tmp.path().join("web.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let spec = cl.tmp.path().join("web.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"web\"\nmemory_mib = 64\n[[disks]]\nname = \"vda\"\npath = \"{}\"\nformat = \"raw\"\n",
            disk.display()
        ),
    )
    .unwrap();
    let mut define = lifeboat(&cl.home("alpha"));
    define.args(["vm", "define"]).arg(&spec);
    run_ok(define);
    // An enrolled impostor whose inventory lists web too; every other call it answers
    // with a redirect to a recorder, which would catch the passphrase.
    let recorder = Recorder::start().await;
    let impostor = HostileAgent::start(
        &cl.tmp.path().join("impostor"),
        Attack::InventoryThenRedirect(recorder.url.clone()),
    )
    .await;
    let (ok, _, err) = enroll(
        &cl.server,
        Some(&cl.server.token),
        &impostor.addr.to_string(),
        "any-code",
        Some(&impostor.fingerprint),
    );
    assert!(ok, "{err}");

    // alpha is down: only the impostor has web, and that is not enough.
    let alpha_port = cl.alpha.port;
    cl.alpha.child.kill().unwrap();
    cl.alpha.child.wait().unwrap();
    let (ok, _, err) = cl.protect("web", &[]);
    assert!(!ok);
    assert!(
        err.contains("not every host answered")
            && err.contains(&format!("127.0.0.1:{alpha_port}"))
            && err.contains("name its host as HOST/web"),
        "{err}"
    );
    assert_eq!(recorder.connections(), 0, "the impostor was called on");
    assert_eq!(cl.json(&["status"])["protections"], serde_json::json!([]));

    // With alpha back, naming the host picks it (web alone names two hosts now).
    cl.alpha = start_agent_on(&cl.home("alpha"), "alpha", alpha_port, &[]);
    let (ok, _, err) = cl.protect("web", &[]);
    assert!(!ok && err.contains("say which as HOST/web"), "{err}");
    let (ok, out, err) = cl.protect("alpha/web", &["--no-wait"]);
    assert!(ok, "{out}{err}");
    let p = cl.protection();
    assert_eq!(
        (&p["vm"], &p["host"]),
        (&"web".into(), &"alpha".into()),
        "{p:#}"
    );
    assert_eq!(recorder.connections(), 0, "the impostor was called on");
}

/// The check that the server's files open no vault searches for each VM's key too: with
/// a key per VM (the default), a VM's key is all a thief needs to read its points.
#[test]
fn the_search_of_the_servers_files_finds_a_vm_key_in_any_encoding() {
    let cl = cluster(None);
    let image = cl.tmp.path().join("disk.raw");
    std::fs::write(&image, b"a block of a disk".repeat(4096)).unwrap();
    for name in ["alpha.web", "alpha.db"] {
        let mut c = lifeboat(cl.tmp.path());
        c.args(["vault", "--vault", &cl.vault, "put-image", "--name", name])
            .arg(&image);
        run_ok(c);
    }
    let secrets = cl.vault_secrets();
    assert!(
        cl.server_files_holding(&secrets).is_empty(),
        "a fresh server holds a vault secret"
    );
    // alpha.db's key, exported the way an operator would.
    let exported = cl.tmp.path().join("db-key.json");
    let mut c = lifeboat(cl.tmp.path());
    c.args([
        "vault", "--vault", &cl.vault, "key", "export", "--vm", "alpha.db",
    ])
    .arg(&exported);
    run_ok(c);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&exported).unwrap()).unwrap();
    let b64 = json["scope_key"].as_str().unwrap().to_string();
    let raw = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&b64)
            .unwrap()
    };
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let planted = cl.home("server").join("server/planted");
    for (encoding, bytes) in [
        ("raw", raw.clone()),
        ("base64", b64.clone().into_bytes()),
        ("hex", hex.into_bytes()),
    ] {
        let mut text = b"some row: ".to_vec();
        text.extend_from_slice(&bytes);
        std::fs::write(&planted, &text).unwrap();
        let found = cl.server_files_holding(&secrets);
        assert!(
            found
                .iter()
                .any(|f| f.starts_with(&format!("{} holds the key of alpha.db", planted.display()))),
            "alpha.db's key ({encoding}) in the server's files went unseen: {found:?}"
        );
        assert!(found.iter().all(|f| !f.contains("alpha.web")), "{found:?}");
    }
}

#[test]
fn secrets_stay_out_of_the_process_list() {
    let tmp = tempfile::tempdir().unwrap();
    let lifeboat = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"));
        c.arg("--home")
            .arg(tmp.path())
            .env_remove("LIFEBOAT_DATABASE")
            .env_remove("LIFEBOAT_ENROLL_CODE");
        c
    };
    // A database password on the command line is refused before anything starts.
    let url = "postgres://lifeboat:hunter2@127.0.0.1:9/lifeboat";
    let out = lifeboat()
        .args([
            "server",
            "--insecure-http",
            "--listen",
            "127.0.0.1:0",
            "--database",
            url,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("LIFEBOAT_DATABASE"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the error repeats the password: {err}"
    );
    // (From the environment it is taken: every PostgreSQL test starts its server with
    // LIFEBOAT_DATABASE, common::start_server_with.)
    // Enrollment codes have no flag; without the variable and a terminal, the CLI says
    // where the code goes.
    let out = lifeboat()
        .args(["hosts", "enroll", "127.0.0.1:9", "--code", "abcd"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unexpected argument '--code'"), "{err}");
    let out = lifeboat()
        .args(["hosts", "enroll", "127.0.0.1:9"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("LIFEBOAT_ENROLL_CODE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server"), None);
    // A 3 MiB JSON body: refused, not read into memory.
    let big = format!("{{\"vm\":\"{}\"}}", "a".repeat(3 << 20));
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/protections", server.url))
        .bearer_auth(&server.token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // A body that stops arriving: the request fails once the listener's stall limit
    // (15 s) passes, instead of holding its connection (and its slot) for ever.
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/protections HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"vm\": \"w",
        server.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(45), stream.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    assert!(read.is_ok(), "a stalled body held its connection for 45 s");
    assert!(
        took >= Duration::from_secs(14),
        "ended after {took:?}, before the stall limit"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    eprintln!("a stalled request body ended after {took:?}");
}
