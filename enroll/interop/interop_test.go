package interop

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/globalsign/est"
)

// agentBin is the edgeagent binary, built once from the parent module.
var agentBin string

func TestMain(m *testing.M) {
	// A prebuilt binary may be given (to try another version against the
	// same server); otherwise the parent module's is built.
	if agentBin = os.Getenv("EDGEAGENT_INTEROP_BIN"); agentBin != "" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "edgeagent-interop-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "edgeagent")
	build := exec.Command("go", "build", "-o", agentBin, "./cmd/edgeagent")
	build.Dir = filepath.Join("..", "..")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build edgeagent: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// caError is an error the GlobalSign server turns into an HTTP status.
type caError struct {
	status int
	msg    string
}

func (e caError) StatusCode() int { return e.status }
func (e caError) Error() string   { return e.msg }
func (e caError) RetryAfter() int { return 0 }

// testCA implements est.CA with Go's x509: a root, an issuing CA under
// it, and policies a test turns on.
type testCA struct {
	root, inter       *x509.Certificate
	rootKey, interKey *ecdsa.PrivateKey

	mu sync.Mutex
	// rewrite makes enrollment issue a subject and SAN of the CA's own
	// choosing: O= and OU= added, the device's SAN URI replaced by a DNS
	// name.
	rewrite bool
	// capAt, when set, caps NotAfter (a CA that caps at its own expiry).
	capAt time.Time
	// backdate is how far NotBefore is put before now (default a minute).
	backdate time.Duration
	attrs    est.CSRAttrs
	issued   []*x509.Certificate
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func signCert(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	c, err := sign(tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func newTestCA(t *testing.T) *testCA {
	ca := &testCA{rootKey: newKey(t), interKey: newKey(t)}
	now := time.Now()
	ca.root = signCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "Interop Root CA", Organization: []string{"GlobalSign interop test"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, nil, &ca.rootKey.PublicKey, ca.rootKey)
	ca.inter = signCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "Interop Issuing CA", Organization: []string{"GlobalSign interop test"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, ca.root, &ca.interKey.PublicKey, ca.rootKey)
	return ca
}

func (ca *testCA) set(f func(*testCA)) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	f(ca)
}

func (ca *testCA) CACerts(context.Context, string, *http.Request) ([]*x509.Certificate, error) {
	return []*x509.Certificate{ca.inter, ca.root}, nil
}

func (ca *testCA) CSRAttrs(context.Context, string, *http.Request) (est.CSRAttrs, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.attrs, nil
}

func (ca *testCA) Enroll(_ context.Context, csr *x509.CertificateRequest, _ string, _ *http.Request) (*x509.Certificate, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	tmpl := &x509.Certificate{Subject: csr.Subject, URIs: csr.URIs, DNSNames: csr.DNSNames}
	if ca.rewrite {
		tmpl.Subject = pkix.Name{CommonName: csr.Subject.CommonName, Organization: []string{"Interop Fleet"}, OrganizationalUnit: []string{"edge"}}
		tmpl.URIs, tmpl.DNSNames = nil, []string{csr.Subject.CommonName + ".devices.example"}
	}
	return ca.issue(tmpl, csr)
}

// Reenroll issues what the certificate being renewed names: the router
// has checked that the CSR's Subject and SubjectAltName are identical to
// it (RFC 7030 §4.2.2).
func (ca *testCA) Reenroll(_ context.Context, cert *x509.Certificate, csr *x509.CertificateRequest, _ string, _ *http.Request) (*x509.Certificate, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	tmpl := &x509.Certificate{RawSubject: cert.RawSubject}
	for _, e := range cert.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) {
			tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, e)
		}
	}
	return ca.issue(tmpl, csr)
}

func (ca *testCA) issue(tmpl *x509.Certificate, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	if err := csr.CheckSignature(); err != nil {
		return nil, caError{http.StatusBadRequest, "CSR signature: " + err.Error()}
	}
	now := time.Now()
	backdate := ca.backdate
	if backdate == 0 {
		backdate = time.Minute
	}
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-backdate), now.Add(time.Hour)
	if !ca.capAt.IsZero() && tmpl.NotAfter.After(ca.capAt) {
		tmpl.NotAfter = ca.capAt
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	c, err := sign(tmpl, ca.inter, csr.PublicKey, ca.interKey)
	if err != nil {
		return nil, caError{http.StatusBadRequest, "issue: " + err.Error()}
	}
	ca.issued = append(ca.issued, c)
	return c, nil
}

