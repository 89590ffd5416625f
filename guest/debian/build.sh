#!/bin/bash
# Builds Lifeboat's Debian test guest: a real Debian 12 (bookworm) VM disk made from
# Debian packages only (mmdebstrap), for tests that need what a customer's VM has:
# systemd, cloud-init (NoCloud), qemu-guest-agent, systemd-networkd, a service on port 80.
# See README.md next to this script for what the guest offers and how tests drive it.
#
# LIFEBOAT_DEBIAN_NETWORK picks the network stack cloud-init renders to:
#   networkd (the default)  systemd-networkd
#   ifupdown                ifupdown (cloud-init's eni renderer), as debian-installer
#                           sets up Debian 12; its own files in variants/ifupdown/
# Each is an image of its own, with its own cache key.
#
# A self-booting 2 GiB (virtual) qcow2 disk, without loop mounts and without `mount`:
#   MBR (syslinux mbr.bin) | p1 FAT16 @1 MiB, 63 MiB: SYSLINUX, vmlinuz, initrd.img
#                          | p2 ext4 @64 MiB, rest: the root filesystem (mke2fs -d)
# The kernel and initramfs on p1 are those the root filesystem's packages installed.
#
# The result is cached under a hash of every input (the files next to this script and
# the apt sources used); the LAST stdout line is its path. Progress goes to stderr.
# Run as root (mmdebstrap's root mode; missing tools are apt-get installed).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "guest/debian/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

suite=bookworm
# The guest's packages on top of mmdebstrap's "apt" variant (Essential + apt). No
# Recommends: everything the guest needs is named here. Merged /usr is made by
# mmdebstrap's merged-usr hook (debootstrap's way), not by the usrmerge package, which
# would pull in 50 MB of perl.
packages=(
    systemd systemd-sysv udev dbus systemd-resolved   # init, networkd, DNS from cloud-init
    linux-image-cloud-amd64 initramfs-tools zstd      # kernel; initramfs finds the root
    cloud-init                                        # NoCloud seed: hostname, network
    qemu-guest-agent                                  # guest-ping, fs-freeze, interfaces
    iproute2 netbase procps                           # `ip` for tests and /ip; ps, free
    iputils-arping                                    # gratuitous ARP after boot
)
network=${LIFEBOAT_DEBIAN_NETWORK:-networkd}
case "$network" in
networkd) ;;
# networking.service runs `ifup -a`; the DHCP client it would use for a fallback
# config (isc-dhcp-client) is already there, a dependency of cloud-init.
ifupdown) packages+=(ifupdown) ;;
*) die "LIFEBOAT_DEBIAN_NETWORK=$network: use networkd (the default) or ifupdown" ;;
esac
export LIFEBOAT_DEBIAN_NETWORK=$network   # read by hooks.sh

apt_install() {
    log "installing missing packages: $*"
    [ "$(id -u)" = 0 ] || die "need root to apt-get install $* (or install them yourself)"
    local opts=(-y --no-install-recommends -o DPkg::Lock::Timeout=600)
    if ! DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "$@" >&2; then
        apt-get -o DPkg::Lock::Timeout=600 update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "$@" >&2 \
            || die "apt-get install $* failed"
    fi
}

# --- inputs (cheap checks only: the cached path must come back fast) -------------
# The machine's own Debian sources (deb822 or one-line files naming a .../debian or
# .../debian-security archive), so the guest comes from the mirror this machine uses;
# LIFEBOAT_DEBIAN_MIRROR=URI overrides them.
sources=()
if [ -n "${LIFEBOAT_DEBIAN_MIRROR:-}" ]; then
    mirrors=("$LIFEBOAT_DEBIAN_MIRROR")
