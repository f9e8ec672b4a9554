package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// pinServer is an EST server whose TLS chain and /cacerts answer a test
// chooses, and which records every request it gets and whether it carried
// credentials.
type pinServer struct {
	srv *httptest.Server
	mu  sync.Mutex
	log []string
}

func (s *pinServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

// startPinServer serves chain (leaf first) as its TLS certificate with
// key, cacerts from /cacerts, and enrolls into p (leaf only) for the
// Basic credentials dev/pw.
func startPinServer(t *testing.T, p *testPKI, chain []*x509.Certificate, cacerts []*x509.Certificate) *pinServer {
	t.Helper()
	s := &pinServer{}
	mux := http.NewServeMux()
	record := func(r *http.Request) {
		_, _, auth := r.BasicAuth()
		line := r.Method + " " + r.URL.Path
		if auth {
			line += " +basic"
		}
		s.mu.Lock()
		s.log = append(s.log, line)
		s.mu.Unlock()
	}
	mux.HandleFunc("GET /.well-known/est/cacerts", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		if cacerts == nil {
			http.NotFound(w, r)
			return
		}
		der, _ := est.EncodeCertsOnly(cacerts)
		w.Header().Set("Content-Type", est.MediaPKCS7)
		w.Write(est.EncodeBase64(der))
	})
	mux.HandleFunc("POST /.well-known/est/simpleenroll", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		if u, pw, ok := r.BasicAuth(); !ok || u != "dev" || pw != "pw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="est"`)
			http.Error(w, "authentication failed", http.StatusUnauthorized)
			return
		}
		issueFor(t, p, w, r)
	})
	var raw [][]byte
	for _, c := range chain {
		raw = append(raw, c.Raw)
	}
	s.srv = httptest.NewUnstartedServer(mux)
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: raw, PrivateKey: p.server.PrivateKey}}, MinVersion: tls.VersionTLS12}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func leafOf(t *testing.T, p *testPKI) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(p.server.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPinWithLeafOnlyChain: RFC 7030 §4.1.1. A server that presents only
// its own certificate is authenticated through its /cacerts answer: the
// pinned CA must be among the certificates returned and the server's chain
// must verify to it. Servers that send the chain keep working without the
// extra request, and nothing carrying a credential reaches a server that
// is not authenticated.
func TestPinWithLeafOnlyChain(t *testing.T) {
	real := newPKI(t, "127.0.0.1")
	fake := newPKI(t, "127.0.0.1") // same subject names, other keys
	realLeaf, fakeLeaf := leafOf(t, real), leafOf(t, fake)
	cases := []struct {
		name     string
		pki      *testPKI
		chain    []*x509.Certificate
		cacerts  []*x509.Certificate
		pin      *x509.Certificate
		wantErr  string // "" means accepted
		provSeen bool   // the /cacerts answer was needed
	}{
		{name: "full chain, pin the root", pki: real, chain: []*x509.Certificate{realLeaf, real.inter, real.root}, cacerts: []*x509.Certificate{real.inter, real.root}, pin: real.root},
		{name: "full chain, no cacerts needed", pki: real, chain: []*x509.Certificate{realLeaf, real.inter, real.root}, cacerts: nil, pin: real.root},
		{name: "leaf and intermediate, pin the root", pki: real, chain: []*x509.Certificate{realLeaf, real.inter}, cacerts: []*x509.Certificate{real.inter, real.root}, pin: real.root, provSeen: true},
		{name: "leaf and root, no intermediate", pki: real, chain: []*x509.Certificate{realLeaf, real.root}, cacerts: []*x509.Certificate{real.inter, real.root}, pin: real.root, provSeen: true},
		{name: "leaf only, pin the root", pki: real, chain: []*x509.Certificate{realLeaf}, cacerts: []*x509.Certificate{real.inter, real.root}, pin: real.root, provSeen: true},
		{name: "leaf only, pin the intermediate", pki: real, chain: []*x509.Certificate{realLeaf}, cacerts: []*x509.Certificate{real.inter, real.root}, pin: real.inter, provSeen: true},
		{name: "leaf only, cacerts without the pin", pki: real, chain: []*x509.Certificate{realLeaf}, cacerts: []*x509.Certificate{real.inter}, pin: real.root, wantErr: "pin mismatch"},
		{name: "leaf only, no cacerts", pki: real, chain: []*x509.Certificate{realLeaf}, cacerts: nil, pin: real.root, wantErr: "404"},
		// A look-alike chain: the genuine root (it is public) in
		// /cacerts next to an intermediate of the same name that the
		// attacker made; the server's certificate is under the fake.
		{name: "look-alike intermediate under the real root's name", pki: fake, chain: []*x509.Certificate{fakeLeaf}, cacerts: []*x509.Certificate{fake.inter, real.root}, pin: real.root, wantErr: "does not verify"},
		{name: "look-alike chain presented in full", pki: fake, chain: []*x509.Certificate{fakeLeaf, fake.inter, fake.root}, cacerts: []*x509.Certificate{fake.inter, real.root}, pin: real.root, wantErr: "does not verify"},
		{name: "look-alike root only", pki: fake, chain: []*x509.Certificate{fakeLeaf}, cacerts: []*x509.Certificate{fake.inter, fake.root}, pin: real.root, wantErr: "pin mismatch"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := startPinServer(t, c.pki, c.chain, c.cacerts)
			ctx := context.Background()
			p, err := FetchPinnedCA(ctx, PinOptions{Server: s.srv.URL, Pin: token.PinOf(c.pin), Timeout: 5 * time.Second})
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, c.wantErr)
				}
				for _, r := range s.requests() {
					if r != "GET /.well-known/est/cacerts" {
						t.Fatalf("refused server got %q; want nothing but GET cacerts", r)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !p.Anchor.Equal(c.pin) {
				t.Fatalf("anchor %q, want the pinned %q", p.Anchor.Subject, c.pin.Subject)
			}
			if (p.CACerts != nil) != c.provSeen {
				t.Fatalf("CACerts = %d certificates, want the provisional fetch %v", len(p.CACerts), c.provSeen)
			}
			before := s.requests()
			roots := x509.NewCertPool()
			roots.AddCert(p.Anchor)
			cl, err := New(Options{Server: s.srv.URL, Roots: roots, Intermediates: p.CACerts, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.CloseIdleConnections()
			key := mustKey(t)
			csr, err := BuildCSR(key, "dev-1")
			if err != nil {
				t.Fatal(err)
			}
			certs, err := cl.SimpleEnroll(ctx, csr, "dev", "pw")
			if err != nil {
				t.Fatalf("enroll after the pin: %v", err)
			}
			if _, err := CheckIssued(certs, key.Public(), "dev-1", []*x509.Certificate{real.inter, real.root}, time.Now()); err != nil {
				t.Fatal(err)
			}
			for _, r := range before {
				if strings.Contains(r, "+basic") {
					t.Fatalf("credentials sent while authenticating the server: %v", before)
				}
			}
		})
	}
}

// TestClientNeedsIntermediatesForLeafOnly: with a server that presents
// only its leaf, the handshake verifies through Options.Intermediates,
// and only through CA certificates that chain to Roots.
func TestClientNeedsIntermediatesForLeafOnly(t *testing.T) {
	real := newPKI(t, "127.0.0.1")
	fake := newPKI(t, "127.0.0.1")
	s := startPinServer(t, real, []*x509.Certificate{leafOf(t, real)}, []*x509.Certificate{real.inter, real.root})
	roots := x509.NewCertPool()
	roots.AddCert(real.root)
	for _, c := range []struct {
		name  string
		inter []*x509.Certificate
		ok    bool
	}{
		{"none", nil, false},
		{"the issuing CA", []*x509.Certificate{real.inter}, true},
		{"a look-alike issuing CA", []*x509.Certificate{fake.inter}, false},
		{"a look-alike root", []*x509.Certificate{fake.root, fake.inter}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl, err := New(Options{Server: s.srv.URL, Roots: roots, Intermediates: c.inter, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.CloseIdleConnections()
			_, err = cl.CACerts(context.Background())
			if c.ok != (err == nil) {
				t.Fatalf("err = %v, want success %v", err, c.ok)
			}
			var uae x509.UnknownAuthorityError
			if !c.ok && !errors.As(err, &uae) {
				t.Fatalf("err = %v, want an unknown authority", err)
			}
		})
	}
}

// TestServerIntermediates: a server authenticated by a CA bundle that
// holds the root only, and which presents only its own certificate, is
// verified through its /cacerts; a look-alike is refused, with nothing but
// GET cacerts sent to it.
func TestServerIntermediates(t *testing.T) {
	real := newPKI(t, "127.0.0.1")
	fake := newPKI(t, "127.0.0.1")
	realLeaf, fakeLeaf := leafOf(t, real), leafOf(t, fake)
	cases := []struct {
		name     string
		pki      *testPKI
		chain    []*x509.Certificate
		cacerts  []*x509.Certificate
		wantErr  string
		wantInts int // certificates returned
	}{
		{name: "full chain", pki: real, chain: []*x509.Certificate{realLeaf, real.inter}, cacerts: []*x509.Certificate{real.inter, real.root}, wantInts: 0},
		{name: "leaf only", pki: real, chain: []*x509.Certificate{realLeaf}, cacerts: []*x509.Certificate{real.inter, real.root}, wantInts: 2},
		{name: "leaf only, no cacerts", pki: real, chain: []*x509.Certificate{realLeaf}, wantErr: "404"},
		{name: "look-alike, full chain", pki: fake, chain: []*x509.Certificate{fakeLeaf, fake.inter, fake.root}, cacerts: []*x509.Certificate{fake.inter, real.root}, wantErr: "does not verify to the CA bundle"},
		{name: "look-alike, leaf only", pki: fake, chain: []*x509.Certificate{fakeLeaf}, cacerts: []*x509.Certificate{fake.inter, real.inter, real.root}, wantErr: "does not verify to the CA bundle"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := startPinServer(t, c.pki, c.chain, c.cacerts)
			got, err := ServerIntermediates(context.Background(), PinOptions{Server: s.srv.URL, Timeout: 5 * time.Second}, real.pool())
			for _, r := range s.requests() {
				if r != "GET /.well-known/est/cacerts" {
					t.Fatalf("request %q before the server was authenticated", r)
				}
			}
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, c.wantErr)
				}
				return
			}
			if err != nil || len(got) != c.wantInts {
				t.Fatalf("got %d certificates, %v; want %d", len(got), err, c.wantInts)
			}
			cl, err := New(Options{Server: s.srv.URL, Roots: real.pool(), Intermediates: got, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.CloseIdleConnections()
			if _, err := cl.CACerts(context.Background()); err != nil {
				t.Fatalf("client after authentication: %v", err)
			}
		})
	}
	s := startPinServer(t, real, []*x509.Certificate{realLeaf}, []*x509.Certificate{real.inter, real.root})
	u := strings.Replace(s.srv.URL, "127.0.0.1", "localhost", 1)
	if _, err := ServerIntermediates(context.Background(), PinOptions{Server: u, Timeout: 5 * time.Second}, real.pool()); err == nil || !strings.Contains(err.Error(), "host name") {
		t.Fatalf("host name mismatch: %v", err)
	}
}
