package enroll

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// serveTLS runs h over TLS with p's server certificate on 127.0.0.1.
func serveTLS(t *testing.T, p *testPKI, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of some tests
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.server}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// issueFor answers an EST enrollment request the way a conforming server
// does, with the leaf only.
func issueFor(t *testing.T, p *testPKI, w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, est.MaxBodyBytes))
	if err != nil {
		http.Error(w, "body", http.StatusRequestEntityTooLarge)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != est.MediaPKCS10 {
		http.Error(w, "content type "+ct, http.StatusUnsupportedMediaType)
		return
	}
	if cte := r.Header.Get("Content-Transfer-Encoding"); cte != "base64" {
		http.Error(w, "transfer encoding "+cte, http.StatusBadRequest)
		return
	}
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
	leaf, err := p.interCA.Sign(testpki.Leaf{Subject: csr.Subject, URIs: csr.URIs, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, PublicKey: csr.PublicKey})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	out, _ := est.EncodeCertsOnly([]*x509.Certificate{leaf})
	w.Header().Set("Content-Type", "application/pkcs7-mime; smime-type=certs-only")
	w.Header().Set("Content-Transfer-Encoding", "base64")
	w.Write(est.EncodeBase64(out))
}

// TestPathPrefixAndLabel: a base URL with a path and a CA label put the
// operation under <prefix>/.well-known/est/<label>/.
func TestPathPrefixAndLabel(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	var paths []string
	srv := serveTLS(t, p, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.Method+" "+r.URL.Path)
		switch r.URL.Path {
		case "/est-gw/.well-known/est/fleet-a/cacerts":
			der, _ := est.EncodeCertsOnly([]*x509.Certificate{p.root})
			w.Header().Set("Content-Type", "application/pkcs7-mime")
			w.Write(est.EncodeBase64(der))
		case "/est-gw/.well-known/est/fleet-a/simpleenroll":
			issueFor(t, p, w, r)
		case "/est-gw/.well-known/est/fleet-a/csrattrs":
			http.NotFound(w, r)
		default:
			http.Error(w, "no such path", http.StatusNotFound)
		}
	}))
	c, err := New(Options{Server: srv.URL + "/est-gw/", Label: "fleet-a", Roots: p.pool(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	ctx := context.Background()
	if _, err := c.CACerts(ctx); err != nil {
		t.Fatal(err)
	}
	key := mustKey(t)
	csr, _ := BuildCSR(key, "dev-9")
	if _, err := c.SimpleEnroll(ctx, csr, "u", "p"); err != nil {
		t.Fatal(err)
	}
	if a, err := c.CSRAttrs(ctx); err != nil || !a.Empty() {
		t.Fatalf("csrattrs 404: %+v %v", a, err)
	}
	want := []string{
		"GET /est-gw/.well-known/est/fleet-a/cacerts",
		"POST /est-gw/.well-known/est/fleet-a/simpleenroll",
		"GET /est-gw/.well-known/est/fleet-a/csrattrs",
	}
	if strings.Join(paths, "\n") != strings.Join(want, "\n") {
		t.Fatalf("paths:\n%s\nwant:\n%s", strings.Join(paths, "\n"), strings.Join(want, "\n"))
	}
	if _, err := New(Options{Server: srv.URL, Label: "a/b", Roots: p.pool()}); err == nil {
		t.Fatal("label with '/' accepted")
	}
}

// TestResponseHandling covers the answers a conforming (or sloppy) server
// may give, one response per case.
func TestResponseHandling(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	certsDER, _ := est.EncodeCertsOnly([]*x509.Certificate{p.root, p.inter})
	cases := []struct {
		name    string
		handler http.HandlerFunc
		certs   int    // want this many certificates, or
		err     string // an error containing this
		is      func(error) bool
	}{
		{"base64 with parameters", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", `application/pkcs7-mime; smime-type="certs-only"; name=cacerts.p7c`)
			w.Write(est.EncodeBase64(certsDER))
		}, 2, "", nil},
		{"CRLF-wrapped base64 without transfer encoding", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "Application/PKCS7-MIME")
			b := est.EncodeBase64(certsDER)
			for len(b) > 64 {
				w.Write(append(b[:64:64], '\r', '\n'))
				b = b[64:]
			}
			w.Write(b)
		}, 2, "", nil},
		{"raw DER", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/pkcs7-mime")
			w.Write(certsDER)
		}, 2, "", nil},
		{"no content type", func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Content-Type"] = nil
			w.Write(est.EncodeBase64(certsDER))
		}, 0, "content type", func(err error) bool { return errors.Is(err, ErrResponse) }},
		{"garbage base64", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/pkcs7-mime")
			w.Write([]byte("%%%not base64%%%"))
		}, 0, "GET cacerts", func(err error) bool { return errors.Is(err, ErrResponse) }},
		{"not a certs-only message", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/pkcs7-mime")
			w.Write(est.EncodeBase64([]byte{0x30, 0x03, 0x02, 0x01, 0x01}))
		}, 0, "GET cacerts", func(err error) bool { return errors.Is(err, ErrResponse) }},
		{"oversized", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/pkcs7-mime")
			w.Write([]byte(strings.Repeat("A", est.MaxBodyBytes+10)))
		}, 0, "response over", func(err error) bool { return errors.Is(err, ErrResponse) }},
		{"edgeca error body", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, est.ErrorBody(est.CodeTokenInvalid, "the token is not valid"), http.StatusUnauthorized)
		}, 0, "enroll: GET cacerts: 401 token rejected: token_invalid: the token is not valid", IsTokenRejected},
		{"plain error body", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "temporarily overloaded", http.StatusServiceUnavailable)
		}, 0, "enroll: GET cacerts: 503 Service Unavailable: temporarily overloaded", Retryable},
		{"202 without Retry-After", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusAccepted)
		}, 0, "Retry-After", nil},
		{"redirect to another server", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "https://198.51.100.7/.well-known/est/cacerts", http.StatusTemporaryRedirect)
		}, 0, "refusing redirect", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := serveTLS(t, p, tc.handler)
			c, err := New(Options{Server: srv.URL, Roots: p.pool(), Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseIdleConnections()
			certs, err := c.CACerts(context.Background())
			if tc.err == "" {
				if err != nil || len(certs) != tc.certs {
					t.Fatalf("got %d certs, %v; want %d", len(certs), err, tc.certs)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.err)
			}
			if tc.is != nil && !tc.is(err) {
				t.Fatalf("err = %v: wrong kind", err)
			}
		})
	}
}

