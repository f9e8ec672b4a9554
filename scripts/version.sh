#!/usr/bin/env bash
# Prints the version of this checkout, the one both `edgeagent version`
# (Makefile VERSION, -ldflags) and the packages (scripts/package.sh) carry:
# X.Y.Z at a release tag vX.Y.Z, otherwise 0.0.<commit count>, which every
# package manager orders correctly (the commit is in `version` anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
if tag=$(git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null); then
	echo "${tag#v}"
else
	echo "0.0.$(git rev-list --count HEAD 2>/dev/null || echo 0)"
fi
