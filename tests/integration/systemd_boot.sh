#!/bin/bash
# PID 1 of the fresh pid, mount, cgroup, net, uts and ipc namespaces that tests/integration/test_systemd_real.py
# makes: builds a private root and execs the machine's systemd in it, as a container manager would.
#   $1  a staged tree (`make install-files DESTDIR=...` plus the test's files), copied over the root
#   $2  an empty directory to mount this namespace's scratch tmpfs on
#   $3  the checkout, bound read-only at /opt/edgeagent-test/src
#   $4  its venv's site-packages, bound read-only at /opt/edgeagent-test/site
#       (the staged venv's .pth names these two: the host paths may be under /tmp or /root, which the
#       units' PrivateTmp= and ProtectHome= hide from the service)
# The root is an overlay: the host's / read-only below, a tmpfs above, so nothing systemd, sysusers, tmpfiles
# or the agent write reaches the host. Everything systemd could otherwise change on the host is cut off first
# (found the hard way: a first boot with /sys and /proc/sys writable and the host's network namespace let
# udev rename the host's eth0, systemd-sysctl set host sysctls and systemd remount the host's
# /sys/fs/cgroup tmpfs read-only):
#   - /proc/sys read-only: systemd-sysctl is skipped (ConditionPathIsReadWrite=/proc/sys/net/);
#   - sysfs read-only and of this network namespace: udevd and udev-trigger are skipped, device units are off;
#   - /sys/fs/cgroup is cgroup2 mounted in the new cgroup namespace: its root is the directory the test made;
#   - /dev is a tmpfs with only null, zero, full, random, urandom, tty (bind mounts) and a private devpts;
#   - the module, clock, raw-I/O, syslog and reboot capabilities are dropped from the bounding set.
set -euo pipefail
STAGE=$1 T=$2 SRC=$3 SITE=$4
mount --make-rprivate /
mount -t tmpfs -o mode=0700 edgeagent-test-root "$T"
mkdir -p "$T/upper" "$T/work" "$T/root"
cp -a "$STAGE/." "$T/upper/"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/upper,workdir=$T/work" "$T/root"
R=$T/root
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
for p in sys sysrq-trigger; do
    [ -e "$R/proc/$p" ] || continue
    mount --bind "$R/proc/$p" "$R/proc/$p"
    mount -o remount,bind,ro "$R/proc/$p"
done
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=0755,nosuid edgeagent-test-dev "$R/dev"
for d in null zero full random urandom tty; do
    touch "$R/dev/$d"
    mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
for pair in "$SRC:/opt/edgeagent-test/src" "$SITE:/opt/edgeagent-test/site"; do
    mkdir -p "$R${pair#*:}"
    mount --bind "${pair%%:*}" "$R${pair#*:}"
    mount -o remount,bind,ro "$R${pair#*:}"
done
# The host's enabled units (its containerd, etcd, timers...) must not start here: only the test's target.
rm -rf "$R"/etc/systemd/system/*.wants
cd "$R"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
exec capsh --drop=cap_sys_module,cap_sys_time,cap_sys_rawio,cap_syslog,cap_wake_alarm,cap_mac_admin,cap_mac_override,cap_sys_boot,cap_sys_pacct,cap_sys_tty_config,cap_block_suspend,cap_audit_control -- \
    -c 'exec env -i container=edgeagent-test /lib/systemd/systemd --log-level=info'