func (ca *testCA) ServerKeyGen(context.Context, *x509.CertificateRequest, string, *http.Request) (*x509.Certificate, []byte, error) {
	return nil, nil, caError{http.StatusNotImplemented, "serverkeygen is not offered"}
}

func (ca *testCA) TPMEnroll(context.Context, *x509.CertificateRequest, []*x509.Certificate, []byte, []byte, string, *http.Request) ([]byte, []byte, []byte, error) {
	return nil, nil, nil, caError{http.StatusNotImplemented, "tpmenroll is not offered"}
}

// The enrollment credentials the server accepts.
const (
	user     = "dev-1-user"
	password = "interop-password-0123456789"
)

type serverOptions struct {
	// leafOnly: the TLS chain holds the server's own certificate only.
	leafOnly bool
	// basicOnReenroll: simplereenroll wants HTTP Basic as well as the
	// client certificate.
	basicOnReenroll bool
}

// server is the GlobalSign EST router over TLS on 127.0.0.1, with a log
// of what each request carried.
type server struct {
	url string
	mu  sync.Mutex
	log []string
}

func (s *server) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

func startServer(t *testing.T, ca *testCA, o serverOptions) *server {
	t.Helper()
	s := &server{}
	router, err := est.NewRouter(&est.ServerConfig{
		CA:      ca,
		Timeout: 20 * time.Second,
		CheckBasicAuth: func(_ context.Context, r *http.Request, _, u, p string) error {
			if strings.HasSuffix(r.URL.Path, "/simplereenroll") && !o.basicOnReenroll {
				return nil
			}
			if u == user && p == password {
				return nil
			}
			return errors.New("bad credentials")
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		line := r.Method + " " + strings.TrimPrefix(r.URL.Path, "/.well-known/est/")
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			line += " cert"
		}
		if _, _, ok := r.BasicAuth(); ok {
			line += " basic"
		}
		s.mu.Lock()
		s.log = append(s.log, line)
		s.mu.Unlock()
		router.ServeHTTP(w, r)
	})
	sk := newKey(t)
	now := time.Now()
	leaf := signCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "interop EST server"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca.inter, &sk.PublicKey, ca.interKey)
	chain := [][]byte{leaf.Raw}
	if !o.leafOnly {
		chain = append(chain, ca.inter.Raw, ca.root.Raw)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           handler,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{{Certificate: chain, PrivateKey: sk}}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	s.url = "https://" + ln.Addr().String()
	return s
}

func pinOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// edgeagent runs the binary and returns stdout, stderr and its error.
func edgeagent(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, agentBin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func mustEdgeagent(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := edgeagent(t, args...)
	if err != nil {
		t.Fatalf("edgeagent %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func readPEM(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no certificates", path)
	}
	return out
}

func writePEM(t *testing.T, path string, certs ...*x509.Certificate) {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// opensslVerify checks a state directory with openssl, an independent
// verifier: cert.pem's leaf, through its intermediates, to ca.pem, for
// TLS client use.
func opensslVerify(t *testing.T, state string) {
	t.Helper()
	chain := readPEM(t, filepath.Join(state, "cert.pem"))
	work := t.TempDir()
	leaf, untrusted := filepath.Join(work, "leaf.pem"), filepath.Join(work, "untrusted.pem")
	writePEM(t, leaf, chain[0])
	args := []string{"verify", "-purpose", "sslclient", "-CAfile", filepath.Join(state, "ca.pem")}
	if len(chain) > 1 {
		writePEM(t, untrusted, chain[1:]...)
		args = append(args, "-untrusted", untrusted)
	}
	out, err := exec.Command("openssl", append(args, leaf)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), leaf+": OK") {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func leafOf(t *testing.T, state string) *x509.Certificate {
	t.Helper()
	return readPEM(t, filepath.Join(state, "cert.pem"))[0]
}

func sanOf(c *x509.Certificate) []byte {
	for _, e := range c.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) {
			return e.Value
		}
	}
	return nil
}

func samePublic(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func rsaBits(pub crypto.PublicKey) int {
	if k, ok := pub.(*rsa.PublicKey); ok {
		return k.N.BitLen()
	}
	return 0
}

func requireOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl not installed: make test installs it (scripts/test-deps.sh)")
	}
}

