package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestLockStateDir: one writer per state dir; the lock goes with its
// holder; the error names the holder's pid.
func TestLockStateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	l, err := LockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = LockStateDir(dir)
	if !errors.Is(err, ErrStateLocked) || !strings.Contains(err.Error(), "process "+itoa(os.Getpid())) {
		t.Fatalf("second lock: %v", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	l2, err := LockStateDir(dir)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	_ = l2.Unlock()
}

// TestCheckStateDir: directories others can write, or another user owns,
// are refused with the fix.
func TestCheckStateDir(t *testing.T) {
	for _, c := range []struct {
		mode  os.FileMode
		chown bool
		want  string // "" for accepted
	}{
		{0o700, false, ""},
		{0o750, false, ""},
		{0o770, false, "chmod go-w"},
		{0o777, false, "chmod go-w"},
		{0o702, false, "chmod go-w"},
		{0o700, true, "is owned by"},
	} {
		dir := filepath.Join(t.TempDir(), "state")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, c.mode); err != nil {
			t.Fatal(err)
		}
		if c.chown {
			if os.Geteuid() != 0 {
				t.Logf("not root: the owner case is not checked")
				continue
			}
			if err := os.Chown(dir, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}
		err := CheckStateDir(dir)
		if c.want == "" && err != nil || c.want != "" && (!errors.Is(err, ErrStateDirMode) || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("mode %04o chown %v: %v, want %q", c.mode, c.chown, err, c.want)
		}
		if c.want != "" {
			if _, err := LockStateDir(dir); !errors.Is(err, ErrStateDirMode) {
				t.Errorf("mode %04o chown %v: LockStateDir %v", c.mode, c.chown, err)
			}
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
