package enroll

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// testPKI is a root, an intermediate and a server certificate: a CA that
// is not edgeca, so the client is tested against another implementation.
type testPKI struct {
	root, inter     *x509.Certificate
	rootCA, interCA *testpki.CA
	server          tls.Certificate // leaf, intermediate, root
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// issue certifies pub under ca as the leaf l.
func issue(t testing.TB, ca *testpki.CA, l testpki.Leaf, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	l.PublicKey = pub
	return ca.Issue(t, l).Cert
}

// newPKI's CAs, and so every certificate they issue by default, are valid
// for an hour either side of now.
func newPKI(t testing.TB, serverNames ...string) *testPKI {
	now := time.Now()
	p := &testPKI{rootCA: testpki.NewWith(t, "other root", testpki.CAOptions{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)})}
	p.interCA = p.rootCA.Intermediate(t, "other issuing")
	p.root, p.inter = p.rootCA.Cert, p.interCA.Cert
	l := testpki.Leaf{CN: "est server", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, n := range serverNames {
		if ip := net.ParseIP(n); ip != nil {
			l.IPs = append(l.IPs, ip)
		} else {
			l.DNSNames = append(l.DNSNames, n)
		}
	}
	srv := p.interCA.Issue(t, l)
	p.server = tls.Certificate{Certificate: append(srv.TLS.Certificate, p.root.Raw), PrivateKey: srv.TLS.PrivateKey}
	return p
}

func (p *testPKI) pool() *x509.CertPool { return p.rootCA.Pool() }

// estServer is a minimal EST server with behaviour edgeca does not have:
// it returns the leaf only, wraps base64 with LF, omits the transfer
// encoding header and answers errors in plain text.
type estServer struct {
	pki       *testPKI
	srv       *httptest.Server
	deferrals atomic.Int32 // answer 202 this many times first
	status    atomic.Int32 // if set, answer this status with a plain body
	ctype     atomic.Value // response content type override
}

func newESTServer(t *testing.T) *estServer {
	t.Helper()
	s := &estServer{pki: newPKI(t, "127.0.0.1")}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/est/cacerts", func(w http.ResponseWriter, r *http.Request) {
		der, _ := est.EncodeCertsOnly([]*x509.Certificate{s.pki.root, s.pki.inter})
		s.writeCerts(w, der)
	})
	mux.HandleFunc("POST /.well-known/est/simpleenroll", func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "dev-user" || p != "dev-password-0123456789" {
			http.Error(w, "authentication failed", http.StatusUnauthorized)
			return
		}
		s.enroll(w, r)
	})
	mux.HandleFunc("POST /.well-known/est/simplereenroll", func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "client certificate required", http.StatusUnauthorized)
			return
		}
		s.enroll(w, r)
	})
	mux.HandleFunc("GET /.well-known/est/csrattrs", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	s.srv = httptest.NewUnstartedServer(mux)
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of some tests
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{s.pki.server}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *estServer) writeCerts(w http.ResponseWriter, der []byte) {
	ct := "application/pkcs7-mime; smime-type=certs-only"
	if v, ok := s.ctype.Load().(string); ok {
		ct = v
	}
	w.Header().Set("Content-Type", ct)
	enc := base64.StdEncoding.EncodeToString(der)
	var b strings.Builder
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\n")
	io.WriteString(w, b.String())
}

