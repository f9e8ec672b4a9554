#!/usr/bin/env bash
# The end-to-end enrollment walk-through behind `make demo` (until the full
# live demo lands): build both binaries, start a fresh CA, create a token,
# enroll a device with it, verify the certificate with openssl, renew it over
# mTLS, and stop everything. Needs only Go (and openssl for the check, which
# it skips with a note when missing). Leaves its files in .demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
work=.demo
rm -rf "$work"
mkdir -p "$work"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building edgeagent and edgeca"
CGO_ENABLED=0 go build -o "$work/bin/" ./cmd/edgeagent ./cmd/edgeca

say "edgeca init: a fresh root and issuing CA"
"$work/bin/edgeca" init --dir "$work/ca"

say "edgeca serve: EST over HTTPS on a free loopback port"
"$work/bin/edgeca" serve --dir "$work/ca" --listen 127.0.0.1:0 --addr-file "$work/ca.addr" --cert-ttl 1h >"$work/edgeca.log" 2>&1 &
ca_pid=$!
trap 'kill $ca_pid 2>/dev/null || true; wait $ca_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do [ -s "$work/ca.addr" ] && break; sleep 0.1; done
[ -s "$work/ca.addr" ] || { echo "edgeca did not start:"; cat "$work/edgeca.log"; exit 1; }
url="https://$(cat "$work/ca.addr")"
echo "listening on $url"

say "edgeca token create: one string is all a device needs"
token=$("$work/bin/edgeca" token create --dir "$work/ca" --url "$url" --device demo-device-1 --ttl 10m)
echo "$token"

say "edgeagent enroll: key made on the device, CSR sent with the token, CA pinned"
"$work/bin/edgeagent" enroll --token "$token" --state-dir "$work/device" --device-id demo-device-1
ls -l "$work/device"

if command -v openssl >/dev/null; then
	say "openssl verify: an independent check of the issued chain"
	openssl verify -CAfile "$work/device/ca.pem" "$work/device/cert.pem"
else
	echo "(openssl not installed: skipping the independent check)"
fi

say "edgeagent renew: simplereenroll over mutual TLS with the current certificate"
"$work/bin/edgeagent" renew --state-dir "$work/device"

say "edgeca device list and audit"
"$work/bin/edgeca" device list --dir "$work/ca"
"$work/bin/edgeca" audit --dir "$work/ca" --limit 5

say "done: try 'edgeagent renew --rekey --state-dir $work/device', or 'edgeca device revoke' and renew again"
