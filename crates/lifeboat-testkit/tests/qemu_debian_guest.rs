//! The real Debian guest (guest/debian) taking a new address from a new cloud-init seed,
//! as a recovered VM must. One disk and one NIC MAC per test, booted under QEMU TCG in
//! the lab's sites (a tap on each site's bridge):
//!
//! * a DR round trip: home (site A, instance `lb-dg-1`, NIC renamed `lan0`) → recovered
//!   (site B, instance `lb-dg-2`, NIC matched by MAC only, as Lifeboat's agent writes
//!   seeds, so it keeps the guest's name) → failback (site A, the home seed again). Each
//!   boot has the seed's address, route and DNS servers, and only those: cloud-init
//!   renders again because the instance-id differs from the last boot's, and the
//!   guest's lifeboat-cloud-network-prune removes the networkd file of the instance
//!   before. The recovered copy is reachable across the WAN through its new gateway.
//! * a reboot of the same instance: nothing rendered again, nothing removed, the same
//!   address; the guest agent reports the NIC with its MAC and address.
//!
//! Every boot announces its address with a gratuitous ARP (seen on its tap). Prints each
//! boot's time (QEMU start, or the reboot, to the first answer on port 80) and when the
//! announcement came. Two tests, not one story of four boots, so each stays well inside
//! nextest's limit on a busy machine.
//!
//! Needs root (namespaces, taps) and, for a cold image build, the apt mirror.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context};
use lifeboat_testkit::boot_timeout;
use lifeboat_testkit::debian_guest::{
    debian_disk_copy, wait_http_in, ArpWatch, DebianVm, DebianVmConfig, NoCloudSeed, StaticIpv4,
};
use lifeboat_testkit::lab::{Lab, LabOptions, Site};
use lifeboat_testkit::SerialConsole;
use serde_json::{json, Value};
use tokio::time::Instant;

const CMD: Duration = Duration::from_secs(60);
const MAC: &str = "52:54:00:77:00:01";
/// The same tap name in each site's namespace.
const TAP: &str = "dg0";

/// One boot of the disk: where, as which instance, and what the seed calls the NIC.
struct Boot {
    run: &'static str,
    site: Site,
    instance_id: &'static str,
    hostname: &'static str,
    /// `Some(name)`: the seed renames the NIC to `name`. `None`: the seed only matches
    /// the NIC by MAC and it keeps the guest's name for it, as in the seeds Lifeboat's
    /// agent writes.
    nic_name: Option<&'static str>,
}

impl Boot {
    /// `10.60.N.10/24` on the site's LAN, the site host as gateway and DNS server.
    fn nic(&self) -> StaticIpv4 {
        StaticIpv4 {
            mac: MAC.into(),
            id: self.nic_name.unwrap_or("lifeboat0").into(),
            rename: self.nic_name.is_some(),
            address: self.site.addr(10),
            prefix: 24,
            gateway: Some(self.site.host_addr()),
            dns: vec![self.site.host_addr(), self.site.addr(2)],
        }
    }

    fn http(&self) -> SocketAddr {
        SocketAddr::from((self.site.addr(10), 80))
    }
}

/// Boots `disk` in `boot.site` with `boot`'s seed until it answers at the seed's address
/// and has announced it (`DebianVm::start_answering`).
async fn start(lab: &Lab, dir: &Path, disk: &Path, boot: &Boot) -> anyhow::Result<DebianVm> {
    let seed = dir.join(format!("{}.seed.img", boot.run));
    NoCloudSeed::new(boot.instance_id, boot.hostname)?
        .with_static_ipv4(&boot.nic())
        .write_disk(&seed)?;
    let netns = lab.netns(boot.site).clone();
    let mut config = DebianVmConfig::new(boot.run, dir, disk, netns, TAP, MAC);
    config.seed = Some(seed);
    DebianVm::start_answering(&config, boot.site.addr(10), boot.hostname).await
}

