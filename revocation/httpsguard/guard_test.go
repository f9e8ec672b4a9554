package httpsguard

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/revocation"
)

type pki struct {
	ca    *x509.Certificate
	key   *ecdsa.PrivateKey
	serve tls.Certificate
	pool  *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{ca: ca, key: key, pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.serve = p.leaf(t, 2, x509.ExtKeyUsageServerAuth)
	return p
}

func (p *pki) leaf(t *testing.T, serial int64, eku x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{eku}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestGuard: a device whose certificate is revoked loses its live
// connection and is refused on the next handshake, a resumed one
// included; another device is untouched.
func TestGuard(t *testing.T) {
	p := newPKI(t)
	set := revocation.NewSet()
	g := New(set)
	base := &tls.Config{Certificates: []tls.Certificate{p.serve}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.pool, MinVersion: tls.VersionTLS12}
	srv := &http.Server{TLSConfig: g.TLSConfig(base), ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	g.Track(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	url := "https://" + ln.Addr().String() + "/"

	client := func(c tls.Certificate) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: p.pool, Certificates: []tls.Certificate{c}, ClientSessionCache: tls.NewLRUClientSessionCache(4)}}}
	}
	get := func(c *http.Client) error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		return err
	}
	bad, good := p.leaf(t, 100, x509.ExtKeyUsageClientAuth), p.leaf(t, 101, x509.ExtKeyUsageClientAuth)
	badC, goodC := client(bad), client(good)
	for _, c := range []*http.Client{badC, goodC} {
		if err := get(c); err != nil {
			t.Fatal(err)
		}
	}
	// A second connection resumes the session: still checked.
	badC.Transport.(*http.Transport).CloseIdleConnections()
	var resumed bool
	badC.Transport.(*http.Transport).TLSClientConfig.VerifyConnection = func(cs tls.ConnectionState) error { resumed = cs.DidResume; return nil }
	if err := get(badC); err != nil || !resumed {
		t.Fatalf("resumed connection before revocation: %v (resumed %v)", err, resumed)
	}
	serial := revocation.SerialHex(bad.Leaf)
	if g.Live(serial) != 1 {
		t.Fatalf("tracked connections of the device: %d, want 1", g.Live(serial))
	}
	added := set.Apply(revocation.Page{Cursor: 1, Events: []revocation.Event{{Seq: 1, Kind: revocation.KindRevoke, Serial: serial, NotAfter: bad.Leaf.NotAfter}}})
	g.OnRevoke(context.Background(), added)
	deadline := time.Now().Add(10 * time.Second)
	for g.Live(serial) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the revoked device's live connection was not closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	resumed = false
	if err := get(badC); err == nil {
		t.Fatal("revoked device got through")
	}
	if !resumed {
		t.Fatal("the refused handshake was not a resumption: nothing shown about resumed handshakes")
	}
	if err := get(goodC); err != nil {
		t.Fatalf("other device: %v", err)
	}
	if g.Live(revocation.SerialHex(good.Leaf)) != 1 {
		t.Fatalf("other device's connection: %d live, want 1 (kept alive)", g.Live(revocation.SerialHex(good.Leaf)))
	}
}
