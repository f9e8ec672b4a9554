// Package swtpm runs a real swtpm (software TPM 2.0) process for tests. The
// data port speaks raw TPM 2.0 commands, which go-tpm's transport talks over
// a plain net.Conn; the control port is only used by swtpm itself.
package swtpm

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"
)

// startTimeout bounds how long Start and Restart wait for swtpm to accept
// connections, including retries on port collisions.
const startTimeout = 20 * time.Second

// TPM is a running swtpm whose state lives in a per-test directory.
type TPM struct {
	t        testing.TB
	stateDir string

	mu   sync.Mutex
	port int
	cmd  *exec.Cmd
	done chan struct{}
	out  *lockedBuffer
}

// Binary returns swtpm's path or fails the test with how to get it.
func Binary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"swtpm", "/usr/bin/swtpm"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatal("swtpm is not installed; `make test` installs it with apt-get (scripts/test-deps.sh), or run: apt-get install swtpm swtpm-tools")
	return ""
}

// Start runs a fresh swtpm with an empty state directory and waits until it
// accepts connections; it is stopped when the test ends.
func Start(t testing.TB) *TPM {
	t.Helper()
	Binary(t)
	s := &TPM{t: t, stateDir: t.TempDir()}
	t.Cleanup(s.Stop)
	s.start()
	return s
}

// Addr returns the TPM command port as 127.0.0.1:port.
func (s *TPM) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// StateDir is where swtpm keeps its NV state (seeds, persistent objects).
func (s *TPM) StateDir() string { return s.stateDir }

// Restart stops swtpm and starts it again with the same state directory, as
// a reboot of the machine would. The port may change; use Addr again.
func (s *TPM) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// Stop terminates swtpm; calling it twice is fine.
func (s *TPM) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd, s.done = nil, nil
}

func (s *TPM) start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	deadline := time.Now().Add(startTimeout)
	var lastOut string
	for attempt := 1; ; attempt++ {
		port, err := freePortPair()
		if err != nil {
			s.t.Fatalf("swtpm: find free ports: %v", err)
		}
		out := &lockedBuffer{}
		cmd := exec.Command(Binary(s.t), "socket", "--tpm2",
			"--tpmstate", "dir="+s.stateDir,
			"--server", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port),
			"--ctrl", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port+1),
			"--flags", "not-need-init,startup-clear",
		)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			s.t.Fatalf("swtpm: start: %v", err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if waitListening(addr, done, deadline) {
			s.port, s.cmd, s.done, s.out = port, cmd, done, out
			return
		}
		// Another process may have taken one of the two ports between our
		// probe and swtpm's bind: try another pair until the deadline.
		_ = cmd.Process.Kill()
		<-done
		lastOut = out.String()
		if time.Now().After(deadline) {
			s.t.Fatalf("swtpm: did not accept connections after %d attempts (last on %s); its output:\n%s", attempt, addr, lastOut)
		}
	}
}

// waitListening polls addr until it accepts, the process exits, or the
// deadline passes.
func waitListening(addr string, done <-chan struct{}, deadline time.Time) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		// A probe connection must not be mistaken for a TPM client: swtpm
		// serves one connection at a time and simply moves on when it closes.
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

// lockedBuffer collects swtpm's output; the process writes while a failing
// test may read.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
