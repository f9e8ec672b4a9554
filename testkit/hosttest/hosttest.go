// Package hosttest helps tests that change this machine's system
// configuration (users, /etc/systemd, installed packages): they need root,
// must not run at the same time as each other (go test runs packages in
// parallel, and both the service and the package tests make and delete the
// edgeagent user), and check systemd units with systemd-analyze.
package hosttest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// RequireRoot skips the test, loudly, when not run as root; under CI=true
// it fails instead, because CI runs the suite as root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	msg := fmt.Sprintf("NOT RUN: this test needs root (%s); run it as root (CI does)", why)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// LockPath is the lock file every host-changing test holds.
const LockPath = "/tmp/edgeagent-hosttest.lock"

// Lock holds an exclusive flock on LockPath until the test ends, so tests
// in different packages that change the host run one after another.
func Lock(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("hosttest: lock: %v", err)
	}
	// Blocking flock: the holder's test ends in bounded time, and the
	// kernel drops the lock if that process dies.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("hosttest: flock %s: %v", LockPath, err)
	}
	t.Cleanup(func() { f.Close() })
}

// VerifyUnit runs `systemd-analyze verify` on a unit file and fails on a
// non-zero exit and on any output: systemd-analyze exits 0 on unknown keys
// and unparsable values, reporting them only as messages.
func VerifyUnit(path string) error {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		return errors.New("systemd-analyze not found: install Debian package systemd (scripts/test-deps.sh does)")
	}
	cmd := exec.Command("systemd-analyze", "verify", "--man=no", path)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if msg := strings.TrimSpace(out.String()); err != nil || msg != "" {
		return fmt.Errorf("systemd-analyze verify %s: %v: %s", path, err, msg)
	}
	return nil
}