/// What every boot must show: exactly the seed's address on the NIC (under the seed's
/// name for it, if any), its default route and DNS servers, this instance's id, and
/// only this instance's networkd file. Returns the NIC's name in the guest.
async fn check_network(
    lab: &Lab,
    console: &mut SerialConsole,
    boot: &Boot,
) -> anyhow::Result<String> {
    let netns = lab.netns(boot.site);
    let nic = boot.nic();
    let name = console
        .run(
            &format!("ip -br link | awk 'tolower($3) == \"{MAC}\" {{print $1}}'"),
            CMD,
        )
        .await?;
    ensure!(!name.is_empty(), "{}: no NIC with MAC {MAC}", boot.run);
    if let Some(expected) = boot.nic_name {
        assert_eq!(name, expected, "{}: the NIC's name", boot.run);
    }
    let ip = wait_http_in(netns, boot.http(), "/ip", CMD).await?;
    assert_eq!(
        String::from_utf8_lossy(&ip),
        format!("{name} {}/24\n", nic.address),
        "{}: the guest's global addresses",
        boot.run
    );
    let route = console.run("ip -4 route show default", CMD).await?;
    let via = format!("via {} dev {name}", boot.site.host_addr());
    assert!(
        route.contains(&via),
        "{}: default route {route:?}",
        boot.run
    );
    let dns = console.run(&format!("resolvectl dns {name}"), CMD).await?;
    let servers = format!("{} {}", nic.dns[0], nic.dns[1]);
    assert!(dns.contains(&servers), "{}: DNS {dns:?}", boot.run);
    let id = console
        .run("cat /var/lib/cloud/data/instance-id", CMD)
        .await?;
    assert_eq!(id, boot.instance_id, "{}: cloud-init's instance", boot.run);
    let files = console.run("ls /etc/systemd/network", CMD).await?;
    assert_eq!(
        files,
        format!("10-cloud-init-{name}.network"),
        "{}: networkd files",
        boot.run
    );
    Ok(name)
}

/// What the guest's lifeboat-cloud-network-prune unit said in this boot: it names each
/// networkd file of an earlier instance it removed.
async fn pruned(console: &mut SerialConsole) -> anyhow::Result<String> {
    Ok(console
        .run(
            "journalctl -b -o cat --no-pager -u lifeboat-cloud-network-prune",
            CMD,
        )
        .await?)
}

/// The guest agent answers and reports the NIC (`name`) with its MAC and the seed's
/// address.
async fn check_agent(vm: &DebianVm, boot: &Boot, name: &str) -> anyhow::Result<()> {
    let mut agent = vm.agent(CMD).await?;
    assert_eq!(agent.execute("guest-ping", None, CMD).await?, json!({}));
    let interfaces = agent
        .execute("guest-network-get-interfaces", None, CMD)
        .await?;
    let nic = interfaces
        .as_array()
        .and_then(|all| all.iter().find(|i| i["name"] == name))
        .with_context(|| format!("no {name} in {interfaces}"))?;
    assert_eq!(nic["hardware-address"], MAC);
    let address = boot.site.addr(10).to_string();
    assert!(
        has_ipv4(nic, &address, 24),
        "{}: no {address}/24 on {name}: {nic}",
        boot.run
    );
    Ok(())
}

fn has_ipv4(interface: &Value, address: &str, prefix: u64) -> bool {
    interface["ip-addresses"].as_array().is_some_and(|all| {
        all.iter()
            .any(|a| a["ip-address"] == address && a["prefix"].as_u64() == Some(prefix))
    })
}

