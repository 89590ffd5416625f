#!/bin/bash
# Builds the Lifeboat test guest: a 64 MiB self-booting qcow2 disk made from Debian
# packages only (cloud kernel, busybox-static, syslinux), without loop mounts or root
# filesystem tricks. Layout:
#   MBR (syslinux mbr.bin) | p1 FAT16 @1 MiB, 24 MiB: SYSLINUX, vmlinuz, initrd.img
#                          | p2 ext4 @25 MiB, rest: /data of the guest (index.html)
# The result is cached under a hash of every input; the LAST stdout line is its path.
# Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "guest/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Modules for the initramfs, in load order (init.sh loads the same list).
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         virtio_blk failover net_failover virtio_net button evdev virtio_console)

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

find_kernel() {
    local k
    for k in $(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -rV); do
        if [ -d "/lib/modules/${k#/boot/vmlinuz-}/kernel" ]; then
            echo "$k"
            return
        fi
    done
}

# --- inputs (cheap checks only: the cached path must come back fast) -------------
kernel=$(find_kernel)
if [ -z "$kernel" ]; then
    apt_install linux-image-cloud-amd64
    kernel=$(find_kernel)
    [ -n "$kernel" ] || die "no /boot/vmlinuz-*-cloud-amd64 with modules after install"
fi
kver=${kernel#/boot/vmlinuz-}
[ -r "$kernel" ] || die "$kernel is not readable"

busybox=/bin/busybox
# busybox-static, not the dynamic busybox: the initramfs has no libc. A dynamic
# executable has an .interp section (its name is in the section string table).
if [ ! -x "$busybox" ] || grep -qF .interp "$busybox"; then
    apt_install busybox-static
fi

# One walk of the module tree, then put the hits in load order; a module without a
# file is built into this kernel.
find_args=()
for m in "${modules[@]}"; do find_args+=(-o -name "$m.ko"); done
found=$(find "/lib/modules/$kver/kernel" \( "${find_args[@]:1}" \) -print)
module_files=()
for m in "${modules[@]}"; do
    f=$(grep -m1 "/$m\.ko\$" <<<"$found" || true)
    [ -n "$f" ] && module_files+=("$f")
done

cache_root=${LIFEBOAT_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lifeboat/guest}

# qemu-guest-agent, so Lifeboat can freeze the guest's filesystems for app-consistent
# points: the binary of Debian's package, unpacked (not installed on this host), with the
# shared libraries it links (QEMU's own dependencies, so already here).
qga_dir=$cache_root/qemu-guest-agent
qga=$qga_dir/root/usr/sbin/qemu-ga
if [ ! -x "$qga" ]; then
    log "fetching Debian's qemu-guest-agent package"
    mkdir -p "$qga_dir/deb"
    if ! (cd "$qga_dir/deb" && apt-get download qemu-guest-agent >&2 2>/dev/null); then
        apt-get -o DPkg::Lock::Timeout=600 update >&2
        (cd "$qga_dir/deb" && apt-get download qemu-guest-agent >&2) \
            || die "apt-get download qemu-guest-agent failed"
    fi
    dpkg-deb -x "$qga_dir"/deb/qemu-guest-agent_*.deb "$qga_dir/root"
    [ -x "$qga" ] || die "no usr/sbin/qemu-ga in the qemu-guest-agent package"
fi
qga_libs=$(ldd "$qga" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/lib64\// {print $1}')
[ -n "$qga_libs" ] || die "cannot list the libraries qemu-ga needs (ldd $qga)"

inputs=("$here/build.sh" "$here/init.sh" "$here/syslinux.cfg" "$kernel" "$busybox"
        "${module_files[@]}" "$qga")
# Hash contents only (not paths), so every checkout of the same sources shares a cache.
hash=$(sha256sum "${inputs[@]}" | awk '{print $1}' | sha256sum | cut -c1-16)

out_dir=$cache_root/$hash
out=$out_dir/guest.qcow2
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
missing=()
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

log "building guest $hash (kernel $kver) into $out"
tmp=$(mktemp -d "$cache_root/.build-$hash.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# --- initramfs ----------------------------------------------------------------------
root=$tmp/initramfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,data,etc,lib/modules,tmp,var/log,var/run}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
for f in "${module_files[@]}"; do
    cp "$f" "$root/lib/modules/"
done
install -m 755 "$qga" "$root/usr/sbin/qemu-ga"
for lib in $qga_libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
install -m 755 "$here/init.sh" "$root/init"
(cd "$root" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) \
    | gzip -6 > "$tmp/initrd.img"

# --- disk ---------------------------------------------------------------------------
mib=$((1024 * 1024))
disk_size=$((64 * mib))
fat_start=$((1 * mib))
fat_size=$((24 * mib))
data_start=$((fat_start + fat_size))
data_size=$((disk_size - data_start))

raw=$tmp/disk.raw
truncate -s "$disk_size" "$raw"
sfdisk --quiet "$raw" >&2 <<PARTS
label: dos
start=$((fat_start / 512)), size=$((fat_size / 512)), type=6, bootable
start=$((data_start / 512)), size=$((data_size / 512)), type=83
PARTS
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none

fat=$tmp/fat.img
mkfs.vfat -C -n LIFEBOAT "$fat" $((fat_size / 1024)) >/dev/null
syslinux --install "$fat"
mcopy -i "$fat" "$kernel" ::/vmlinuz
mcopy -i "$fat" "$tmp/initrd.img" ::/initrd.img
mcopy -i "$fat" "$here/syslinux.cfg" ::/syslinux.cfg
dd if="$fat" of="$raw" bs=1M seek=$((fat_start / mib)) conv=notrunc status=none

data=$tmp/data
mkdir -p "$data"
echo "lifeboat test guest" > "$data/index.html"
mke2fs -q -F -t ext4 -L data -d "$data" -E offset="$data_start" "$raw" $((data_size / 1024))k

qemu-img convert -f raw -O qcow2 "$raw" "$tmp/guest.qcow2"

# --- publish ------------------------------------------------------------------------
mkdir -p "$out_dir"
sha256sum "${inputs[@]}" > "$out_dir/inputs.sha256"
mv "$tmp/guest.qcow2" "$out"   # atomic: readers see no file or a whole one
log "built $out"
echo "$out"
