package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// LockFile is the lock in the state directory that makes one process its
// only writer: `run`, `enroll` and `renew` hold it while they work.
const LockFile = "lock"

// ErrStateLocked is wrapped by LockStateDir when another process holds the
// lock.
var ErrStateLocked = errors.New("another edgeagent holds the state directory")

// ErrStateDirMode is wrapped by CheckStateDir when the directory is open
// to other users.
var ErrStateDirMode = errors.New("state directory is open to other users")

// StateLock is a held state-directory lock.
type StateLock struct {
	f *os.File
}

// LockStateDir checks dir (CheckStateDir; it is created 0700 when absent)
// and takes its writer lock without waiting. A held lock is an error
// wrapping ErrStateLocked that names the holder's pid: two writers would
// each renew, rotate the key or enroll under the other's feet. The lock
// is an flock(2) on dir/lock, so it goes with the process however that
// ends; the file itself stays.
func LockStateDir(dir string) (*StateLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if err := CheckStateDir(dir); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := readBounded(path, 64)
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := "another process"
			if pid := string(bytes.TrimSpace(b)); pid != "" {
				holder = "process " + pid
			}
			return nil, fmt.Errorf("%w: %s (%s holds %s): stop it first, or talk to it (edgeagent status, renew)", ErrStateLocked, dir, holder, path)
		}
		return nil, fmt.Errorf("state dir: lock %s: %w", path, err)
	}
	// The pid is for the message above only: the flock decides.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &StateLock{f: f}, nil
}

// Unlock releases the lock.
func (l *StateLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// CheckStateDir refuses a state directory that other users can write (they
// could swap the certificate, the CA bundle or the key blobs) or that
// another user owns (a root-run enroll would leave files the service user
// cannot read, or the reverse), like a key file others can read.
func CheckStateDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("state dir: %s is not a directory", dir)
	}
	return stateDirProblem(dir, st)
}

// stateDirProblem is CheckStateDir's decision on the directory's mode and
// owner.
func stateDirProblem(dir string, st fs.FileInfo) error {
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; run 'chmod go-w %s' (0700 is what the package makes)", ErrStateDirMode, dir, perm, dir)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := int(sys.Uid); uid != os.Geteuid() {
		owner := strconv.Itoa(uid)
		if u, err := user.LookupId(owner); err == nil {
			owner = u.Username
		}
		return fmt.Errorf("%w: %s is owned by %s, not by the user running edgeagent (uid %d); run it as %s (sudo -u %s edgeagent ...) or chown the directory",
			ErrStateDirMode, dir, owner, os.Geteuid(), owner, owner)
	}
	return nil
}
