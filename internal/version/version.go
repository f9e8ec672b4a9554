// Package version carries build metadata stamped in by the Makefile's
// -ldflags -X; the defaults describe an unstamped `go build`.
package version

// Stamped at build time.
var (
	Version   = "dev"
	Commit    = "unknown"
	BuildTime = "1970-01-01T00:00:00Z"
)

// String is the one-line form `edgeagent version` prints.
func String() string { return Version + " (commit " + Commit + ", built " + BuildTime + ")" }
