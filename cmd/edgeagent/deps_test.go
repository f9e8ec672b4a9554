package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/edgeagent/edgeagent"

// goListDeps returns every package the patterns link (go list -deps, no
// test files) with env added to the environment (GOOS, GOARCH, GOARM).
func goListDeps(t *testing.T, env []string, patterns ...string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is not on PATH: %v", err)
	}
	args := append([]string{"list", "-deps", "-f", "{{.ImportPath}}"}, patterns...)
	cmd := exec.Command(goBin, args...)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.Fields(string(out))
}

// isUnder reports whether pkg is p or a package below it.
func isUnder(pkg, p string) bool { return pkg == p || strings.HasPrefix(pkg, p+"/") }

// TestDependencyDirection keeps the architecture of DESIGN.md true, as
// tailscale's cmd/tailscaled/deps_test.go does: the edgeagent binary, for
// every architecture it ships on, links no SQLite, no PostgreSQL driver,
// no broker, no Prometheus client, no CA and nothing of testkit/ or
// tools/; the edgeca binary links no agent and nothing of testkit/ or
// tools/ either; and packages
// depend downward only (cmd -> agent -> {enroll, uplink, keystore};
// cmd -> ca; agent and ca share only enroll's wire contract).
func TestDependencyDirection(t *testing.T) {
	// Everything under testkit/ (harnesses that start real peers, test
	// PKIs, polling) and tools/ (the demo, the bench) is for tests and
	// people, never for a shipped binary.
	harnesses := []string{"testkit", "tools"}
	forbiddenInAgentBinary := []string{"modernc.org/sqlite", "modernc.org/libc", "github.com/jackc/pgx", "github.com/mochi-mqtt",
		"github.com/prometheus", "testing", "net/http/httptest", module + "/ca", module + "/cmd/edgeca"}
	for _, h := range harnesses {
		forbiddenInAgentBinary = append(forbiddenInAgentBinary, module+"/"+h)
	}
	prefixed := func(ps ...string) []string {
		var out []string
		for _, p := range ps {
			out = append(out, module+"/"+p)
		}
		return out
	}
	cases := []struct {
		name      string
		env       []string
		patterns  []string
		forbidden []string
	}{
		{"edgeagent linux/amd64", []string{"GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0"}, []string{"./cmd/edgeagent"}, forbiddenInAgentBinary},
		{"edgeagent linux/arm64", []string{"GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0"}, []string{"./cmd/edgeagent"}, forbiddenInAgentBinary},
		{"edgeagent linux/armv6", []string{"GOOS=linux", "GOARCH=arm", "GOARM=6", "CGO_ENABLED=0"}, []string{"./cmd/edgeagent"}, forbiddenInAgentBinary},
		{"edgeca linux/amd64", []string{"GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0"}, []string{"./cmd/edgeca"},
			append([]string{"testing", "net/http/httptest"}, prefixed(append([]string{"agent", "uplink", "keystore"}, harnesses...)...)...)},
		{"agent", nil, []string{"./agent/..."}, append(prefixed("ca", "cmd"), forbiddenInAgentBinary...)},
		{"ca", nil, []string{"./ca/..."}, prefixed(append([]string{"agent", "uplink", "keystore", "cmd"}, harnesses...)...)},
		{"enroll", nil, []string{"./enroll/..."}, prefixed(append([]string{"agent", "ca", "uplink", "cmd"}, harnesses...)...)},
		{"uplink", nil, []string{"./uplink/..."}, prefixed(append([]string{"agent", "ca", "enroll", "keystore", "cmd"}, harnesses...)...)},
		{"internal", nil, []string{"./internal/..."}, prefixed(append([]string{"agent", "ca", "enroll", "uplink", "keystore", "cmd"}, harnesses...)...)},
		{"keystore", nil, []string{"./keystore/..."}, prefixed(append([]string{"agent", "ca", "enroll", "uplink", "cmd"}, harnesses...)...)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			deps := goListDeps(t, c.env, c.patterns...)
			if len(deps) < 10 {
				t.Fatalf("go list found only %v: is the pattern right?", deps)
			}
			for _, d := range deps {
				for _, f := range c.forbidden {
					if isUnder(d, f) {
						t.Errorf("%s links %s, which it must not (forbidden: %s)", strings.Join(c.patterns, " "), d, f)
					}
				}
			}
		})
	}
}

// TestIsUnder: the prefix rule does not confuse siblings.
func TestIsUnder(t *testing.T) {
	for _, c := range []struct {
		pkg, p string
		want   bool
	}{
		{module + "/ca", module + "/ca", true},
		{module + "/ca/store", module + "/ca", true},
		{module + "/cache", module + "/ca", false},
		{"testing", "testing", true},
		{"testing/iotest", "testing", true},
		{"github.com/mochi-mqtt/server/v2", "github.com/mochi-mqtt", true},
	} {
		if got := isUnder(c.pkg, c.p); got != c.want {
			t.Errorf("isUnder(%q, %q) = %v", c.pkg, c.p, got)
		}
	}
}