// TestEdgeagentAgainstGlobalSignEST: the edgeagent binary enrolls, renews
// and rekeys against GlobalSign's EST server, an implementation this
// project did not write, which holds clients to RFC 7030: the reenroll CSR
// must carry the Subject and SubjectAltName of the certificate being
// renewed, the enrollment answer is the leaf alone, and the TLS chain may
// be the server's certificate alone. openssl verifies every result.
func TestEdgeagentAgainstGlobalSignEST(t *testing.T) {
	requireOpenSSL(t)
	rsa3072, err := asn1.Marshal(3072)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		srv  serverOptions
		// rewrite: the CA puts its own subject and SAN in the certificate.
		rewrite bool
		attrs   est.CSRAttrs
		// wantRSA is the RSA key size csrattrs asked for (0: ECDSA P-256,
		// the agent's default).
		wantRSA int
		// bundle: the server is authenticated by a CA bundle of the root
		// alone (--ca-bundle), not by a pin.
		bundle bool
	}{
		{name: "full TLS chain", srv: serverOptions{}},
		{name: "leaf-only TLS chain, pin of the root", srv: serverOptions{leafOnly: true}},
		{name: "leaf-only TLS chain, CA bundle of the root", srv: serverOptions{leafOnly: true}, bundle: true},
		{name: "Basic required on reenroll", srv: serverOptions{leafOnly: true, basicOnReenroll: true}},
		{name: "CA rewrites the subject", srv: serverOptions{leafOnly: true}, rewrite: true},
		{name: "csrattrs asks for RSA-3072", srv: serverOptions{leafOnly: true},
			attrs:   est.CSRAttrs{Attributes: []est.Attribute{{Type: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}, Values: est.AttributeValueSET{asn1.RawValue{FullBytes: rsa3072}}}}},
			wantRSA: 3072},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ca := newTestCA(t)
			ca.set(func(ca *testCA) { ca.rewrite, ca.attrs = c.rewrite, c.attrs })
			s := startServer(t, ca, c.srv)
			dir := t.TempDir()
			state := filepath.Join(dir, "state")
			pw := filepath.Join(dir, "password")
			if err := os.WriteFile(pw, []byte(password+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}

			trust := []string{"--ca-pin", pinOf(ca.root)}
			if c.bundle {
				bundle := filepath.Join(dir, "root.pem")
				writePEM(t, bundle, ca.root)
				trust = []string{"--ca-bundle", bundle}
			}
			out := mustEdgeagent(t, append([]string{"enroll", "--state-dir", state, "--device-id", "dev-1", "--server", s.url,
				"--username", user, "--password-file", pw, "--timeout", "20s"}, trust...)...)
			if !strings.Contains(out, "enrolled device dev-1") {
				t.Fatalf("enroll said %q", out)
			}
			opensslVerify(t, state)
			first := leafOf(t, state)
			if c.rewrite && (len(first.Subject.Organization) != 1 || first.Subject.Organization[0] != "Interop Fleet" || len(first.URIs) != 0) {
				t.Fatalf("the CA's subject was not what it issued: %s, URIs %v", first.Subject, first.URIs)
			}
			if got := rsaBits(first.PublicKey); got != c.wantRSA {
				t.Fatalf("enrolled with an RSA key of %d bits, want %d (csrattrs)", got, c.wantRSA)
			}
			// Credentials go out once the server is authenticated, in the
			// enrollment request and nowhere else.
			for _, r := range s.requests() {
				if strings.HasSuffix(r, " basic") && !strings.HasPrefix(r, "POST simpleenroll") {
					t.Fatalf("credentials in %q; requests: %q", r, s.requests())
				}
			}

			var creds []string
			if c.srv.basicOnReenroll {
				before, _ := os.ReadFile(filepath.Join(state, "cert.pem"))
				_, errOut, err := edgeagent(t, "renew", "--state-dir", state, "--timeout", "20s")
				if err == nil || !strings.Contains(errOut, "wants HTTP Basic") {
					t.Fatalf("renew without the credentials a server wants: %v\n%s", err, errOut)
				}
				if after, _ := os.ReadFile(filepath.Join(state, "cert.pem")); !bytes.Equal(before, after) {
					t.Fatal("a refused renewal changed cert.pem")
				}
				creds = []string{"--username", user, "--password-file", pw}
			}

			prev := first
			for _, rekey := range []bool{false, true} {
				args := append([]string{"renew", "--state-dir", state, "--timeout", "20s"}, creds...)
				if rekey {
					args = append(args, "--rekey")
				}
				n := len(s.requests())
				out := mustEdgeagent(t, args...)
				if !strings.Contains(out, "renewed device dev-1") {
					t.Fatalf("renew said %q", out)
				}
				opensslVerify(t, state)
				got := leafOf(t, state)
				if got.SerialNumber.Cmp(prev.SerialNumber) == 0 {
					t.Fatal("renewal kept the old certificate")
				}
				if !bytes.Equal(got.RawSubject, first.RawSubject) || !bytes.Equal(sanOf(got), sanOf(first)) {
					t.Fatalf("renewal changed the subject: %s, want %s", got.Subject, first.Subject)
				}
				if samePublic(got.PublicKey, prev.PublicKey) == rekey {
					t.Fatalf("rekey %v: the key changed %v", rekey, !rekey)
				}
				if got := rsaBits(got.PublicKey); got != c.wantRSA {
					t.Fatalf("renewed with an RSA key of %d bits, want %d", got, c.wantRSA)
				}
				// Basic only after the server's 401, never unasked.
				var reenrolls []string
				for _, r := range s.requests()[n:] {
					if strings.HasPrefix(r, "POST simplereenroll") {
						reenrolls = append(reenrolls, r)
					}
				}
				want := []string{"POST simplereenroll cert"}
				if c.srv.basicOnReenroll {
					want = append(want, "POST simplereenroll cert basic")
				}
				if strings.Join(reenrolls, "; ") != strings.Join(want, "; ") {
					t.Fatalf("reenroll requests %q, want %q", reenrolls, want)
				}
				prev = got
			}
		})
	}
}

