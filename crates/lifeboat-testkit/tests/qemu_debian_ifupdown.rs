//! The Debian guest's ifupdown variant (guest/debian, `LIFEBOAT_DEBIAN_NETWORK=ifupdown`:
//! cloud-init's eni renderer, `/etc/network/interfaces.d/50-cloud-init`, raised by
//! `networking.service`) takes a new address from the seed Lifeboat's agent writes
//! (`lifeboat_agent::guest_seed::write`), as a recovered VM must, and its home address
//! again from the failback seed. One disk, one NIC MAC, three boots in the lab's sites:
//!
//! 1. installed (site A): the testkit's NoCloud seed, address A = 10.60.1.10/24;
//! 2. recovered (site B): Lifeboat's seed, a new instance-id, B = 10.60.2.10/24 with
//!    site B's gateway (and DNS servers);
//! 3. failed back (site A): Lifeboat's seed, another new instance-id, A with site A's
//!    gateway (and DNS servers).
//!
//! Each boot answers at its seed's address and has that address only: the guest's
//! global addresses, ifupdown's configuration (one file in `interfaces.d`, `auto`, no
//! `allow-hotplug`, no other site's address), the interfaces ifupdown raised, no DHCP
//! client and no lease; the seed's default route; the recovered copy is reached across
//! the WAN through its new gateway. Prints each boot's time (QEMU start to the first
//! answer on port 80) and when its gratuitous ARP came.
//!
//! Not checked: DNS. The seed's servers do not reach systemd-resolved in this guest
//! (ifupdown 0.8.41's `if-up.d/resolved` hook fails; guest/debian/README.md, Variants).
//!
//! Needs root (namespaces, taps) and, for a cold image build, the apt mirror.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::ensure;
use lifeboat_testkit::boot_timeout;
use lifeboat_testkit::debian_guest::{
    debian_disk_copy_with, wait_http_in, DebianNetwork, DebianVm, DebianVmConfig, NoCloudSeed,
    StaticIpv4,
};
use lifeboat_testkit::lab::{Lab, LabOptions, Site};
use lifeboat_testkit::SerialConsole;
use lifeboat_types::{Addressing, NicAddressing};
use tokio::time::Instant;

const CMD: Duration = Duration::from_secs(60);
const MAC: &str = "52:54:00:77:01:01";
/// The same tap name in each site's namespace.
const TAP: &str = "ifd0";
/// Set by the install seed; Lifeboat's seeds keep it (`preserve_hostname`).
const HOSTNAME: &str = "ifd-web";

/// One boot of the disk: where, as which instance, and what its seed gives the NIC.
struct Boot {
    run: &'static str,
    site: Site,
    instance_id: &'static str,
    /// Lifeboat's seed (`guest_seed::write`) with the site host as gateway and DNS
    /// server, or the install seed (`NoCloudSeed`, address and hostname only).
    lifeboat_seed: bool,
}

impl Boot {
    /// `10.60.N.10/24` on the site's LAN.
    fn address(&self) -> Ipv4Addr {
        self.site.addr(10)
    }

    fn http(&self) -> SocketAddr {
        SocketAddr::from((self.address(), 80))
    }

    fn gateway(&self) -> Option<Ipv4Addr> {
        self.lifeboat_seed.then(|| self.site.host_addr())
    }

    /// Writes this boot's seed to `path`. The install seed has no route: the testkit's
    /// `routes:` list becomes `post-up route add … || true` in the eni renderer, which
    /// needs net-tools (not in the image); Lifeboat's `gateway4` becomes ifupdown's own
    /// `gateway` line.
    fn write_seed(&self, path: &Path) -> anyhow::Result<()> {
        if !self.lifeboat_seed {
            let nic = StaticIpv4 {
                mac: MAC.into(),
                id: "lan0".into(),
                rename: false,
                address: self.address(),
                prefix: 24,
                gateway: None,
                dns: Vec::new(),
            };
            return NoCloudSeed::new(self.instance_id, HOSTNAME)?
                .with_static_ipv4(&nic)
                .write_disk(path);
        }
        let addressing: Addressing = format!(
            "{}/24,gw={gateway},dns={gateway}+{}",
            self.address(),
            self.site.addr(2),
            gateway = self.site.host_addr(),
        )
        .parse()
        .map_err(anyhow::Error::msg)?;
        let nics = [NicAddressing {
            mac: MAC.into(),
            addressing,
        }];
        lifeboat_agent::guest_seed::write(path, self.instance_id, &nics)?;
        Ok(())
    }
}

