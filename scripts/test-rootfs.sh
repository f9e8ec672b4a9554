#!/usr/bin/env bash
# Builds, once, the Debian root tree that packaging's systemd test boots
# with systemd-nspawn (a real systemd as PID 1 of a container): bookworm
# minbase with systemd and dbus, about 240 MB, 2 minutes. It lives outside
# the repository and is never written to after it is built: the test boots
# it with --volatile=overlay (writes go to a tmpfs that ends with the
# container). Does nothing when it exists.
#   EDGEAGENT_TEST_ROOTFS=/var/cache/edgeagent-test/rootfs  DEBIAN_MIRROR=http://deb.debian.org/debian
set -euo pipefail
root=${EDGEAGENT_TEST_ROOTFS:-/var/cache/edgeagent-test/rootfs}
[ -x "$root/lib/systemd/systemd" ] && exit 0
command -v debootstrap >/dev/null || { echo "test-rootfs: debootstrap missing: run scripts/test-deps.sh" >&2; exit 1; }
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9
[ -x "$root/lib/systemd/systemd" ] && exit 0
rm -rf "$root.tmp"
echo "test-rootfs: building $root with debootstrap (once)" >&2
if ! debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$root.tmp" \
	"${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$root.log" 2>&1; then
	tail -20 "$root.log" >&2
	exit 1
fi
mv "$root.tmp" "$root"
