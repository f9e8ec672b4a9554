#!/usr/bin/env bash
# Builds the .deb, .rpm and .apk packages of edgeagent and edgeca with nfpm
# (packaging/nfpm/*.yaml) from the static binaries `make cross` leaves in
# dist/. Used by `make package` and by packaging's dpkg test.
#   ARCHS="amd64 arm64 armv7 armv6" FORMATS="deb rpm apk" PROGRAMS="edgeagent edgeca"
#   DIST=dist (binaries: PROGRAM-linux-ARCH) OUT=dist/packages PKG_VERSION=...
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned. v2.46 and later need go.digitalxero.dev modules, which the Go
# module proxy does not serve.
NFPM_VERSION=v2.45.2
ARCHS=${ARCHS:-amd64 arm64 armv7 armv6}
FORMATS=${FORMATS:-deb rpm apk}
PROGRAMS=${PROGRAMS:-edgeagent edgeca}
DIST=${DIST:-dist}
OUT=${OUT:-dist/packages}
export PKG_MAINTAINER=${PKG_MAINTAINER:-edgeagent maintainers <maintainers@edgeagent.example.org>}
# The version `make cross` gave the binaries (scripts/version.sh), checked
# against each binary below.
PKG_VERSION=${PKG_VERSION:-$(bash scripts/version.sh)}
export PKG_VERSION

# nfpm is built once per run, outside go.mod (a packaging tool, not a
# dependency of the programs).
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
GOBIN=$tools CGO_ENABLED=0 go install github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION

# The Debian changelog every .deb needs: one entry naming the commit.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
when=$(date -R -d "$(git log -1 --format=%cI 2>/dev/null || echo @0)")
for prog in $PROGRAMS; do
	printf '%s (%s-1) unstable; urgency=medium\n\n  * Built from commit %s; the changes are in the project history.\n\n -- %s  %s\n' \
		"$prog" "$PKG_VERSION" "$commit" "$PKG_MAINTAINER" "$when" | gzip -n -9 >"$tools/$prog.changelog.Debian.gz"
done

mkdir -p "$OUT"
for arch in $ARCHS; do
	case $arch in
	amd64 | arm64) NFPM_ARCH=$arch ;;
	armv7) NFPM_ARCH=arm7 ;; # deb armhf, rpm armv7hl, apk armv7
	armv6) NFPM_ARCH=arm6 ;; # deb armhf (Raspberry Pi OS), rpm armv6hl, apk armhf
	*) echo "package: unknown arch $arch (amd64 arm64 armv7 armv6)" >&2; exit 2 ;;
	esac
	export NFPM_ARCH
	for prog in $PROGRAMS; do
		export BIN=$DIST/$prog-linux-$arch CHANGELOG=$tools/$prog.changelog.Debian.gz
		[ -x "$BIN" ] || { echo "package: $BIN missing: run make cross" >&2; exit 1; }
		# The package version and `PROGRAM version` must agree: ask the
		# binary (natively, or under qemu-user for another arch).
		if [ "${PKG_ALLOW_VERSION_MISMATCH:-}" != 1 ]; then
			case $arch in
			amd64) emu=() ;;
			arm64) emu=(qemu-aarch64-static) ;;
			*) emu=(qemu-arm-static) ;;
			esac
			if [ "$(uname -m)" = x86_64 ] && { [ ${#emu[@]} -eq 0 ] || command -v "${emu[0]}" >/dev/null; }; then
				got=$("${emu[@]}" "$BIN" version | awk '{print $2}')
				if [ "$got" != "$PKG_VERSION" ]; then
					echo "package: $BIN says version $got, the package would be $PKG_VERSION; run make cross, or make package VERSION=$PKG_VERSION" >&2
					exit 1
				fi
			else
				echo "package: WARNING: cannot run $BIN here (no ${emu[*]:-native amd64}) to check that its version is $PKG_VERSION" >&2
			fi
		fi
		for fmt in $FORMATS; do
			# One armhf .deb: Debian's armhf and Raspberry Pi OS's are
			# the same dpkg architecture, so an armv7 and an armv6
			# package would share name, version and architecture. The
			# armv6 build runs on every armhf board.
			if [ "$fmt" = deb ] && [ "$arch" = armv7 ] && [[ " $ARCHS " == *" armv6 "* ]]; then
				continue
			fi
			target=$OUT/${prog}_${PKG_VERSION}_$arch.$fmt
			"$tools/nfpm" package --config packaging/nfpm/$prog.yaml --packager "$fmt" --target "$target" >"$tools/log" || { cat "$tools/log" >&2; exit 1; }
			printf '%-44s %9d bytes\n' "$target" "$(stat -c %s "$target")"
		done
	done
done