// TestRetryAfterWait: the client waits for a deferral (capped by
// MaxRetryWait) and a cancelled context ends the wait.
func TestRetryAfterWait(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	var attempts atomic.Int32
	srv := serveTLS(t, p, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if attempts.Add(1) == 1 {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusAccepted)
			return
		}
		issueFor(t, p, w, r)
	}))
	key := mustKey(t)
	csr, _ := BuildCSR(key, "dev-1")

	// An hour's Retry-After capped to a millisecond: the second attempt
	// gets the certificate.
	c, err := New(Options{Server: srv.URL, Roots: p.pool(), Timeout: 5 * time.Second, MaxRetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	certs, err := c.SimpleEnroll(context.Background(), csr, "u", "p")
	if err != nil || attempts.Load() != 2 {
		t.Fatalf("after a capped deferral: %d attempts, %v", attempts.Load(), err)
	}
	if _, err := CheckIssued(certs, key.Public(), "dev-1", []*x509.Certificate{p.root, p.inter}, time.Now()); err != nil {
		t.Fatal(err)
	}

	// Uncapped: the wait is near the default cap of 10 minutes (spread
	// below it by jitter, see TestDeferralWait), and cancelling the
	// context ends it. OnResponse fires once the 202 is read, before the
	// wait starts.
	attempts.Store(0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c2, err := New(Options{Server: srv.URL, Roots: p.pool(), Timeout: 5 * time.Second,
		OnResponse: func(Response) { cancel() }})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.CloseIdleConnections()
	_, err = c2.SimpleEnroll(ctx, csr, "u", "p")
	m := regexp.MustCompile(`waiting (\S+) for deferred issuance`).FindStringSubmatch(fmt.Sprint(err))
	if !errors.Is(err, context.Canceled) || m == nil {
		t.Fatalf("cancelled wait: %v", err)
	}
	if w, perr := time.ParseDuration(m[1]); perr != nil || w < 10*time.Minute*7/8 || w > 10*time.Minute {
		t.Fatalf("waited %s for an hour's Retry-After, want between 8m45s and the 10m cap", m[1])
	}
	if attempts.Load() != 1 {
		t.Fatalf("%d attempts, want 1", attempts.Load())
	}
}

// TestIssuedForAnotherKey: a server answering with a certificate for some
// other key is caught before anything is stored.
func TestIssuedForAnotherKey(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	srv := serveTLS(t, p, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		issueFor(t, p, w, r)
	}))
	c, err := New(Options{Server: srv.URL, Roots: p.pool(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	other := mustKey(t)
	csr, _ := BuildCSR(other, "dev-1")
	certs, err := c.SimpleEnroll(context.Background(), csr, "u", "p")
	if err != nil {
		t.Fatal(err)
	}
	_, err = CheckIssued(certs, mustKey(t).Public(), "dev-1", []*x509.Certificate{p.root, p.inter}, time.Now())
	if !errors.Is(err, ErrResponse) || !strings.Contains(err.Error(), "not for this device's key") {
		t.Fatalf("certificate for another key: %v", err)
	}
}

func TestBuildCSR(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		sig  x509.SignatureAlgorithm
		key  crypto.Signer
	}{
		{"ecdsa", x509.ECDSAWithSHA256, mustKey(t)},
		{"rsa", x509.SHA256WithRSA, rsaKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der, err := BuildCSR(tc.key, "sensor-01")
			if err != nil {
				t.Fatal(err)
			}
			csr, err := x509.ParseCertificateRequest(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Fatal(err)
			}
			if csr.SignatureAlgorithm != tc.sig || csr.Subject.CommonName != "sensor-01" ||
				len(csr.URIs) != 1 || csr.URIs[0].String() != "urn:edgeagent:device:sensor-01" {
				t.Fatalf("CSR: alg %v CN %q URIs %v", csr.SignatureAlgorithm, csr.Subject.CommonName, csr.URIs)
			}
		})
	}
	if _, err := BuildCSR(ed25519Key(t), "sensor-01"); err == nil || !strings.Contains(err.Error(), "unsupported key type") {
		t.Fatalf("ed25519 key: %v", err)
	}
}

func ed25519Key(t *testing.T) crypto.Signer {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
