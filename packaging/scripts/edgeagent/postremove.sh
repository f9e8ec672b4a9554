#!/bin/sh
# edgeagent post-remove: deb (remove, purge, upgrade, ...), rpm (%postun:
# 0 erase, 1 upgrade), apk (post-deinstall). Remove keeps the identity, the
# spool, the config and the user; deb purge deletes them all (rpm and apk
# have no purge: delete /var/lib/edgeagent and the user by hand).
set -e
name=edgeagent
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || :
fi
if [ "$1" = purge ]; then
	rm -rf /var/lib/$name /run/$name /etc/$name
	if id $name >/dev/null 2>&1; then
		userdel $name 2>/dev/null || deluser $name
	fi
	if grep -q "^$name:" /etc/group; then
		groupdel $name 2>/dev/null || delgroup $name
	fi
fi
exit 0
