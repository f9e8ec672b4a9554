package httpsguard

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/revocation"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestGuard: a device whose certificate is revoked loses its live
// connection and is refused on the next handshake, a resumed one
// included; another device is untouched.
func TestGuard(t *testing.T) {
	p := testpki.New(t, "test CA")
	pool := p.Pool()
	set := revocation.NewSet()
	g := New(set)
	base := &tls.Config{Certificates: []tls.Certificate{*p.Server(t).TLS}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS12}
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
			RootCAs: pool, Certificates: []tls.Certificate{c}, ClientSessionCache: tls.NewLRUClientSessionCache(4)}}}
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
	bad, good := *p.Client(t, "leaf").TLS, *p.Client(t, "leaf").TLS
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
	poll.Until(t, 10*time.Second, "the revoked device's live connection to close", func() bool { return g.Live(serial) == 0 })
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