func enrollDev1(t *testing.T, ca *testCA, s *server, dir string) (state string) {
	t.Helper()
	state = filepath.Join(dir, "state")
	pw := filepath.Join(dir, "password")
	if err := os.WriteFile(pw, []byte(password), 0o600); err != nil {
		t.Fatal(err)
	}
	mustEdgeagent(t, "enroll", "--state-dir", state, "--device-id", "dev-1", "--server", s.url,
		"--ca-pin", pinOf(ca.root), "--username", user, "--password-file", pw, "--timeout", "20s")
	return state
}

// TestRenewalCappedByCA: a CA that caps what it issues at its own expiry
// answers a renewal with a certificate that expires no later than the
// current one. edgeagent keeps it (it is valid), says so, and openssl
// still verifies the state.
func TestRenewalCappedByCA(t *testing.T) {
	requireOpenSSL(t)
	ca := newTestCA(t)
	s := startServer(t, ca, serverOptions{leafOnly: true})
	ca.set(func(ca *testCA) { ca.backdate = 2 * time.Minute })
	state := enrollDev1(t, ca, s, t.TempDir())
	first := leafOf(t, state)
	// Issued later (a NotBefore a minute later), expiring at the same time.
	ca.set(func(ca *testCA) { ca.capAt, ca.backdate = first.NotAfter, time.Minute })
	out, errOut, err := edgeagent(t, "renew", "--state-dir", state, "--timeout", "20s")
	if err != nil || !strings.Contains(out, "renewed device dev-1") || !strings.Contains(errOut, "did not extend the certificate") {
		t.Fatalf("renew with a capping CA: %v\n%s%s", err, out, errOut)
	}
	got := leafOf(t, state)
	if got.SerialNumber.Cmp(first.SerialNumber) == 0 || !got.NotAfter.Equal(first.NotAfter) {
		t.Fatalf("renewed certificate: serial %v NotAfter %v (first %v)", got.SerialNumber, got.NotAfter, first.NotAfter)
	}
	opensslVerify(t, state)
}

