// Package mosquitto runs a real mosquitto broker for tests: a TLS listener
// on loopback that requires client certificates, takes the certificate's CN
// as the user name and enforces a per-device ACL (devices/<CN>/# for each
// device, read access to devices/# for the configured readers).
//
// The broker runs with persistence on (in the test's temp dir): a restart
// keeps the subscribers' sessions and the messages queued for them, so a
// loss test that restarts the broker counts what the publisher lost, not
// what a subscriber missed while it reconnected.
package mosquitto

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Options describe the broker's TLS material and extra ACL users.
type Options struct {
	CAFile, CertFile, KeyFile string
	// CRLFile, if set, is a PEM CRL from the CA: mosquitto then refuses
	// revoked client certificates. It is read at every Start, so a test
	// can revoke a certificate and restart the broker.
	CRLFile string
	// Readers are CNs allowed to read devices/# (test subscribers).
	Readers []string
	// MaxTLS12 caps the broker at TLS 1.2, where the client's
	// certificate crosses the wire in the clear, so a test can see which
	// one a client presented. mosquitto's tls_version only sets the
	// minimum; the cap is OpenSSL's MaxProtocol, through OPENSSL_CONF.
	MaxTLS12 bool
}

// Broker is a running mosquitto.
type Broker struct {
	t    testing.TB
	dir  string
	conf string
	Addr string   // 127.0.0.1:port
	env  []string // the broker's environment; nil: inherited

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Binary returns mosquitto's path or fails the test with how to get it.
func Binary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"mosquitto", "/usr/sbin/mosquitto"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatal("mosquitto is not installed; `make test` installs it with apt-get (scripts/test-deps.sh)")
	return ""
}

// Start writes a config and starts mosquitto on a free loopback port; the
// broker is stopped when the test ends.
func Start(t testing.TB, o Options) *Broker {
	t.Helper()
	Binary(t)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	acl := "pattern readwrite devices/%u/#\n"
	for _, r := range o.Readers {
		acl += fmt.Sprintf("\nuser %s\ntopic read devices/#\n", r)
	}
	aclFile := filepath.Join(dir, "acl")
	if err := os.WriteFile(aclFile, []byte(acl), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	cfg := strings.Join([]string{
		"user root", // the key files are 0600 root: see DESIGN.md, test peers
		// Persistence keeps subscribers' sessions across a restart, so a
		// loss test counts what the agent lost, not what a subscriber
		// missed while it was reconnecting.
		"persistence true",
		"persistence_location " + dir + "/",
		"autosave_interval 1",
		"allow_anonymous false",
		"log_dest file " + filepath.Join(dir, "mosquitto.log"),
		"log_type error", "log_type warning", "log_type notice", "log_type information",
		"connection_messages true",
		"max_inflight_messages 1000",
		"max_queued_messages 100000",
		"listener " + port + " 127.0.0.1",
		"cafile " + o.CAFile,
		"certfile " + o.CertFile,
		"keyfile " + o.KeyFile,
		"require_certificate true",
		"use_identity_as_username true",
		"acl_file " + aclFile,
	}, "\n") + "\n"
	if o.CRLFile != "" {
		cfg += "crlfile " + o.CRLFile + "\n"
	}
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	b := &Broker{t: t, dir: dir, conf: conf, Addr: addr}
	if o.MaxTLS12 {
		ossl := filepath.Join(dir, "openssl.cnf")
		if err := os.WriteFile(ossl, []byte(opensslTLS12), 0o644); err != nil {
			t.Fatal(err)
		}
		b.env = append(os.Environ(), "OPENSSL_CONF="+ossl)
	}
	b.Start()
	t.Cleanup(b.Stop)
	return b
}

// opensslTLS12 is an OpenSSL config capping every TLS context at 1.2.
const opensslTLS12 = `openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MaxProtocol = TLSv1.2
`

// URL is the broker's mqtts URL.
func (b *Broker) URL() string { return "mqtts://" + b.Addr }

// Port is the listener's port.
func (b *Broker) Port() string {
	_, port, _ := net.SplitHostPort(b.Addr)
	return port
}

// Start (re)starts the broker on the same port and waits until it accepts.
func (b *Broker) Start() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd != nil {
		return
	}
	var out bytes.Buffer
	deadline := time.Now().Add(20 * time.Second)
	for {
		cmd := exec.Command(Binary(b.t), "-c", b.conf)
		cmd.Env = b.env
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			b.t.Fatalf("start mosquitto: %v", err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		if b.waitListening(done, deadline) {
			b.cmd, b.done = cmd, done
			return
		}
		// The port may still be held by the previous broker's socket in
		// TIME_WAIT or by a racing test: retry until the deadline.
		_ = cmd.Process.Kill()
		<-done
		if time.Now().After(deadline) {
			b.t.Fatalf("mosquitto did not start on %s:\n%s\n%s", b.Addr, out.String(), b.Log())
		}
	}
}

// Pid is the running broker's process id, 0 when it is stopped (for
// benchmarks that read its CPU time).
func (b *Broker) Pid() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return 0
	}
	return b.cmd.Process.Pid
}

func (b *Broker) waitListening(done chan struct{}, deadline time.Time) bool {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", b.Addr, 200*time.Millisecond)
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

// Stop kills the broker with SIGTERM: it drops every connection at once
// but saves its persistent sessions, so subscribers miss nothing.
func (b *Broker) Stop() { b.signal(syscall.SIGTERM) }

// Kill kills the broker with SIGKILL: a crash.
func (b *Broker) Kill() { b.signal(syscall.SIGKILL) }

func (b *Broker) signal(sig syscall.Signal) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Signal(sig)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
	b.cmd = nil
}

// Log returns the broker's log so far.
func (b *Broker) Log() string {
	data, _ := os.ReadFile(filepath.Join(b.dir, "mosquitto.log"))
	return string(data)
}

// WaitLog waits until the log contains s.
func (b *Broker) WaitLog(ctx context.Context, s string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(b.Log(), s) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("mosquitto log never showed %q", s)
		case <-tick.C:
		}
	}
	return nil
}
