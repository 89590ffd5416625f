//! An agent inside a lab site, reached by the server (in the machine's namespace)
//! through a relay, as across a WAN.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lifeboat_testkit::lab::{Lab, Netns, Relay, Site};
use lifeboat_testkit::libvirtd::SiteDaemon;

use super::{enroll, spawn_agent, Agent, Server};

/// `lifeboat agent` inside `site` (beside the site's own libvirtd when it has one),
/// reaching the vault at `endpoint`; and the relay the server (in the host's namespace)
/// reaches it through.
pub fn site_agent(
    lab: &Lab,
    (site, daemon): (Site, Option<&SiteDaemon>),
    home: &Path,
    name: &str,
    options: &[&str],
    endpoint: &str,
    one_way: Duration,
) -> (Agent, Relay) {
    let program = env!("CARGO_BIN_EXE_lifeboat");
    let mut c: Command = match daemon {
        Some(daemon) => daemon.daemon().command(program),
        None => lab.command(site, program),
    };
    c.arg("--home")
        .arg(home)
        .args(["--accel", "tcg", "agent", "--listen"])
        .arg(format!("{}:0", site.host_addr()))
        .args(["--hostname", name])
        .args(options)
        .env("AWS_ENDPOINT_URL", endpoint);
    let agent = spawn_agent(c);
    let relay = Relay::start_between(
        &Netns::host(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        lab.netns(site),
        SocketAddr::from((site.host_addr(), agent.port)),
        one_way,
    )
    .unwrap();
    (agent, relay)
}

/// Enrolls `agent` with `server` at its relay's address (how the server reaches it).
pub fn enroll_via(server: &Server, agent: &Agent, relay: &Relay) {
    let (ok, _, err) = enroll(
        server,
        Some(&server.token),
        &relay.addr().to_string(),
        agent.code.as_deref().unwrap(),
        Some(&agent.fingerprint),
    );
    assert!(ok, "{err}");
}