func (s *estServer) enroll(w http.ResponseWriter, r *http.Request) {
	if s.deferrals.Load() > 0 {
		s.deferrals.Add(-1)
		w.Header().Set("Retry-After", time.Now().Add(-time.Minute).UTC().Format(http.TimeFormat))
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if st := s.status.Load(); st != 0 {
		http.Error(w, "server says no", int(st))
		return
	}
	body, _ := io.ReadAll(r.Body)
	der, err := est.DecodeBase64(body)
	if err != nil {
		http.Error(w, "bad base64", http.StatusBadRequest)
		return
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil || csr.CheckSignature() != nil {
		http.Error(w, "bad csr", http.StatusBadRequest)
		return
	}
	leaf, err := s.pki.interCA.Sign(testpki.Leaf{Subject: csr.Subject, URIs: csr.URIs, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, PublicKey: csr.PublicKey})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	out, _ := est.EncodeCertsOnly([]*x509.Certificate{leaf})
	s.writeCerts(w, out)
}

func (s *estServer) url() string { return s.srv.URL }

func TestFetchPinnedRoots(t *testing.T) {
	s := newESTServer(t)
	ctx := context.Background()
	pool, err := FetchPinnedRoots(ctx, s.url(), token.PinOf(s.pki.root), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !pool.Equal(s.pki.pool()) {
		t.Fatal("pool is not the pinned root")
	}
	// No clock given means time.Now, not a panic.
	if got, err := FetchPinnedAt(ctx, s.url(), token.PinOf(s.pki.root), 5*time.Second, nil); err != nil || !got.Equal(s.pki.root) {
		t.Fatalf("FetchPinnedAt with a nil clock: %v", err)
	}
	// The intermediate is a CA in the chain too: pinning it works.
	if _, err := FetchPinnedRoots(ctx, s.url(), token.PinOf(s.pki.inter), 5*time.Second); err != nil {
		t.Fatalf("pin of the intermediate: %v", err)
	}

	other := newPKI(t, "127.0.0.1")
	_, err = FetchPinnedRoots(ctx, s.url(), token.PinOf(other.root), 5*time.Second)
	if !errors.Is(err, ErrPinMismatch) || !strings.Contains(err.Error(), token.PinOf(s.pki.root).String()) {
		t.Fatalf("wrong pin: %v", err)
	}
	leaf, _ := x509.ParseCertificate(s.pki.server.Certificate[0])
	if _, err := FetchPinnedRoots(ctx, s.url(), token.PinOf(leaf), 5*time.Second); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("pin of the leaf: %v", err)
	}
	// Right pin, wrong host name: "localhost" is not in the server cert.
	u := strings.Replace(s.url(), "127.0.0.1", "localhost", 1)
	if _, err := FetchPinnedRoots(ctx, u, token.PinOf(s.pki.root), 5*time.Second); err == nil || !strings.Contains(err.Error(), "host name") {
		t.Fatalf("host name mismatch: %v", err)
	}
	if _, err := FetchPinnedRoots(ctx, "http://127.0.0.1:1", token.PinOf(s.pki.root), time.Second); err == nil {
		t.Fatal("http URL accepted")
	}
}

func newClient(t *testing.T, s *estServer, cert func() *tls.Certificate) *Client {
	t.Helper()
	c, err := New(Options{Server: s.url(), Roots: s.pki.pool(), Certificate: cert, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestEnrollAgainstAnotherESTServer(t *testing.T) {
	s := newESTServer(t)
	ctx := context.Background()
	c := newClient(t, s, nil)
	bundle, err := c.CACerts(ctx)
	if err != nil || len(bundle) != 2 {
		t.Fatalf("cacerts: %d %v", len(bundle), err)
	}
	key := mustKey(t)
	csr, err := BuildCSR(key, "dev-7")
	if err != nil {
		t.Fatal(err)
	}
	s.deferrals.Store(2) // two 202 answers before the certificate
	start := time.Now()
	certs, err := c.SimpleEnroll(ctx, csr, "dev-user", "dev-password-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	// Their Retry-After is a date in the past: each still waits the
	// one-second floor, not a busy loop.
	if d := time.Since(start); d < 2*minDeferralWait {
		t.Fatalf("two deferrals with a past Retry-After took %v, want at least %v", d, 2*minDeferralWait)
	}
	chain, err := CheckIssued(certs, key.Public(), "dev-7", bundle, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// The server sent the leaf only; the chain gets the intermediate from
	// the CA bundle.
	if len(chain) != 2 || !chain[1].Equal(s.pki.inter) {
		t.Fatalf("chain has %d certs", len(chain))
	}
	if got := chain[0].URIs; len(got) != 1 || got[0].String() != "urn:edgeagent:device:dev-7" {
		t.Fatalf("URIs %v", got)
	}

	// Reenroll over mutual TLS with what we got.
	tc := &tls.Certificate{PrivateKey: key, Certificate: [][]byte{chain[0].Raw, chain[1].Raw}}
	rc := newClient(t, s, func() *tls.Certificate { return tc })
	if _, err := rc.SimpleReenroll(ctx, csr); err != nil {
		t.Fatal(err)
	}
	// Without a certificate the same server refuses.
	if _, err := c.SimpleReenroll(ctx, csr); err == nil {
		t.Fatal("reenroll without a certificate succeeded")
	}
	attrs, err := c.CSRAttrs(ctx)
	if err != nil || !attrs.Empty() {
		t.Fatalf("csrattrs: %+v %v", attrs, err)
	}
}

func TestClientErrors(t *testing.T) {
	s := newESTServer(t)
	ctx := context.Background()
	c := newClient(t, s, nil)
	csr, _ := BuildCSR(mustKey(t), "dev-7")

	_, err := c.SimpleEnroll(ctx, csr, "dev-user", "wrong-password-0123456789")
	var se *ServerError
	if !errors.As(err, &se) || se.Status != 401 || !IsTokenRejected(err) || Retryable(err) {
		t.Fatalf("bad password: %v", err)
	}
	if !strings.Contains(err.Error(), "POST simpleenroll: 401 credentials rejected: authentication failed") {
		t.Fatalf("message: %v", err)
	}

	s.status.Store(503)
	if _, err := c.SimpleEnroll(ctx, csr, "dev-user", "dev-password-0123456789"); !Retryable(err) {
		t.Fatalf("503 not retryable: %v", err)
	}
	s.status.Store(0)

	s.ctype.Store("text/html")
	if _, err := c.CACerts(ctx); !errors.Is(err, ErrResponse) || !strings.Contains(err.Error(), "text/html") {
		t.Fatalf("wrong content type: %v", err)
	}
	s.ctype.Store("application/pkcs7-mime")

	if _, err := c.SimpleEnroll(ctx, csr, "a:b", "x"); err == nil {
		t.Fatal("':' in a Basic user name accepted")
	}
	if _, err := New(Options{Server: s.url()}); err == nil {
		t.Fatal("client without trust anchors")
	}
	// An untrusted server is refused with advice.
	other := newPKI(t)
	oc, _ := New(Options{Server: s.url(), Roots: other.pool(), Timeout: 5 * time.Second})
	if _, err := oc.CACerts(ctx); err == nil || !strings.Contains(err.Error(), "CA pin or bundle") {
		t.Fatalf("untrusted server: %v", err)
	}
}

func TestCheckIssuedRejects(t *testing.T) {
	p := newPKI(t)
	key, other := mustKey(t), mustKey(t)
	leaf := issue(t, p.interCA, testpki.Leaf{CN: "dev-1", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, &key.PublicKey)
	bundle := []*x509.Certificate{p.root, p.inter}
	if _, err := CheckIssued([]*x509.Certificate{leaf}, other.Public(), "dev-1", bundle, time.Now()); !errors.Is(err, ErrResponse) {
		t.Fatalf("other key: %v", err)
	}
	if _, err := CheckIssued([]*x509.Certificate{leaf}, key.Public(), "dev-2", bundle, time.Now()); !errors.Is(err, ErrResponse) {
		t.Fatalf("other device: %v", err)
	}
	if _, err := CheckIssued([]*x509.Certificate{leaf}, key.Public(), "dev-1", []*x509.Certificate{newPKI(t).root}, time.Now()); !errors.Is(err, ErrResponse) {
		t.Fatalf("other CA: %v", err)
	}
	if _, err := CheckIssued(nil, key.Public(), "dev-1", bundle, time.Now()); !errors.Is(err, ErrResponse) {
		t.Fatalf("nothing issued: %v", err)
	}
	if _, err := BuildCSR(key, "bad id"); err == nil {
		t.Fatal("bad device id accepted")
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"120", 2 * time.Minute, false},
		{" 0 ", 0, false},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, false},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, false},
		{"", 0, true},
		{"-5", 0, true},
		{"soon", 0, true},
		{"99999999999", 0, true},
	}
	for _, c := range cases {
		got, err := ParseRetryAfter(c.in, now)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("%q: %v %v", c.in, got, err)
		}
	}
}

func TestDeferralWait(t *testing.T) {
	const max = 10 * time.Minute
	cases := []struct {
		name       string
		retryAfter time.Duration
		max        time.Duration
		r          float64
		want       time.Duration
	}{
		{"zero is floored to a second", 0, max, 0, time.Second},
		{"floor gets jitter too", 0, max, 0.999999, 1249999 * time.Microsecond},
		{"as asked, at least", 2 * time.Minute, max, 0, 2 * time.Minute},
		{"up to a quarter more", 2 * time.Minute, max, 0.5, 135 * time.Second},
		{"jitter stays under the cap", 9*time.Minute + 30*time.Second, max, 0.9, 9*time.Minute + 57*time.Second},
		{"under the cap is never cut", 9*time.Minute + 30*time.Second, max, 0.999999, 10 * time.Minute},
		{"at the cap: spread below it", max, max, 0.5, 9*time.Minute + 22500*time.Millisecond},
		{"over the cap: at most the cap", time.Hour, max, 0, max},
		{"over the cap: spread below it", time.Hour, max, 0.999999, 525000075 * time.Microsecond},
		{"cap under the floor", 0, time.Millisecond, 0, time.Millisecond},
	}
	for _, c := range cases {
		got := DeferralWait(c.retryAfter, c.max, c.r)
		if got.Round(time.Millisecond) != c.want.Round(time.Millisecond) {
			t.Errorf("%s: DeferralWait(%v, %v, %v) = %v, want %v", c.name, c.retryAfter, c.max, c.r, got, c.want)
		}
		if got > c.max || got <= 0 {
			t.Errorf("%s: %v outside (0, %v]", c.name, got, c.max)
		}
		if c.retryAfter < c.max && got < c.retryAfter {
			t.Errorf("%s: %v is less than the %v asked for", c.name, got, c.retryAfter)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	f.Add("120")
	f.Add("Sun, 22 Nov 2026 12:00:00 GMT")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseRetryAfter(s, time.Unix(1e9, 0))
		if err == nil && d < 0 {
			t.Fatalf("negative wait %v", d)
		}
	})
}

func FuzzDecodeBody(f *testing.F) {
	f.Add([]byte("MIIB"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		der, err := decodeBody(b)
		if err != nil {
			return
		}
		_, _ = est.DecodeCertsOnly(der)
	})
}
