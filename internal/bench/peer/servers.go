package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	gsest "github.com/globalsign/est"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// server is one EST CA under test, serving on 127.0.0.1, with what a
// client needs to trust it and what the bench needs to check its answers.
type server struct {
	name  string
	addr  string         // host:port
	roots *x509.CertPool // trust anchor of the TLS server certificate
	// issuer signs the device certificates; root is its root.
	issuer, root *x509.Certificate
	// prepare makes n enrollments ready to send (untimed).
	prepare func(ctx context.Context, n int) ([]job, error)
	// consumes: each prepared enrollment can be sent once (edgeca's
	// tokens are single-use); otherwise they are sent again each trial.
	consumes bool
	stop     func()
}

func (s *server) url() string { return "https://" + s.addr }

// startEdgeCA creates a CA in dir and serves EST on 127.0.0.1:0 as
// `edgeca serve` does (internal/bench's startBenchCA).
func startEdgeCA(ctx context.Context, dir string) (*server, error) {
	caDir := filepath.Join(dir, "ca")
	if err := ca.Init(ctx, caDir, ca.InitOptions{}); err != nil {
		return nil, err
	}
	c, err := ca.Open(ctx, caDir, ca.Options{Logger: slog.New(slog.DiscardHandler), Hostnames: []string{"127.0.0.1"},
		// The load generator is one peer playing many devices.
		MaxConnsPerPeer: 4096})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.Close()
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- c.Serve(sctx, ln) }()
	s := &server{name: "edgeca", addr: ln.Addr().String(), roots: x509.NewCertPool(), issuer: c.Intermediate(), root: c.Root(), consumes: true}
	s.roots.AddCert(c.Root())
	next := 0 // device ids are unique across calls: each is enrolled once
	s.prepare = func(ctx context.Context, n int) ([]job, error) {
		next += n
		return prepareJobs(ctx, next-n, n, func(ctx context.Context, id string) (string, string, error) {
			tok, _, err := c.CreateToken(ctx, ca.TokenOptions{URL: s.url(), Device: id})
			return tok.ID, tok.Secret, err
		})
	}
	s.stop = func() {
		cancel()
		<-served
		c.Close()
	}
	return s, nil
}

// The one enrollment credential the GlobalSign server accepts: it has no
// token store, so every device presents the same user and password.
const (
	gsUser     = "bench-device"
	gsPassword = "bench-password-0123456789abcdef"
)

// startGlobalSign serves GlobalSign's EST router (github.com/globalsign/est)
// on 127.0.0.1:0 over the TLS configuration edgeca uses (ECDSA P-256 server
// key, leaf and issuing CA in the chain, client certificate requested,
// no session tickets, X25519 first), with gsCA behind it.
func startGlobalSign(ttl time.Duration) (*server, error) {
	g, err := newGSCA(ttl)
	if err != nil {
		return nil, err
	}
	router, err := gsest.NewRouter(&gsest.ServerConfig{
		CA:      g,
		Timeout: 30 * time.Second,
		CheckBasicAuth: func(_ context.Context, _ *http.Request, _, u, p string) error {
			if subtle.ConstantTimeCompare([]byte(u), []byte(gsUser))&subtle.ConstantTimeCompare([]byte(p), []byte(gsPassword)) == 1 {
				return nil
			}
			return errors.New("bad credentials")
		},
	})
	if err != nil {
		return nil, err
	}
	sk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	leaf, err := signCert(&x509.Certificate{Subject: pkix.Name{CommonName: "GlobalSign EST bench server"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true}, g.inter, &sk.PublicKey, g.interKey)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw, g.inter.Raw}, PrivateKey: sk, Leaf: leaf}},
		MinVersion:   tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
		ClientAuth:             tls.RequestClientCert,
		SessionTicketsDisabled: true,
		CurvePreferences:       []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521},
	}
	srv := &http.Server{
		Handler:           router,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(tls.NewListener(ln, cfg)) }()
	s := &server{name: "GlobalSign EST", addr: ln.Addr().String(), roots: x509.NewCertPool(), issuer: g.inter, root: g.root}
	s.roots.AddCert(g.root)
	s.prepare = func(ctx context.Context, n int) ([]job, error) {
		return prepareJobs(ctx, 0, n, func(context.Context, string) (string, string, error) { return gsUser, gsPassword, nil })
	}
	s.stop = func() {
		srv.Close()
		<-served
	}
	return s, nil
}

