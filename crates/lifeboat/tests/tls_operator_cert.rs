//! `--tls-cert/--tls-key`: the server and an agent serve a certificate of the operator's CA
//! instead of their self-signed identities, set from a config file or flags. Clients check
//! the server's with that CA and its name (`--ca-cert`), or pin its fingerprint; the
//! server pins the agent's. A key every user can read, or a key of another certificate,
//! is refused before anything listens.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{client_with, spawn_server, start_agent_on};

/// A CA and certificates it signed for `localhost` and 127.0.0.1, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
}

/// Writes `name`.pem and `name`.key (0600) for a certificate signed by `ca`; returns the
/// certificate's DER.
fn issue(dir: &Path, name: &str, ca: &Ca) -> Vec<u8> {
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    // The chain as an operator installs it: the host's certificate, then the CA's.
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem() + &ca.pem()).unwrap();
    write_key(
        &dir.join(format!("{name}.key")),
        &key.serialize_pem(),
        0o600,
    );
    cert.der().to_vec()
}

fn write_key(path: &Path, pem: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A CA: its certificate, and the issuer (name and key) that signs with it.
type Ca = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

fn new_ca(name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertifiedIssuer::self_signed(params, key).unwrap()
}

fn pki(dir: &Path) -> (Pki, Vec<u8>, Vec<u8>) {
    let ca = new_ca("Lifeboat test CA");
    let other = new_ca("Someone else's CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
    let server = issue(dir, "server", &ca);
    let agent = issue(dir, "agent", &ca);
    (
        Pki {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
        },
        server,
        agent,
    )
}

/// `lifeboat server` with `args` in `home`; its exit status and stderr when it fails to
/// start (it must, before listening).
fn server_refused(home: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("--home")
        .arg(home)
        .args(["server", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn server_and_agent_serve_the_operators_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (pki, server_der, agent_der) = pki(dir);

    // The server, from its config file.
    let home = dir.join("server-home");
    let conf = dir.join("server.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    cmd.arg("--home")
        .arg(&home)
        .args(["server", "--config"])
        .arg(&conf)
        .env_remove("LIFEBOAT_DATABASE");
    let server = spawn_server(cmd, &home);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    assert_eq!(
        server.fingerprint,
        lifeboat_agent::identity::fingerprint(&server_der),
        "the banner shows the served certificate's fingerprint"
    );
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let by_name = format!("https://localhost:{port}");

    // Checked with the CA and the name, as a browser would.
    let ca = pki.ca.to_str().unwrap();
    let (ok, out, err) = client_with(
        &server,
        Some(&server.token),
        &["hosts", "list", "--server", &by_name, "--ca-cert", ca],
        &[],
    );
    assert!(ok, "{out}\n{err}");
    // Another CA's certificate is not this one's.
    let other = pki.other_ca.to_str().unwrap();
    let (ok, _, err) = client_with(
        &server,
        Some(&server.token),
        &["hosts", "list", "--server", &by_name, "--ca-cert", other],
        &[],
    );
    assert!(!ok, "a server certified by another CA was trusted");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // Pinned by the fingerprint the banner showed.
    let (ok, out, err) = client_with(
        &server,
        Some(&server.token),
        &["hosts", "list", "--server-fingerprint", &server.fingerprint],
        &[],
    );
    assert!(ok, "{out}\n{err}");
    // On the server's machine, neither is needed: the CLI pins what the API serves.
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("--home")
        .arg(&home)
        .args(["hosts", "list", "--server", &server.url])
        .env("LIFEBOAT_TOKEN", &server.token)
        .env_remove("LIFEBOAT_SERVER_FINGERPRINT")
        .env_remove("LIFEBOAT_CA_CERT")
        .env("LIFEBOAT_CONFIG", dir.join("no-client.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An agent, from its flags: the server pins the certificate it serves.
    let agent_home = dir.join("agent-home");
    let agent = start_agent_on(
        &agent_home,
        "alpha",
        0,
        &[
            "--tls-cert",
            dir.join("agent.pem").to_str().unwrap(),
            "--tls-key",
            dir.join("agent.key").to_str().unwrap(),
        ],
    );
    let agent_fp = lifeboat_agent::identity::fingerprint(&agent_der);
    assert_eq!(agent.fingerprint, agent_fp);
    let address = format!("127.0.0.1:{}", agent.port);
    let pin = [("LIFEBOAT_SERVER_FINGERPRINT", server.fingerprint.as_str())];
    let code = agent.code.clone().unwrap();
    let mut env = pin.to_vec();
    env.push(("LIFEBOAT_ENROLL_CODE", code.as_str()));
    let (ok, out, err) = client_with(
        &server,
        Some(&server.token),
        &["hosts", "enroll", &address, "--fingerprint", &agent_fp],
        &env,
    );
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = client_with(
        &server,
        Some(&server.token),
        &["--json", "vms", "list"],
        &pin,
    );
    assert!(ok, "{out}\n{err}");
    let vms: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        vms["unreachable"].as_array().map(Vec::len),
        Some(0),
        "the server reached the agent through its certificate: {vms}"
    );
    drop(agent);
    drop(server);

    // Refused before anything listens: a key every user can read…
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    let loose = dir.join("loose.key");
    write_key(&loose, &std::fs::read_to_string(&key).unwrap(), 0o644);
    let (code, err) = server_refused(
        &dir.join("h2"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            loose.to_str().unwrap(),
        ],
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("chmod o-r"), "{err}");
    // …the agent's key with the server's certificate…
    let (code, err) = server_refused(
        &dir.join("h3"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            dir.join("agent.key").to_str().unwrap(),
        ],
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("is it this certificate's key?"), "{err}");
    // …and a certificate without its key (a usage error).
    let (code, err) = server_refused(&dir.join("h4"), &["--tls-cert", cert.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--tls-key"), "{err}");
}
