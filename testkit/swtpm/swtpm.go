// Package swtpm runs a real swtpm (software TPM 2.0) process for tests and
// benchmarks. The data port speaks raw TPM 2.0 commands, which go-tpm's
// transport (and keystore/tpm's Options.Address) talks over a plain
// net.Conn; the control port is only used by swtpm itself.
//
// Process is the plain API (usable from tools/bench); Start wraps it for
// tests, failing the test on errors and stopping swtpm at cleanup.
package swtpm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/syncbuf"
)

// startTimeout bounds how long a start waits for swtpm to accept
// connections, including retries on port collisions.
const startTimeout = 20 * time.Second

// stopTimeout bounds how long Stop waits after SIGTERM before SIGKILL.
const stopTimeout = 10 * time.Second

// ErrNotInstalled is returned when the swtpm binary cannot be found.
var ErrNotInstalled = errors.New("swtpm is not installed; `make test` installs it with apt-get (scripts/test-deps.sh), or run: apt-get install swtpm swtpm-tools")

// Binary returns swtpm's path.
func Binary() (string, error) {
	for _, p := range []string{"swtpm", "/usr/bin/swtpm"} {
		if path, err := exec.LookPath(p); err == nil {
			return path, nil
		}
	}
	return "", ErrNotInstalled
}

// Process is a running swtpm whose NV state (seeds, persistent objects)
// lives in a state directory that survives Restart.
type Process struct {
	bin      string
	stateDir string

	mu   sync.Mutex
	port int
	cmd  *exec.Cmd
	done chan struct{}
	out  *syncbuf.Buffer
}

// Run starts swtpm with its state in stateDir (created if missing; an empty
// directory means a freshly manufactured TPM) and waits until it accepts
// connections.
func Run(stateDir string) (*Process, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("swtpm: state dir: %w", err)
	}
	p := &Process{bin: bin, stateDir: stateDir}
	if err := p.start(); err != nil {
		return nil, err
	}
	return p, nil
}

// Addr returns the TPM command port as 127.0.0.1:port.
func (p *Process) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port))
}

// StateDir is where swtpm keeps its NV state.
func (p *Process) StateDir() string { return p.stateDir }

// Output returns what swtpm printed so far (for failure messages).
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.out == nil {
		return ""
	}
	return p.out.String()
}

// Restart stops swtpm and starts it again with the same state directory, as
// a reboot of the machine would: transient objects are gone, seeds and
// persistent objects stay. It tries to keep the port, so a client that
// stored Addr can reconnect; if the port was taken meanwhile it picks a new
// one, so call Addr again.
func (p *Process) Restart() error {
	p.mu.Lock()
	port := p.port
	p.mu.Unlock()
	if err := p.Stop(); err != nil {
		return err
	}
	if err := p.startOn(port, time.Now().Add(startTimeout/2)); err == nil {
		return nil
	}
	return p.start()
}

// Stop terminates swtpm (SIGTERM, then SIGKILL after a grace period) and
// waits for it to exit; calling it twice is fine.
func (p *Process) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd, p.done = nil, nil
	return nil
}

// start runs swtpm on a fresh pair of free ports, retrying with other ports
// until the deadline when one of them was taken between probe and bind.
func (p *Process) start() error {
	deadline := time.Now().Add(startTimeout)
	var lastErr error
	for attempt := 1; time.Now().Before(deadline); attempt++ {
		port, err := freePortPair()
		if err != nil {
			return fmt.Errorf("swtpm: find free ports: %w", err)
		}
		if lastErr = p.startOn(port, deadline); lastErr == nil {
			return nil
		}
	}
	return lastErr
}

// startOn runs swtpm on port (commands) and port+1 (control). It retries on
// the same port until the deadline, because a just-stopped swtpm's socket
// may linger briefly.
func (p *Process) startOn(port int, deadline time.Time) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var out *syncbuf.Buffer
	for {
		out = &syncbuf.Buffer{}
		cmd := exec.Command(p.bin, "socket", "--tpm2",
			"--tpmstate", "dir="+p.stateDir,
			"--server", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port),
			"--ctrl", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port+1),
			"--flags", "not-need-init,startup-clear",
		)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("swtpm: start %s: %w", p.bin, err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		if waitListening(addr, done, deadline) {
			p.mu.Lock()
			p.port, p.cmd, p.done, p.out = port, cmd, done, out
			p.mu.Unlock()
			return nil
		}
		_ = cmd.Process.Kill()
		<-done
		if !time.Now().Before(deadline) {
			return fmt.Errorf("swtpm: did not accept connections on %s; its output:\n%s", addr, out.String())
		}
		// The process exited (port in use): wait a little before trying the
		// same port again.
		t := time.NewTimer(50 * time.Millisecond)
		<-t.C
	}
}

// waitListening polls addr until it accepts, the process exits, or the
// deadline passes.
func waitListening(addr string, done <-chan struct{}, deadline time.Time) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		// A probe connection is harmless: swtpm serves one connection at a
		// time and simply moves on when it closes.
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return true
		}
		select {
		case <-done:
			return false
		case <-tick.C:
		}
	}
	return false
}

// freePortPair returns a port P such that P and P+1 were both free a moment
// ago; swtpm needs the pair for its command and control channels.
func freePortPair() (int, error) {
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		ln.Close()
		if err != nil {
			continue
		}
		ln2.Close()
		return p, nil
	}
	return 0, fmt.Errorf("no two adjacent free ports on 127.0.0.1")
}

// TPM is a swtpm owned by one test.
type TPM struct {
	*Process
	t testing.TB
}

// Start runs a fresh swtpm with an empty state directory under t.TempDir()
// and waits until it accepts connections; it is stopped when the test ends.
// A missing swtpm binary fails the test (it is never skipped).
func Start(t testing.TB) *TPM {
	t.Helper()
	return StartDir(t, t.TempDir())
}

// StartDir is Start with a given state directory, e.g. one that an earlier
// swtpm left behind.
func StartDir(t testing.TB, stateDir string) *TPM {
	t.Helper()
	p, err := Run(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	s := &TPM{Process: p, t: t}
	t.Cleanup(func() { _ = p.Stop() })
	return s
}

// Restart restarts swtpm with the same state, failing the test on error.
func (s *TPM) Restart() {
	s.t.Helper()
	if err := s.Process.Restart(); err != nil {
		s.t.Fatal(err)
	}
}

// Stop stops swtpm; the test's cleanup would do it too.
func (s *TPM) Stop() {
	_ = s.Process.Stop()
}
