// Package version carries build metadata stamped in by the Makefile's
// -ldflags -X; the defaults describe an unstamped `go build`.
package version

import (
	"runtime/debug"
	"time"
)

// Stamped at build time.
var (
	Version   = "dev"
	Commit    = "unknown"
	BuildTime = "1970-01-01T00:00:00Z"
)

// String is the one-line form `edgeagent version` prints.
func String() string { return Version + " (commit " + Commit + ", built " + BuildTime + ")" }

// Built returns when this binary was built, for the agent's clock
// plausibility check: the stamped BuildTime, or else the commit time the Go
// toolchain records for a build from a checkout (vcs.time), or else zero
// (unknown: the check then relies on the certificate's NotBefore alone).
func Built() time.Time {
	if t, err := time.Parse(time.RFC3339, BuildTime); err == nil && t.Year() > 1970 {
		return t
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.time" {
				if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
					return t
				}
			}
		}
	}
	return time.Time{}
}
