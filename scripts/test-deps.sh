#!/usr/bin/env bash
# Installs the real peers the tests talk to, with apt-get, when missing.
# Safe to run repeatedly: it does nothing when everything is present.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have openssl || need+=(openssl)
have curl || need+=(curl)
have mosquitto || need+=(mosquitto)
have mosquitto_pub || need+=(mosquitto-clients)
have swtpm || need+=(swtpm)
have swtpm_setup || need+=(swtpm-tools)
have tpm2_getcap || need+=(tpm2-tools)
have qemu-aarch64-static || need+=(qemu-user-static)
have systemd-analyze || need+=(systemd)   # unit checks; systemctl and systemd-sysusers for service install
have lintian || need+=(lintian)           # checks the .deb
have rpm || need+=(rpm)                   # reads the .rpm back
have systemd-nspawn || need+=(systemd-container)   # boots the packaged unit under a real systemd (packaging)
have debootstrap || need+=(debootstrap)   # the root tree that systemd boots (scripts/test-rootfs.sh)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)   # edgeca's PostgreSQL store (testkit/postgres)
have chromium || need+=(chromium)       # the fleet page, rendered in a real headless browser (ca)
have promtool || need+=(prometheus)      # promtool check rules on packaging/monitoring
have gcc || need+=(gcc)                   # cgo for the race detector (tests only)
[ -e /usr/include/stdlib.h ] || need+=(libc6-dev)

rootfs() { [ "$(id -u)" -ne 0 ] || bash "$(dirname "$0")/test-rootfs.sh"; }
[ ${#need[@]} -eq 0 ] && { rootfs; exit 0; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if have sudo; then SUDO=sudo; else
		echo "test-deps: missing ${need[*]} and not root; install them with apt-get" >&2
		exit 1
	fi
fi
echo "test-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Update the package lists only if an install fails on stale lists.
if ! $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/tmp/edgeagent-apt.log 2>&1; then
	$SUDO apt-get update >>/tmp/edgeagent-apt.log 2>&1
	$SUDO apt-get install -y --no-install-recommends "${need[@]}" >>/tmp/edgeagent-apt.log 2>&1 || {
		cat /tmp/edgeagent-apt.log >&2
		exit 1
	}
fi
rootfs
