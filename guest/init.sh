#!/bin/sh
# PID 1 of the Lifeboat test guest (busybox sh). Contract with the tests:
# - /dev/vda2 (ext4) is mounted at /data; /data/boot-count counts boots;
# - busybox httpd serves /data on port 80 (10.0.2.15, QEMU user-net);
# - the ACPI power button (QMP system_powerdown) syncs, unmounts /data, powers off;
# - a root shell without prompt or echo runs on /dev/ttyS0, respawned when it exits;
# - qemu-guest-agent runs when the VM has the org.qemu.guest_agent.0 port (fs-freeze);
# - "LIFEBOAT-GUEST-READY boot=<n>" is printed on the console once all of this is up.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

say() { echo "lifeboat-guest: $*" > /dev/console; }

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

# Order matters: each module needs the ones before it. Missing files are built in.
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
         virtio_blk failover net_failover virtio_net button evdev virtio_console; do
    [ -f "/lib/modules/$m.ko" ] && insmod "/lib/modules/$m.ko"
done

i=0
while [ ! -b /dev/vda2 ]; do
    i=$((i + 1))
    if [ "$i" -gt 300 ]; then
        say "no /dev/vda2 after 30 s; giving up"
        exec sh
    fi
    sleep 0.1
done

mkdir -p /data
if ! mount -t ext4 /dev/vda2 /data; then
    say "cannot mount /dev/vda2 on /data"
fi
n=$(cat /data/boot-count 2>/dev/null)
n=$(( ${n:-0} + 1 ))
echo "$n" > /data/boot-count
sync

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

httpd -p 80 -h /data

# qemu-guest-agent on the virtio-serial port QEMU names org.qemu.guest_agent.0, if the VM
# has one: Lifeboat freezes /data through it for app-consistent recovery points.
mkdir -p /var/run
for p in /sys/class/virtio-ports/*; do
    if [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
        /usr/sbin/qemu-ga -d -m virtio-serial -p "/dev/${p##*/}" -t /var/run \
            || say "qemu-ga did not start"
    fi
done

# busybox acpid maps the power-button input event (button.ko + evdev.ko) to the
# action PWRF/00000080 in its config directory.
mkdir -p /etc/acpi/PWRF /var/log /var/run
cat > /etc/acpi/PWRF/00000080 <<'EOS'
#!/bin/sh
echo "lifeboat-guest: power button: stopping processes, unmounting /data" > /dev/console
sync
kill -9 -1
sleep 0.2
if umount /data || mount -o remount,ro /data; then
    echo "lifeboat-guest: /data is clean; powering off" > /dev/console
fi
sync
sleep 0.1
poweroff -f
EOS
chmod 755 /etc/acpi/PWRF/00000080
acpid

echo "LIFEBOAT-GUEST-READY boot=$n" > /dev/console

# The shell's output goes through a pipe so that it is not interactive: no prompt,
# no banner, no line editor echoing keys. With "stty -echo" as well, the console
# shows only what the commands print. Its stdin stays the tty (controlling terminal).
while :; do
    setsid sh -c 'exec </dev/ttyS0; stty -echo; cd /; sh 2>&1 | cat >/dev/ttyS0'
    sleep 0.2
done