/// Boots `disk` in `boot.site` with `boot`'s seed until it answers at the seed's address
/// and has announced it (`DebianVm::start_answering`).
async fn start(lab: &Lab, dir: &Path, disk: &Path, boot: &Boot) -> anyhow::Result<DebianVm> {
    let seed = dir.join(format!("{}.seed.img", boot.run));
    boot.write_seed(&seed)?;
    let netns = lab.netns(boot.site).clone();
    let mut config = DebianVmConfig::new(boot.run, dir, disk, netns, TAP, MAC);
    config.seed = Some(seed);
    DebianVm::start_answering(&config, boot.address(), HOSTNAME).await
}

/// What every boot must show: ifupdown, not networkd, configured the NIC; it has the
/// seed's address and no other (the guest's global addresses, its ifupdown
/// configuration), the seed's default route (or none), this instance's id, and no DHCP
/// client or lease that could bring an older address back.
async fn check_network(
    lab: &Lab,
    vm: &DebianVm,
    console: &mut SerialConsole,
    boot: &Boot,
) -> anyhow::Result<()> {
    let run = boot.run;
    let seen = |what: &str, value: &str| {
        format!(
            "{run}: {what}: {value:?}\nconsole log:\n{}",
            vm.console_tail(60)
        )
    };
    let name = console
        .run(
            &format!("ip -br link | awk 'tolower($3) == \"{MAC}\" {{print $1}}'"),
            CMD,
        )
        .await?;
    ensure!(!name.is_empty(), "{run}: no NIC with MAC {MAC}");

    let ip = wait_http_in(lab.netns(boot.site), boot.http(), "/ip", CMD).await?;
    let ip = String::from_utf8_lossy(&ip);
    ensure!(
        ip == format!("{name} {}/24\n", boot.address()),
        "{}",
        seen("the guest's global addresses (GET /ip)", &ip)
    );

    let units = console
        .run(
            "systemctl is-active networking systemd-networkd || true",
            CMD,
        )
        .await?;
    ensure!(
        units == "active\ninactive",
        "{}",
        seen("networking, systemd-networkd", &units)
    );

    let state = console.run("ifquery --state | sort", CMD).await?;
    ensure!(
        state == format!("{name}={name}\nlo=lo"),
        "{}",
        seen("interfaces ifupdown raised", &state)
    );
    let files = console.run("ls -A /etc/network/interfaces.d", CMD).await?;
    ensure!(
        files == "50-cloud-init",
        "{}",
        seen("/etc/network/interfaces.d", &files)
    );
    // Both files, comments aside. The stanzas and addresses in them must be exactly this
    // boot's. DNS lines are left out: cloud-init 22.4 writes the servers to the `lo`
    // stanza too, and a stray `dns {…}` option (a Python dict) that ifupdown ignores.
    let eni = console
        .run(
            "grep -hv '^[[:space:]]*\\(#\\|$\\)' /etc/network/interfaces \
             /etc/network/interfaces.d/50-cloud-init",
            CMD,
        )
        .await?;
    eprintln!("{run}: ifupdown's configuration:\n{eni}");
    let mut stanzas: Vec<&str> = eni
        .lines()
        .map(str::trim)
        .filter(|line| {
            let word = line.split_whitespace().next().unwrap_or("");
            word.starts_with("allow-")
                || [
                    "source", "auto", "iface", "address", "netmask", "gateway", "pre-up", "up",
                    "post-up",
                ]
                .contains(&word)
        })
        .collect();
    let mut expected = vec![
        "source /etc/network/interfaces.d/*".to_string(),
        "auto lo".to_string(),
        "iface lo inet loopback".to_string(),
        format!("auto {name}"),
        format!("iface {name} inet static"),
        format!("address {}/24", boot.address()),
    ];
    if let Some(gateway) = boot.gateway() {
        expected.push(format!("gateway {gateway}"));
    }
    stanzas.sort();
    expected.sort();
    ensure!(
        stanzas == expected,
        "{}",
        seen("ifupdown's configuration", &eni)
    );
    for other in [Site::A, Site::B].into_iter().filter(|s| *s != boot.site) {
        let old = other.addr(10).to_string();
        ensure!(
            !eni.contains(&old),
            "{}",
            seen(&format!("{old} in ifupdown's configuration"), &eni)
        );
    }

    let route = console.run("ip -4 route show default", CMD).await?;
    match boot.gateway() {
        Some(gateway) => ensure!(
            route.contains(&format!("via {gateway} dev {name}")),
            "{}",
            seen("default route", &route)
        ),
        None => ensure!(route.is_empty(), "{}", seen("default route", &route)),
    }
    let id = console
        .run("cat /var/lib/cloud/data/instance-id", CMD)
        .await?;
    ensure!(
        id == boot.instance_id,
        "{}",
        seen("cloud-init's instance", &id)
    );
    let dhcp = console
        .run(
            "pgrep -a 'dhclient|dhcpcd' || true; ls -A /var/lib/dhcp 2>/dev/null || true",
            CMD,
        )
        .await?;
    ensure!(
        dhcp.is_empty(),
        "{}",
        seen("DHCP clients and leases", &dhcp)
    );
    Ok(())
}

