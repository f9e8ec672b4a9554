#!/bin/sh
# edgeca post-install, for every package format: deb (configure [old
# version]), rpm (%post: 1 install, 2 upgrade), apk (post-install/upgrade).
set -e
name=edgeca
state=/var/lib/$name

# The account, from the packaged sysusers.d file.
if command -v systemd-sysusers >/dev/null 2>&1; then
	systemd-sysusers /usr/lib/sysusers.d/$name.conf
elif ! id $name >/dev/null 2>&1; then
	if command -v useradd >/dev/null 2>&1; then
		useradd -r -U -M -d $state -s /sbin/nologin -c "$name certificate authority" $name
	else # busybox
		addgroup -S $name
		adduser -S -D -H -h $state -s /sbin/nologin -G $name -g "$name certificate authority" $name
	fi
fi

# The CA directory: CA keys, database, audit log. Only edgeca may read it.
install -d -m 0700 -o $name -g $name $state

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || :
	systemctl try-restart $name.service || :
fi
if [ ! -e $state/root.pem ]; then
	echo "$name: make the CA with: sudo -u $name $name init --dir $state --url https://HOST:8443; set serve's flags in /etc/$name/$name.env; then: systemctl enable --now $name"
fi
exit 0
