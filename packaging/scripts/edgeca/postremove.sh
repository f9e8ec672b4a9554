#!/bin/sh
# edgeca post-remove: deb (remove, purge, upgrade, ...), rpm (%postun:
# 0 erase, 1 upgrade), apk (post-deinstall). Remove keeps the CA keys, the
# database, the config and the user. deb purge deletes the config, and the
# user and /var/lib/edgeca only while no CA lives there: losing the CA keys
# means re-enrolling every device, so a purge never deletes them (rpm and apk
# have no purge: delete /var/lib/edgeca and the user by hand).
set -e
name=edgeca
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || :
fi
if [ "$1" = purge ]; then
	rm -rf /run/$name /etc/$name
	if [ -n "$(ls -A /var/lib/$name 2>/dev/null)" ]; then
		echo "edgeca: kept /var/lib/$name and user $name: it holds a CA (keys, device registry)." >&2
		echo "edgeca: back it up, then delete it by hand: rm -rf /var/lib/$name; userdel $name" >&2
		exit 0
	fi
	rm -rf /var/lib/$name
	if id $name >/dev/null 2>&1; then
		userdel $name 2>/dev/null || deluser $name
	fi
	if grep -q "^$name:" /etc/group; then
		groupdel $name 2>/dev/null || delgroup $name
	fi
fi
exit 0