// gsCA is the CA behind GlobalSign's router (its est.CA interface; the
// package ships none): a root and an ECDSA P-256 issuing CA in memory that
// sign with crypto/x509 a certificate like edgeca's (the CSR's subject, a
// device URI, client-auth only, the same lifetime). The router has already
// parsed the CSR and checked its signature; nothing is stored.
type gsCA struct {
	root, inter *x509.Certificate
	interKey    *ecdsa.PrivateKey
	ttl         time.Duration
}

func newGSCA(ttl time.Duration) (*gsCA, error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	root, err := signCert(&x509.Certificate{Subject: pkix.Name{CommonName: "bench root CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, nil, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	inter, err := signCert(&x509.Certificate{Subject: pkix.Name{CommonName: "bench issuing CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, root, &interKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	return &gsCA{root: root, inter: inter, interKey: interKey, ttl: ttl}, nil
}

func signCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
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

// gsError is an error the router turns into an HTTP status.
type gsError struct {
	status int
	msg    string
}

func (e gsError) StatusCode() int { return e.status }
func (e gsError) Error() string   { return e.msg }
func (e gsError) RetryAfter() int { return 0 }

var errNotOffered = gsError{http.StatusNotImplemented, "not offered by this bench CA"}

func (g *gsCA) CACerts(context.Context, string, *http.Request) ([]*x509.Certificate, error) {
	return []*x509.Certificate{g.inter, g.root}, nil
}

func (g *gsCA) CSRAttrs(context.Context, string, *http.Request) (gsest.CSRAttrs, error) {
	return gsest.CSRAttrs{}, nil
}

func (g *gsCA) Enroll(_ context.Context, csr *x509.CertificateRequest, _ string, _ *http.Request) (*x509.Certificate, error) {
	id := csr.Subject.CommonName
	if err := ca.ValidateDeviceID(id); err != nil {
		return nil, gsError{http.StatusBadRequest, err.Error()}
	}
	now := time.Now()
	c, err := signCert(&x509.Certificate{
		Subject: pkix.Name{CommonName: id}, URIs: []*url.URL{ca.DeviceURI(id)},
		NotBefore: now.Add(-ca.LeafBackdate(g.ttl)), NotAfter: now.Add(g.ttl),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, BasicConstraintsValid: true,
	}, g.inter, csr.PublicKey, g.interKey)
	if err != nil {
		return nil, gsError{http.StatusBadRequest, "issue: " + err.Error()}
	}
	return c, nil
}

func (g *gsCA) Reenroll(context.Context, *x509.Certificate, *x509.CertificateRequest, string, *http.Request) (*x509.Certificate, error) {
	return nil, errNotOffered
}

func (g *gsCA) ServerKeyGen(context.Context, *x509.CertificateRequest, string, *http.Request) (*x509.Certificate, []byte, error) {
	return nil, nil, errNotOffered
}

func (g *gsCA) TPMEnroll(context.Context, *x509.CertificateRequest, []*x509.Certificate, []byte, []byte, string, *http.Request) ([]byte, []byte, []byte, error) {
	return nil, nil, nil, errNotOffered
}

// job is one prepared enrollment: credentials, a CSR for a fresh P-256
// key, and the answer once sent.
type job struct {
	user, pass string
	csr        []byte // base64, the request body
	pub        crypto.PublicKey
	answer     []byte // the 200 response body
}

// prepareJobs makes n enrollments for devices bench-<first>... on a few
// goroutines (edgeca commits tokens in groups: one at a time would wait an
// fsync each).
func prepareJobs(ctx context.Context, first, n int, creds func(ctx context.Context, id string) (user, pass string, err error)) ([]job, error) {
	jobs := make([]job, n)
	const workers = 8
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n && errs[w] == nil; i += workers {
				errs[w] = prepareJob(ctx, &jobs[i], fmt.Sprintf("bench-%06d", first+i), creds)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("prepare enrollments: %w", err)
	}
	return jobs, nil
}

func prepareJob(ctx context.Context, j *job, id string, creds func(ctx context.Context, id string) (string, string, error)) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
	if err != nil {
		return err
	}
	user, pass, err := creds(ctx, id)
	if err != nil {
		return err
	}
	*j = job{user: user, pass: pass, csr: est.EncodeBase64(der), pub: key.Public()}
	return nil
}