/// Powers the guest off through its agent and waits for QEMU to exit.
async fn shut_down(mut vm: DebianVm, run: &str) -> anyhow::Result<()> {
    let pressed = Instant::now();
    vm.agent(CMD).await?.shutdown().await?;
    let status = vm.wait_exit(Duration::from_secs(120)).await?;
    ensure!(status.success(), "{run}: QEMU exit status {status}");
    eprintln!(
        "{run}: powered off {:.1} s after guest-shutdown",
        pressed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A lab with a tap `TAP` in sites A and B, and a copy of the ifupdown guest's disk.
fn lab_and_disk() -> anyhow::Result<(Lab, tempfile::TempDir, PathBuf)> {
    let lab = Lab::start(LabOptions::default())?;
    for site in [Site::A, Site::B] {
        lab.add_tap(site, TAP)?;
    }
    let dir = tempfile::tempdir()?;
    let disk = debian_disk_copy_with(DebianNetwork::Ifupdown, dir.path(), "disk.qcow2")?;
    Ok((lab, dir, disk))
}

/// Boots the disk as `boot`, checks its network, and powers it off.
async fn boot_and_check(lab: &Lab, dir: &Path, disk: &Path, boot: &Boot) -> anyhow::Result<()> {
    let vm = start(lab, dir, disk, boot).await?;
    let mut console = vm.console(boot_timeout()).await?;
    check_network(lab, &vm, &mut console, boot).await?;
    if boot.site == Site::B {
        // An operator at the client site reaches it across the WAN: the new gateway works.
        let hostname = wait_http_in(lab.netns(Site::Client), boot.http(), "/", CMD).await?;
        ensure!(
            hostname == format!("{HOSTNAME}\n").as_bytes(),
            "{}: / from the client site answered {:?}",
            boot.run,
            String::from_utf8_lossy(&hostname)
        );
    }
    drop(console);
    shut_down(vm, boot.run).await
}

#[tokio::test]
async fn ifupdown_guest_takes_lifeboats_seed_address_and_its_home_address_back(
) -> anyhow::Result<()> {
    let (lab, dir, disk) = lab_and_disk()?;
    let boots = [
        Boot {
            run: "installed",
            site: Site::A,
            instance_id: "ifd-installed",
            lifeboat_seed: false,
        },
        Boot {
            run: "recovered",
            site: Site::B,
            instance_id: "lifeboat-ifd-recovered",
            lifeboat_seed: true,
        },
        Boot {
            run: "failback",
            site: Site::A,
            instance_id: "lifeboat-ifd-failback",
            lifeboat_seed: true,
        },
    ];
    for boot in &boots {
        boot_and_check(&lab, dir.path(), &disk, boot).await?;
    }
    Ok(())
}