// agentStatus is what this test reads of `edgeagent status --json`.
type agentStatus struct {
	Now         time.Time `json:"now"`
	NotAfter    time.Time `json:"not_after"`
	NextRenewal time.Time `json:"next_renewal"`
	LastRenewal struct {
		Result string            `json:"result"`
		Error  string            `json:"error"`
		Counts map[string]uint64 `json:"counts"`
	} `json:"last_renewal"`
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not a wait for the condition
	}
}

// TestDaemonBacksOffWhenTheCACaps: the running agent renews against a CA
// that caps at its own expiry, close enough that the new certificate's
// renewal time has already passed when it arrives. The agent keeps the
// certificate, reports "not_extended" in status and in
// edgeagent_renewals_total, and schedules the next attempt a backoff away
// instead of renewing again at once, over and over.
func TestDaemonBacksOffWhenTheCACaps(t *testing.T) {
	ca := newTestCA(t)
	// The server wants HTTP Basic on reenroll too: the service answers
	// its 401 with enroll.username and enroll.password_file.
	s := startServer(t, ca, serverOptions{leafOnly: true, basicOnReenroll: true})
	dir := t.TempDir()
	state := enrollDev1(t, ca, s, dir)
	// Backdated by an hour and capped 20 minutes ahead: the renewal point
	// (2/3 of the lifetime) is in the past the moment it is issued.
	ca.set(func(ca *testCA) { ca.capAt, ca.backdate = time.Now().Add(20*time.Minute), time.Hour })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	sock := filepath.Join(dir, "api.sock")
	cfg := filepath.Join(dir, "agent.yaml")
	yaml := fmt.Sprintf("device_id: dev-1\nstate_dir: %s\nenroll:\n  username: %s\n  password_file: %s\napi:\n  socket: %s\nmetrics:\n  listen: %s\ncollector:\n  interval: 0s\nrenew:\n  retry_min: 10s\n  retry_max: 30m\n",
		state, user, filepath.Join(dir, "password"), sock, metricsAddr)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	ctx, cancel := context.WithCancel(context.Background())
	run := exec.CommandContext(ctx, agentBin, "run", "--config", cfg)
	run.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	run.Stdout, run.Stderr = logf, logf
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = run.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("agent log:\n%s", b)
		}
	}()
	api := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 30 * time.Second}
	status := func() (agentStatus, error) {
		var st agentStatus
		resp, err := api.Get("http://agent/v1/status")
		if err != nil {
			return st, err
		}
		defer resp.Body.Close()
		return st, json.NewDecoder(resp.Body).Decode(&st)
	}
	eventually(t, "the agent's API", func() bool { _, err := status(); return err == nil })

	resp, err := api.Post("http://agent/v1/renew", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "did not extend") {
		t.Fatalf("renew on demand: %d %s", resp.StatusCode, body)
	}
	st, err := status()
	if err != nil {
		t.Fatal(err)
	}
	if st.LastRenewal.Result != "not_extended" || st.LastRenewal.Counts["not_extended"] != 1 || !strings.Contains(st.LastRenewal.Error, "did not extend") {
		t.Fatalf("status after a capped renewal: %+v", st.LastRenewal)
	}
	capAt := leafOf(t, state).NotAfter
	if !st.NotAfter.Equal(capAt) {
		t.Fatalf("status NotAfter %v, want the capped certificate's %v", st.NotAfter, capAt)
	}
	// The next attempt is a backoff away (at least half of retry_max,
	// capped at a second before expiry), not the renewal point that has
	// passed already.
	if wait := st.NextRenewal.Sub(st.Now); wait < 10*time.Minute {
		t.Fatalf("next renewal in %v: the agent would renew again at once", wait)
	}
	var reenrolls []string
	for _, r := range s.requests() {
		if strings.HasPrefix(r, "POST simplereenroll") {
			reenrolls = append(reenrolls, r)
		}
	}
	if want := "POST simplereenroll cert; POST simplereenroll cert basic"; strings.Join(reenrolls, "; ") != want {
		t.Fatalf("reenroll requests %q, want one renewal, with Basic after the 401: %s", reenrolls, want)
	}
	mresp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if !strings.Contains(string(metrics), `edgeagent_renewals_total{result="not_extended"} 1`) {
		t.Fatalf("metrics do not count the capped renewal:\n%s", metrics)
	}
}
