// Package testca runs a real edgeca in-process on a loopback port for tests
// of the agent side: real TLS, real EST, real SQLite store.
package testca

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// CA is a running edgeca.
type CA struct {
	*ca.CA
	URL  string
	Addr string
	Dir  string
}

// Options tune the CA under test.
type Options struct {
	CertTTL time.Duration // default 1h
	// MinTTL lowers the CA's minimum lifetime (ca.Options.MinTTL) for
	// lifecycle tests with certificates of seconds.
	MinTTL time.Duration
	Now    func() time.Time // the CA's clock
}

// Start initializes a CA in a temporary dir and serves EST on 127.0.0.1:0
// until the test ends.
func Start(t testing.TB, o Options) *CA {
	t.Helper()
	if o.CertTTL == 0 {
		o.CertTTL = time.Hour
	}
	ctx, cancel := context.WithCancel(context.Background())
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(ctx, dir, ca.InitOptions{}); err != nil {
		cancel()
		t.Fatalf("testca: init: %v", err)
	}
	c, err := ca.Open(ctx, dir, ca.Options{CertTTL: o.CertTTL, MinTTL: o.MinTTL, Hostnames: []string{"127.0.0.1", "localhost"}, Now: o.Now})
	if err != nil {
		cancel()
		t.Fatalf("testca: open: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatalf("testca: listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("testca: serve: %v", err)
		}
		_ = c.Close()
	})
	return &CA{CA: c, URL: "https://" + ln.Addr().String(), Addr: ln.Addr().String(), Dir: dir}
}

// Token creates a single-use token bound to deviceID.
func (c *CA) Token(t testing.TB, deviceID string) token.Token {
	t.Helper()
	tok, _, err := c.CreateToken(context.Background(), ca.TokenOptions{URL: c.URL, Device: deviceID})
	if err != nil {
		t.Fatalf("testca: token: %v", err)
	}
	return tok
}
