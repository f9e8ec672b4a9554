package uplink

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T) *testCA {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{c, k}
}

func (ca *testCA) issue(t *testing.T, serial int64, server bool) *tls.Certificate {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "dev"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// TestIdentitySwapTakesEffectOnNextHandshake runs real TLS handshakes: the
// server sees the serial of whatever the Identity held at handshake time.
func TestIdentitySwapTakesEffectOnNextHandshake(t *testing.T) {
	ca := newCA(t)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*ca.issue(t, 100, true)}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
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
	id := NewIdentity(ca.issue(t, 1, false))
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
	if s := <-serials; s != 1 {
		t.Fatalf("first handshake used serial %d", s)
	}
	if !dial() {
		t.Fatal("a reconnect with the same identity did not resume the session")
	}
	<-serials
	changed := id.Changed()
	id.Store(ca.issue(t, 2, false))
	select {
	case <-changed:
	default:
		t.Fatal("Store did not signal Changed")
	}
	if dial() {
		t.Fatal("resumed a session made with the old identity")
	}
	if s := <-serials; s != 2 {
		t.Fatalf("handshake after swap used serial %d, want 2", s)
	}
}

func TestNoIdentityFailsHandshake(t *testing.T) {
	cfg := ClientTLSConfig(TLSOptions{Identity: NewIdentity(nil)})
	if _, err := cfg.GetClientCertificate(nil); err != ErrNoIdentity {
		t.Fatalf("got %v", err)
	}
}
