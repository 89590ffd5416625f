#!/bin/bash
# mmdebstrap hooks of guest/debian/build.sh; $1 is the root filesystem being built,
# $MMDEBSTRAP_HOOK says which hook runs.
#   essential: before the kernel is installed, so its initramfs is built with our config.
#   customize: after all packages: our files, fstab, units enabled and masked, cleanup.
set -euo pipefail

root=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "guest/debian/hooks.sh ($MMDEBSTRAP_HOOK): $*" >&2; }

# Copies a tree of this directory into the image, owned by root, modes as in git.
copy_tree() {
    cp -r --no-preserve=ownership "$here/$1/." "$root/"
}

case "$MMDEBSTRAP_HOOK" in
essential)
    copy_tree initramfs
    ;;
customize)
    : "${LIFEBOAT_ROOT_UUID:?set by build.sh}"
    network=${LIFEBOAT_DEBIAN_NETWORK:?set by build.sh}
    rm -f "$root"/var/cache/apt/archives/*.deb
    copy_tree rootfs
    # A variant's files go on top of the common ones.
    if [ -d "$here/variants/$network/rootfs" ]; then
        copy_tree "variants/$network/rootfs"
    fi

    cat > "$root/etc/fstab" <<EOF
# The root filesystem; the FAT boot partition (p1) is not mounted.
UUID=$LIFEBOAT_ROOT_UUID / ext4 errors=remount-ro 0 1
EOF
    echo lifeboat-debian > "$root/etc/hostname"
    cat > "$root/etc/hosts" <<EOF
127.0.0.1 localhost
127.0.1.1 lifeboat-debian
::1 localhost ip6-localhost ip6-loopback
EOF
    # Every copy of the image is a new machine: systemd makes a machine-id at first
    # boot when the file is empty (dbus reads the same one).
    : > "$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

    chroot "$root" systemctl enable --quiet \
        systemd-resolved.service \
        lifeboat-whoami.service lifeboat-serial-shell.service \
        lifeboat-announce.service
    case "$network" in
    networkd)
        chroot "$root" systemctl enable --quiet \
            systemd-networkd.service lifeboat-cloud-network-prune.service
        ;;
    ifupdown)
        # networking.service (`ifup -a`, after cloud-init's local stage has rendered
        # /etc/network/interfaces.d/50-cloud-init) raises the NIC; networkd stays off,
        # or two managers would configure it. The prune unit is networkd's alone.
        chroot "$root" systemctl enable --quiet networking.service
        for unit in systemd-networkd.service systemd-networkd-wait-online.service; do
            if chroot "$root" systemctl --quiet is-enabled "$unit"; then
                log "error: $unit is enabled in the ifupdown variant"
                exit 1
            fi
        done
        if ! grep -qx 'source /etc/network/interfaces.d/\*' "$root/etc/network/interfaces"; then
            log "error: /etc/network/interfaces does not source /etc/network/interfaces.d/*"
            exit 1
        fi
        ;;
    esac
    # Fast boot: no gettys (ttyS0 is the boot console, the test shell owns ttyS1), no
    # periodic jobs.
    chroot "$root" systemctl mask --quiet \
        serial-getty@ttyS0.service getty@tty1.service \
        apt-daily.timer apt-daily-upgrade.timer \
        e2scrub_all.timer e2scrub_reap.service fstrim.timer
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
    log "done"
    ;;
esac
