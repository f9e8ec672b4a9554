package uplink

import (
	"crypto/tls"
	"testing"

	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestIdentitySwapTakesEffectOnNextHandshake runs real TLS handshakes: the
// server sees the serial of whatever the Identity held at handshake time.
func TestIdentitySwapTakesEffectOnNextHandshake(t *testing.T) {
	ca := testpki.New(t, "ca")
	pool := ca.Pool()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*ca.Server(t).TLS}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serials := make(chan int64, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				serials <- tc.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
				// One byte after the handshake lets the client read the
				// session ticket, so it can try to resume next time.
				_, _ = tc.Write([]byte{1})
			}
			c.Close()
		}
	}()
	first, second := ca.Client(t, "dev"), ca.Client(t, "dev")
	id := NewIdentity(first.TLS)
	cfg := ClientTLSConfig(TLSOptions{RootCAs: pool, Identity: id})
	if cfg.MinVersion < tls.VersionTLS12 || cfg.ClientSessionCache == nil {
		t.Fatal("config must require TLS 1.2 and cache sessions")
	}
	dial := func() (resumed bool) {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		return c.ConnectionState().DidResume
	}
	dial()
	if s := <-serials; s != first.Cert.SerialNumber.Int64() {
		t.Fatalf("first handshake used serial %d, want %d", s, first.Cert.SerialNumber)
	}
	if !dial() {
		t.Fatal("a reconnect with the same identity did not resume the session")
	}
	<-serials
	changed := id.Changed()
	id.Store(second.TLS)
	select {
	case <-changed:
	default:
		t.Fatal("Store did not signal Changed")
	}
	if dial() {
		t.Fatal("resumed a session made with the old identity")
	}
	if s := <-serials; s != second.Cert.SerialNumber.Int64() {
		t.Fatalf("handshake after swap used serial %d, want %d", s, second.Cert.SerialNumber)
	}
}

func TestNoIdentityFailsHandshake(t *testing.T) {
	cfg := ClientTLSConfig(TLSOptions{Identity: NewIdentity(nil)})
	if _, err := cfg.GetClientCertificate(nil); err != ErrNoIdentity {
		t.Fatalf("got %v", err)
	}
}
