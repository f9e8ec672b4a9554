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
	"sync"
	"testing"
	"time"
)

// serverCert issues a server certificate for 127.0.0.1 valid in
// [from, until].
func (ca *testCA) serverCert(t *testing.T, from, until time.Time) tls.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "server"}, NotBefore: from, NotAfter: until,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"broker.test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

func TestClientTLSConfigHandshakes(t *testing.T) {
	now := time.Now()
	// newCA's CA lives an hour around now; the clock cases below need a
	// longer-lived one.
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "long ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: now.Add(-72 * time.Hour), NotAfter: now.Add(72 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: caCert, key: k}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	valid := ca.serverCert(t, now.Add(-time.Hour), now.Add(time.Hour))
	expired := ca.serverCert(t, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	client := ca.issue(t, 50, false)
	past := func() time.Time { return now.Add(-36 * time.Hour) }

	cases := []struct {
		name      string
		server    tls.Certificate
		serverMax uint16
		opts      TLSOptions
		ok        bool
	}{
		{"valid server, current identity", valid, 0, TLSOptions{RootCAs: pool, Identity: NewIdentity(client)}, true},
		{"server name checked", valid, 0, TLSOptions{RootCAs: pool, ServerName: "broker.test", Identity: NewIdentity(client)}, true},
		{"wrong server name", valid, 0, TLSOptions{RootCAs: pool, ServerName: "other.test", Identity: NewIdentity(client)}, false},
		{"unknown server CA", valid, 0, TLSOptions{RootCAs: x509.NewCertPool(), Identity: NewIdentity(client)}, false},
		{"expired server, real clock", expired, 0, TLSOptions{RootCAs: pool, Identity: NewIdentity(client)}, false},
		{"expired server, injected clock in its lifetime", expired, 0, TLSOptions{RootCAs: pool, Identity: NewIdentity(client), Time: past}, true},
		{"TLS 1.1 server refused", valid, tls.VersionTLS11, TLSOptions{RootCAs: pool, Identity: NewIdentity(client)}, false},
		{"TLS 1.2 server accepted", valid, tls.VersionTLS12, TLSOptions{RootCAs: pool, Identity: NewIdentity(client)}, true},
		{"no identity yet", valid, 0, TLSOptions{RootCAs: pool, Identity: NewIdentity(nil)}, false},
		{"nil identity", valid, 0, TLSOptions{RootCAs: pool}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srvCfg := &tls.Config{Certificates: []tls.Certificate{c.server}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
				MinVersion: tls.VersionTLS10, MaxVersion: c.serverMax}
			ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			var wg sync.WaitGroup
			wg.Add(1)
			var srvErr error
			go func() {
				defer wg.Done()
				conn, err := ln.Accept()
				if err != nil {
					srvErr = err
					return
				}
				defer conn.Close()
				srvErr = conn.(*tls.Conn).Handshake()
				if srvErr == nil {
					_, srvErr = conn.Write([]byte{1})
				}
			}()
			cfg := ClientTLSConfig(c.opts)
			if cfg.MinVersion != tls.VersionTLS12 || cfg.ClientSessionCache == nil || cfg.InsecureSkipVerify {
				t.Fatalf("config: min version %x, session cache %v, insecure %v", cfg.MinVersion, cfg.ClientSessionCache, cfg.InsecureSkipVerify)
			}
			conn, err := tls.Dial("tcp", ln.Addr().String(), cfg)
			if err == nil {
				// TLS 1.3 reports a refused client certificate on the
				// first read.
				var n int
				n, err = conn.Read(make([]byte, 1))
				if n == 1 {
					err = nil // the byte may come with the close_notify that follows it
				}
				conn.Close()
			}
			wg.Wait()
			if ok := err == nil && srvErr == nil; ok != c.ok {
				t.Fatalf("client err %v, server err %v; want ok=%v", err, srvErr, c.ok)
			}
		})
	}
}

func TestIdentityChangedIsClosedAndReplacedOnEveryStore(t *testing.T) {
	ca := newCA(t)
	certs := []*tls.Certificate{ca.issue(t, 1, false), ca.issue(t, 2, false), ca.issue(t, 3, false)}
	id := NewIdentity(nil)
	if id.Load() != nil {
		t.Fatal("empty identity has a certificate")
	}
	for i, c := range certs {
		ch := id.Changed()
		select {
		case <-ch:
			t.Fatalf("store %d: Changed closed before Store", i)
		default:
		}
		id.Store(c)
		select {
		case <-ch:
		default:
			t.Fatalf("store %d: Changed not closed by Store", i)
		}
		if id.Load() != c {
			t.Fatalf("store %d: Load returned another certificate", i)
		}
		if id.Changed() == ch {
			t.Fatalf("store %d: Changed not replaced", i)
		}
	}
	var nilID *Identity
	if nilID.Load() != nil {
		t.Fatal("nil identity has a certificate")
	}
}

// TestIdentityConcurrentUse is for -race: handshakes load while renewals
// store and uplinks wait on Changed.
func TestIdentityConcurrentUse(t *testing.T) {
	ca := newCA(t)
	a, b := ca.issue(t, 1, false), ca.issue(t, 2, false)
	id := NewIdentity(a)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-id.Changed():
					if c := id.Load(); c != a && c != b {
						t.Error("Load returned a certificate never stored")
						return
					}
				}
			}
		}()
	}
	for i := 0; i < 1000; i++ {
		if i%2 == 0 {
			id.Store(b)
		} else {
			id.Store(a)
		}
	}
	close(stop)
	wg.Wait()
}
