#!/bin/sh
# edgeagent post-install, for every package format: deb (configure [old
# version]), rpm (%post: 1 install, 2 upgrade), apk (post-install/upgrade).
set -e
name=edgeagent
state=/var/lib/$name

# The account, from the same sysusers.d file `edgeagent install` uses:
# user edgeagent in group tss (owner of /dev/tpmrm0), tss made if absent.
if command -v systemd-sysusers >/dev/null 2>&1; then
	systemd-sysusers /usr/lib/sysusers.d/$name.conf
else
	grep -q '^tss:' /etc/group || groupadd -r tss 2>/dev/null || addgroup -S tss
	if ! id $name >/dev/null 2>&1; then
		if command -v useradd >/dev/null 2>&1; then
			useradd -r -U -M -d $state -s /sbin/nologin -c "$name device agent" $name
		else # busybox
			addgroup -S $name
			adduser -S -D -H -h $state -s /sbin/nologin -G $name -g "$name device agent" $name
		fi
	fi
	id -nG $name | grep -qw tss || usermod -a -G tss $name 2>/dev/null || addgroup $name tss
fi

# The state dir: key, certificate, spool. Only the agent may read it.
install -d -m 0700 -o $name -g $name $state

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || :
	# An upgrade restarts a running agent with the new binary.
	systemctl try-restart $name.service || :
fi
if command -v systemctl >/dev/null 2>&1 && ! systemctl is-enabled --quiet $name.service 2>/dev/null; then
	echo "$name: set enroll.token_file (or the EST server) in /etc/$name/$name.yaml, then: systemctl enable --now $name"
fi
exit 0
