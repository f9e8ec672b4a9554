package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// testClock is a settable clock: real time plus an offset.
type testClock struct{ off atomic.Int64 }

func (c *testClock) Now() time.Time            { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *testClock) Advance(d time.Duration)   { c.off.Add(int64(d)) }
func (c *testClock) Set(d time.Duration)       { c.off.Store(int64(d)) }
func (c *testClock) Offset() (d time.Duration) { return time.Duration(c.off.Load()) }

// testServer is a CA served over real TLS on 127.0.0.1:0.
type testServer struct {
	ca    *CA
	dir   string
	url   string
	roots *x509.CertPool
	clock *testClock
}

func newTestServer(t testing.TB, opts Options) *testServer {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(context.Background(), dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	return serveDir(t, dir, opts)
}

// serveDir opens the CA in dir and serves it until the test ends.
func serveDir(t testing.TB, dir string, opts Options) *testServer {
	t.Helper()
	ctx := context.Background()
	clk := &testClock{}
	if opts.Now == nil {
		opts.Now = clk.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if opts.CRLBaseURL == "" {
		opts.CRLBaseURL = "http://" + ln.Addr().String()
	}
	c, err := Open(ctx, dir, opts)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Serve(sctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		c.Close()
	})
	roots := x509.NewCertPool()
	roots.AddCert(c.Root())
	return &testServer{ca: c, dir: dir, url: "https://" + ln.Addr().String(), roots: roots, clock: clk}
}

// estClient is a minimal EST client for tests only: the agent's real client
// lives in package enroll.
type estClient struct {
	url  string
	http *http.Client
}

func (s *testServer) client(cert *tls.Certificate) *estClient {
	cfg := &tls.Config{RootCAs: s.roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		// Always send it, even when it is not from a CA the server asks
		// for: tests need to present foreign certificates.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return &estClient{url: s.url, http: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true},
	}}
}

type response struct {
	status int
	header http.Header
	body   string
}

func (e *estClient) do(t testing.TB, method, path, contentType string, body []byte, user, pass string) response {
	t.Helper()
	req, err := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := e.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func (e *estClient) enroll(t testing.TB, csr []byte, tok token.Token) response {
	t.Helper()
	return e.do(t, http.MethodPost, est.Path("", est.OpSimpleEnroll), est.MediaPKCS10, csr, tok.ID, tok.Secret)
}

func (e *estClient) reenroll(t testing.TB, csr []byte) response {
	t.Helper()
	return e.do(t, http.MethodPost, est.Path("", est.OpSimpleReenroll), est.MediaPKCS10, csr, "", "")
}

// certs decodes a successful enrollment response.
func (r response) certs(t testing.TB) []*x509.Certificate {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	der, err := est.DecodeBase64([]byte(r.body))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := est.DecodeCertsOnly(der)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrFor returns the base64 EST body of a CSR for cn signed by key, with
// optional SAN URIs.
func csrFor(t testing.TB, key crypto.Signer, cn string, uris ...string) []byte {
	t.Helper()
	return est.EncodeBase64(csrDER(t, key, cn, uris...))
}

func csrDER(t testing.TB, key crypto.Signer, cn string, uris ...string) []byte {
	t.Helper()
	return csrDERWith(t, key, pkix.Name{CommonName: cn}, uris...)
}

// csrWith is csrFor with a whole Subject; a SAN "dns:NAME" is a DNS name.
func csrWith(t testing.TB, key crypto.Signer, subject pkix.Name, sans ...string) []byte {
	t.Helper()
	return est.EncodeBase64(csrDERWith(t, key, subject, sans...))
}

func csrDERWith(t testing.TB, key crypto.Signer, subject pkix.Name, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: subject}
	for _, s := range uris {
		if dns, ok := strings.CutPrefix(s, "dns:"); ok {
			tmpl.DNSNames = append(tmpl.DNSNames, dns)
			continue
		}
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (s *testServer) token(t testing.TB, o TokenOptions) token.Token {
	t.Helper()
	if o.URL == "" {
		o.URL = s.url
	}
	tok, _, err := s.ca.CreateToken(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// enrolled enrolls a new device and returns its TLS identity.
func (s *testServer) enrolled(t testing.TB, id string) (*tls.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	tok := s.token(t, TokenOptions{Device: id})
	certs := s.client(nil).enroll(t, csrFor(t, key, id), tok).certs(t)
	return tlsCert(certs, key), key
}

func tlsCert(chain []*x509.Certificate, key crypto.Signer) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// errCode parses the stable code of an error body.
func errCode(body string) est.Code {
	c, _ := est.ParseErrorBody(body)
	return c
}

// state is what bad input must not change.
type state struct {
	tokens  []store.Token
	devices []store.Device
}

func (s *testServer) state(t testing.TB) state {
	t.Helper()
	ctx := context.Background()
	toks, err := s.ca.Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	devs, err := s.ca.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return state{toks, devs}
}

func (s *testServer) auditLen(t testing.TB) int {
	t.Helper()
	recs, err := s.ca.Audit(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

func (s *testServer) lastAudit(t testing.TB) store.AuditRecord {
	t.Helper()
	recs, err := s.ca.Audit(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 {
		t.Fatal("audit log is empty")
	}
	return recs[0]
}

func mustContain(t testing.TB, what, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Fatalf("%s %q does not contain %q", what, s, sub)
	}
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }
