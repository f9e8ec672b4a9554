#!/bin/sh
# edgeca pre-remove: deb (remove, upgrade, deconfigure, failed-upgrade),
# rpm (%preun: 0 erase, 1 upgrade), apk (pre-deinstall).
set -e
name=edgeca
case "$1" in
upgrade | failed-upgrade | 1) exit 0 ;; # the new version's postinstall restarts it
esac
if [ -d /run/systemd/system ]; then
	systemctl stop $name.service || :
fi
# disable edits the .wants links and works without a running systemd.
if command -v systemctl >/dev/null 2>&1; then
	systemctl disable --quiet $name.service 2>/dev/null || :
fi
exit 0