/// Powers the guest off through its agent and waits for QEMU to exit.
async fn shut_down(mut vm: DebianVm) -> anyhow::Result<()> {
    let pressed = Instant::now();
    vm.agent(CMD).await?.shutdown().await?;
    let status = vm.wait_exit(Duration::from_secs(120)).await?;
    assert!(status.success(), "QEMU exit status {status}");
    eprintln!(
        "powered off {:.1} s after guest-shutdown",
        pressed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Reboots the guest from its shell and waits until a new boot shows on its boot console
/// and the service answers at `boot`'s address again; prints the reboot time. The serial
/// shell restarts with the guest: the caller connects a new console afterwards.
async fn reboot(
    lab: &Lab,
    vm: &DebianVm,
    console: &mut SerialConsole,
    boot: &Boot,
) -> anyhow::Result<()> {
    // Every boot logs cloud-init's first stage once on the boot console (ttyS0, a file):
    // a count that grows is a new boot, whatever the serial shell is doing meanwhile.
    let boots = |log: &str| log.matches("running 'init-local'").count();
    let before = boots(&vm.console_log());
    let arp = ArpWatch::start(lab.netns(boot.site), TAP)?;
    let pressed = Instant::now();
    console.run("systemctl --no-block reboot", CMD).await?;
    let deadline = pressed + boot_timeout();
    while boots(&vm.console_log()) <= before {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "{}: no new boot within {:?}; console log:\n{}",
                boot.run,
                boot_timeout(),
                vm.console_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let new_boot = pressed.elapsed();
    let left = deadline.saturating_duration_since(Instant::now());
    wait_http_in(lab.netns(boot.site), boot.http(), "/", left).await?;
    let answered = pressed.elapsed();
    let announced = arp.wait_announcement(MAC, boot.site.addr(10), CMD).await?;
    eprintln!(
        "{}: rebooted; the new boot began {:.1} s, http://{}/ answered {:.1} s after \
         systemctl reboot; gratuitous ARP at {:.1} s",
        boot.run,
        new_boot.as_secs_f64(),
        boot.http(),
        answered.as_secs_f64(),
        announced.at.as_secs_f64()
    );
    Ok(())
}

const HOME: Boot = Boot {
    run: "home",
    site: Site::A,
    instance_id: "lb-dg-1",
    hostname: "dg-home",
    nic_name: Some("lan0"),
};

/// A lab with a tap `TAP` in sites A and B, and a copy of the Debian guest's disk.
fn lab_and_disk() -> anyhow::Result<(Lab, tempfile::TempDir, PathBuf)> {
    let lab = Lab::start(LabOptions::default())?;
    for site in [Site::A, Site::B] {
        lab.add_tap(site, TAP)?;
    }
    let dir = tempfile::tempdir()?;
    let disk = debian_disk_copy(dir.path(), "disk.qcow2")?;
    Ok((lab, dir, disk))
}

#[tokio::test]
async fn recovery_and_failback_each_bring_only_the_new_seeds_address() -> anyhow::Result<()> {
    let (lab, dir, disk) = lab_and_disk()?;
    let recovered = Boot {
        run: "recovered",
        site: Site::B,
        instance_id: "lb-dg-2",
        hostname: "dg-recovered",
        nic_name: None,
    };
    let failback = Boot {
        run: "failback",
        ..HOME
    };

    let vm = start(&lab, dir.path(), &disk, &HOME).await?;
    let mut console = vm.console(boot_timeout()).await?;
    check_network(&lab, &mut console, &HOME).await?;
    drop(console);
    shut_down(vm).await?;

    // Recovered at site B: a new instance-id, a new address, the NIC matched by MAC
    // only (so it keeps the guest's own name for it, not lan0).
    let vm = start(&lab, dir.path(), &disk, &recovered).await?;
    let mut console = vm.console(boot_timeout()).await?;
    let recovered_name = check_network(&lab, &mut console, &recovered).await?;
    assert_ne!(recovered_name, "lan0");
    eprintln!("recovered: the NIC kept the guest's name {recovered_name}");
    let log = pruned(&mut console).await?;
    assert!(
        log.contains(
            "removed an earlier instance's /etc/systemd/network/10-cloud-init-lan0.network"
        ),
        "{log}"
    );
    check_agent(&vm, &recovered, &recovered_name).await?;
    // An operator at the client site reaches it across the WAN: the seed's gateway works.
    let hostname = wait_http_in(lab.netns(Site::Client), recovered.http(), "/", CMD).await?;
    assert_eq!(hostname, b"dg-recovered\n");
    drop(console);
    shut_down(vm).await?;

    // Failback to site A with the home seed (an instance-id this disk had before, but
    // not in its last boot): the home address again, and only it.
    let vm = start(&lab, dir.path(), &disk, &failback).await?;
    let mut console = vm.console(boot_timeout()).await?;
    check_network(&lab, &mut console, &failback).await?;
    let log = pruned(&mut console).await?;
    let removed = format!(
        "removed an earlier instance's /etc/systemd/network/10-cloud-init-{recovered_name}.network"
    );
    assert!(log.contains(&removed), "{log}");
    drop(console);
    shut_down(vm).await
}

#[tokio::test]
async fn the_same_instance_rebooting_keeps_its_network_config() -> anyhow::Result<()> {
    let (lab, dir, disk) = lab_and_disk()?;
    let vm = start(&lab, dir.path(), &disk, &HOME).await?;
    let mut console = vm.console(boot_timeout()).await?;
    check_network(&lab, &mut console, &HOME).await?;
    check_agent(&vm, &HOME, "lan0").await?;

    reboot(&lab, &vm, &mut console, &HOME).await?;
    drop(console);
    let mut console = vm.console(boot_timeout()).await?;
    check_network(&lab, &mut console, &HOME).await?;
    let log = pruned(&mut console).await?;
    assert!(!log.contains("removed"), "{log}");
    check_agent(&vm, &HOME, "lan0").await?;
    drop(console);
    shut_down(vm).await
}
