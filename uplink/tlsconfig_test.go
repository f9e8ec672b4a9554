package uplink

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/testpki"
)

func TestClientTLSConfigHandshakes(t *testing.T) {
	now := time.Now()
	// The clock cases below need a CA valid well before now.
	ca := testpki.NewWith(t, "long ca", testpki.CAOptions{NotBefore: now.Add(-72 * time.Hour), NotAfter: now.Add(72 * time.Hour)})
	pool := ca.Pool()
	serverCert := func(from, until time.Time) tls.Certificate {
		return *ca.Issue(t, testpki.Leaf{CN: "server", NotBefore: from, NotAfter: until, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"broker.test"}}).TLS
	}
	valid := serverCert(now.Add(-time.Hour), now.Add(time.Hour))
	expired := serverCert(now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	client := ca.Client(t, "dev").TLS
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
	ca := testpki.New(t, "ca")
	certs := []*tls.Certificate{ca.Client(t, "dev").TLS, ca.Client(t, "dev").TLS, ca.Client(t, "dev").TLS}
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
	ca := testpki.New(t, "ca")
	a, b := ca.Client(t, "dev").TLS, ca.Client(t, "dev").TLS
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
