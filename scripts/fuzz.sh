#!/usr/bin/env bash
# Runs every Fuzz* target in the module for FUZZTIME each (default 5s), so
# `make test` exercises the decoders with generated input, not just seeds.
set -euo pipefail
FUZZTIME=${FUZZTIME:-5s}
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "fuzz: $pkg $target ($FUZZTIME)"
		# Go's fuzzer sometimes ends a time-boxed run with "context deadline
		# exceeded" when a worker is mid-input as time runs out; that is the
		# tool, not a finding (a finding writes a failing input under
		# testdata/fuzz). Such a run is tried again, up to three times in all:
		# a slow target (file I/O per input) meets it more often.
		for attempt in 1 2 3; do
			if go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" >/tmp/edgeagent-fuzz.log 2>&1; then
				break
			fi
			if grep -q 'Failing input written' /tmp/edgeagent-fuzz.log || ! grep -q 'context deadline exceeded' /tmp/edgeagent-fuzz.log || [ "$attempt" = 3 ]; then
				cat /tmp/edgeagent-fuzz.log
				exit 1
			fi
			echo "fuzz: $target: fuzzer timed out between inputs, running it again"
		done
	done
done
