package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// bins holds the paths of the binaries TestMain built.
type bins struct {
	agent, ca string
}

var built bins // set once by TestMain before any test runs, read-only after

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edgeagent-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	built = bins{agent: filepath.Join(dir, "edgeagent"), ca: filepath.Join(dir, "edgeca")}
	for _, b := range []struct{ out, pkg string }{{built.agent, "../../cmd/edgeagent"}, {built.ca, "../../cmd/edgeca"}} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: build %s: %v\n%s", b.pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTools fails (not skips) when an independent peer is missing:
// `make test` installs them.
func requireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s is not installed; `make test` installs it with apt-get (scripts/test-deps.sh)", n)
		}
	}
}

// run runs a command to completion and returns its stdout; it fails the
// test with stderr on a non-zero exit.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, errOut, err := runErr(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(name), strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// runErr runs a command and returns stdout, stderr and the exit error.
func runErr(t testing.TB, name string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// startCA runs `edgeca init` and `edgeca serve` on a free loopback port and
// returns the CA dir and the server's https URL. The server is stopped when
// the test ends.
func startCA(t testing.TB, extra ...string) (dir, url string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "ca")
	run(t, built.ca, "init", "--dir", dir)
	addrFile := filepath.Join(t.TempDir(), "addr")
	args := append([]string{"serve", "--dir", dir, "--listen", "127.0.0.1:0", "--addr-file", addrFile}, extra...)
	cmd := exec.Command(built.ca, args...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("edgeca serve log:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile(addrFile); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return dir, "https://" + strings.TrimSpace(string(b))
		}
		select {
		case err := <-exited:
			t.Fatalf("edgeca serve exited early: %v\n%s", err, logs.String())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			t.Fatalf("edgeca serve did not write %s within 30s\n%s", addrFile, logs.String())
		}
	}
}