else
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
             /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        if grep -qE '^[[:space:]]*(URIs:|deb[[:space:]]).*://[^[:space:]]*/debian(-security)?/?([[:space:]]|$)' "$f"; then
            sources+=("$f")
        fi
    done
    [ ${#sources[@]} -gt 0 ] || log "no Debian apt sources on this machine; using deb.debian.org"
    mirrors=("${sources[@]:-http://deb.debian.org/debian}")
fi

# Every file here but the README and the files of the other variants.
inputs=()
while IFS= read -r f; do inputs+=("$f"); done < <(
    cd "$here" && find . -type f ! -name README.md \
        \( ! -path './variants/*' -o -path "./variants/$network/*" \) | LC_ALL=C sort)
# Hash contents (and the relative paths of this directory's files, since a file's place
# in the image is its path), so every checkout of the same sources shares a cache. The
# default variant adds nothing more, so its key is computed as before variants existed.
hash=$( {
    (cd "$here" && sha256sum "${inputs[@]}")
    for f in "${sources[@]}"; do sha256sum < "$f"; done
    echo "mirror=${LIFEBOAT_DEBIAN_MIRROR:-}"
    [ "$network" = networkd ] || echo "network=$network"
} | sha256sum | cut -c1-16)

cache_root=${LIFEBOAT_DEBIAN_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lifeboat/debian-guest}
out_dir=$cache_root/$hash
out=$out_dir/debian.qcow2
if [ -f "$out" ]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/$hash.lock"
flock 9
if [ -f "$out" ]; then   # another process built it while we waited
    echo "$out"
    exit 0
fi

# --- tools ------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root: mmdebstrap builds the root filesystem in root mode"
missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v syslinux >/dev/null || missing+=(syslinux)
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || missing+=(syslinux-common)
command -v mcopy >/dev/null || missing+=(mtools)
command -v mkfs.vfat >/dev/null || missing+=(dosfstools)
command -v sfdisk >/dev/null || missing+=(fdisk)
command -v mke2fs >/dev/null || missing+=(e2fsprogs)
# qemu-utils may be a held backport: only ask apt for it when qemu-img is absent.
command -v qemu-img >/dev/null || missing+=(qemu-utils)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
export MTOOLS_SKIP_CHECK=1

started=$(date +%s)
log "building Debian guest $hash ($network) into $out (sources: ${mirrors[*]})"
tmp=$(mktemp -d "$cache_root/.build-$hash.XXXXXX")
cleanup() {
    # mmdebstrap's root mode mounts /dev, /proc and /sys inside the chroot while it
    # runs and unmounts them when it ends; never delete through one left behind.
    if grep -qF " $tmp/" /proc/self/mounts; then
        log "mounts left under $tmp; not deleting it:"
        grep -F " $tmp/" /proc/self/mounts >&2
        return
    fi
    rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT

# --- root filesystem ----------------------------------------------------------------
# Downloaded packages are kept in $cache_root/debs between builds (mmdebstrap's
# sync-in/sync-out recipe), so a rebuild after an edit here downloads nothing new; it
# keeps only the packages of the latest build.
debs=$cache_root/debs
mkdir -p "$debs"
root_uuid=$(cat /proc/sys/kernel/random/uuid)
rootfs=$tmp/rootfs
mkdir "$rootfs"
export LIFEBOAT_ROOT_UUID=$root_uuid   # read by hooks.sh
include=$(IFS=,; echo "${packages[*]}")
# Excluded from every package: documentation (copyrights stay), translations, and the
# locale sources (17 MB that cloud-init's dependency `locales` brings; no locale is
# generated in the guest, and SUPPORTED stays for the package's scripts).
mmdebstrap --mode=root --variant=apt --format=directory \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --dpkgopt='path-exclude=/usr/share/i18n/charmaps/*' \
    --dpkgopt='path-exclude=/usr/share/i18n/locales/*' \
    --include="$include" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --skip=download/empty --skip=essential/unlink \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives' \
    --setup-hook="sync-in $debs /var/cache/apt/archives" \
    --essential-hook="$here/hooks.sh" \
    --customize-hook="rm -f '$debs'/*.deb" \
    --customize-hook="sync-out /var/cache/apt/archives $debs" \
    --customize-hook="$here/hooks.sh" \
    "$suite" "$rootfs" "${mirrors[@]}" >&2 \
    || die "mmdebstrap failed"

kernel=$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -1)
kver=${kernel##*/vmlinuz-}
initrd=$rootfs/boot/initrd.img-$kver
[ -f "$kernel" ] && [ -f "$initrd" ] || die "no kernel and initramfs in the root filesystem"

# --- disk ---------------------------------------------------------------------------
mib=$((1024 * 1024))
disk_size=$((2048 * mib))
fat_start=$((1 * mib))
fat_size=$((63 * mib))
root_start=$((fat_start + fat_size))
root_size=$((disk_size - root_start))

raw=$tmp/disk.raw
truncate -s "$disk_size" "$raw"
sfdisk --quiet "$raw" >&2 <<PARTS
label: dos
start=$((fat_start / 512)), size=$((fat_size / 512)), type=6, bootable
start=$((root_start / 512)), size=$((root_size / 512)), type=83
PARTS
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none

fat=$tmp/fat.img
mkfs.vfat -C -n LBBOOT "$fat" $((fat_size / 1024)) >/dev/null
syslinux --install "$fat"
mcopy -i "$fat" "$kernel" ::/vmlinuz
mcopy -i "$fat" "$initrd" ::/initrd.img
sed "s/@ROOT_UUID@/$root_uuid/" "$here/syslinux.cfg" > "$tmp/syslinux.cfg"
mcopy -i "$fat" "$tmp/syslinux.cfg" ::/syslinux.cfg
dd if="$fat" of="$raw" bs=1M seek=$((fat_start / mib)) conv=notrunc status=none

mke2fs -q -F -t ext4 -L debian-root -U "$root_uuid" -d "$rootfs" \
    -E offset="$root_start" "$raw" $((root_size / 1024))k

# Compressed: half the size in the cache and to copy; a test's copy writes its own
# clusters uncompressed, and reading the compressed ones costs nothing measurable.
qemu-img convert -c -f raw -O qcow2 "$raw" "$tmp/debian.qcow2"

# --- publish ------------------------------------------------------------------------
mkdir -p "$out_dir"
chroot "$rootfs" dpkg-query -W -f '${Package} ${Version}\n' > "$out_dir/packages.txt"
echo "$kver" > "$out_dir/kernel-version"
echo "$network" > "$out_dir/network"
mv "$tmp/debian.qcow2" "$out"   # atomic: readers see no file or a whole one
log "built $out ($network) in $(( $(date +%s) - started )) s: $(du -h "$out" | cut -f1) on disk," \
    "root filesystem $(du -sh --one-file-system "$rootfs" | cut -f1), kernel $kver"
echo "$out"
