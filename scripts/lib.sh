# Shared by scripts/demo and scripts/test: install what is missing, skip what is there.
# Sourced, not run.

log() { echo "==> $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# apt_need CMD_OR_FILE PACKAGE ... : installs PACKAGE when CMD is not on PATH (or FILE,
# when it starts with '/', does not exist).
apt_need() {
    local missing=() probe pkg
    while [ $# -gt 0 ]; do
        probe=$1 pkg=$2
        shift 2
        if [[ $probe == /* ]]; then
            compgen -G "$probe" >/dev/null || missing+=("$pkg")
        else
            command -v "$probe" >/dev/null || missing+=("$pkg")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}: run as root, or install them yourself"
    log "installing ${missing[*]}"
    local opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=600)
    if ! DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "${missing[@]}" >&2; then
        apt-get -q -o DPkg::Lock::Timeout=600 update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    fi
}

# What running Lifeboat and its test guest need.
need_runtime() {
    # qemu-utils may be a newer backport that apt holds: only ask for it when absent.
    apt_need qemu-system-x86_64 qemu-system-x86 \
             qemu-img qemu-utils \
             '/boot/vmlinuz-*-cloud-amd64' linux-image-cloud-amd64 \
             /usr/lib/syslinux/mbr/mbr.bin syslinux-common \
             syslinux syslinux \
             mcopy mtools \
             mkfs.vfat dosfstools \
             mke2fs e2fsprogs \
             sfdisk fdisk \
             gcc build-essential \
             pkg-config pkg-config \
             /usr/include/libvirt/libvirt.h libvirt-dev
    # The guest's initramfs needs the static busybox (it has no libc).
    if ! dpkg -s busybox-static >/dev/null 2>&1; then
        apt_need /nonexistent-busybox-static busybox-static
    fi
    command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) and re-run"
}

# What the test suite needs on top.
need_test_tools() {
    # chromium + chromedriver: the dashboard's end-to-end tests drive a real headless
    # browser (lifeboat-testkit's browser module).
    # libvirtd + virsh: the libvirt driver's tests define domains as an administrator would;
    # losetup: a block-device disk for one of them.
    # named + dig: lifeboat-dns's tests update records on a real BIND (testkit's bind module).
    # systemd-analyze: deploy/systemd's units are checked with `systemd-analyze verify`;
    # promtool: deploy/prometheus's alert rules and the server's metrics are checked.
    # dpkg-deb, man: package_install builds the .deb and finds its man pages; zstd:
    # upgrade_previous_release unpacks the previous release's files.
    # mmdebstrap: the Debian test guest (guest/debian/build.sh), built on demand by the
    # tests that boot it (lifeboat_testkit::debian_guest::debian_image), not here.
    apt_need nbdinfo libnbd-bin curl curl psql postgresql-client \
             mmdebstrap mmdebstrap \
             /usr/sbin/named bind9 \
             dig bind9-dnsutils \
             libvirtd libvirt-daemon-system \
             ip iproute2 \
             python3 python3 \
             losetup mount \
             virsh libvirt-clients \
             /usr/bin/chromium chromium \
             /usr/bin/chromedriver chromium-driver \
             systemd-analyze systemd \
             promtool prometheus \
             dpkg-deb dpkg \
             man man-db \
             zstd zstd
    if ! cargo fuzz --version >/dev/null 2>&1; then
        log "installing cargo-fuzz"
        cargo install --locked cargo-fuzz >&2 || die "cargo install cargo-fuzz failed"
    fi
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest >&2 || die "cargo install cargo-nextest failed"
    fi
}
