// StartEdgeCA runs a real edgeca in-process on a loopback port for tests
// of the agent side: real TLS, real EST, real SQLite store.
package testpki

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// EdgeCA is a running edgeca.
type EdgeCA struct {
	*ca.CA
	URL  string
	Addr string
	Dir  string

	t       testing.TB
	mu      sync.Mutex
	stopped bool
	cancel  context.CancelFunc
	done    chan error
}

// EdgeCAOptions tune the CA under test.
type EdgeCAOptions struct {
	CertTTL time.Duration // default 1h
	// MinTTL lowers the CA's minimum lifetime (ca.Options.MinTTL) for
	// lifecycle tests with certificates of seconds.
	MinTTL time.Duration
	Now    func() time.Time // the CA's clock
	// PostQuantumTLS: ca.Options.PostQuantumTLS.
	PostQuantumTLS bool
	// Attestation: ca.Options.Attestation.
	Attestation *ca.AttestOptions
}

// StartEdgeCA initializes a CA in a temporary dir and serves EST on 127.0.0.1:0
// until the test ends.
func StartEdgeCA(t testing.TB, o EdgeCAOptions) *EdgeCA {
	t.Helper()
	if o.CertTTL == 0 {
		o.CertTTL = time.Hour
	}
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(context.Background(), dir, ca.InitOptions{}); err != nil {
		t.Fatalf("testca: init: %v", err)
	}
	c, err := ca.Open(context.Background(), dir, ca.Options{CertTTL: o.CertTTL, MinTTL: o.MinTTL, PostQuantumTLS: o.PostQuantumTLS, Hostnames: []string{"127.0.0.1", "localhost"}, Now: o.Now,
		Attestation: o.Attestation})
	if err != nil {
		t.Fatalf("testca: open: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testca: listen: %v", err)
	}
	tc := &EdgeCA{CA: c, URL: "https://" + ln.Addr().String(), Addr: ln.Addr().String(), Dir: dir, t: t}
	tc.serve(ln)
	t.Cleanup(func() {
		tc.Stop()
		_ = c.Close()
	})
	return tc
}

func (c *EdgeCA) serve(ln net.Listener) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.CA.Serve(ctx, ln) }()
	c.cancel, c.done, c.stopped = cancel, done, false
}

// Stop stops serving (an outage); the store stays open. Idempotent.
func (c *EdgeCA) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return
	}
	c.stopped = true
	c.cancel()
	if err := <-c.done; err != nil && !errors.Is(err, context.Canceled) {
		c.t.Errorf("testca: serve: %v", err)
	}
}

// Resume serves again on the same address after Stop.
func (c *EdgeCA) Resume() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.stopped {
		return
	}
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		c.t.Fatalf("testca: listen again on %s: %v", c.Addr, err)
	}
	c.serve(ln)
}

// Token creates a single-use token bound to deviceID.
func (c *EdgeCA) Token(t testing.TB, deviceID string) token.Token {
	t.Helper()
	tok, _, err := c.CreateToken(context.Background(), ca.TokenOptions{URL: c.URL, Device: deviceID})
	if err != nil {
		t.Fatalf("testca: token: %v", err)
	}
	return tok
}
