package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// testEST is a small RFC 7030 server that is not edgeca, so the agent is
// tested against a second implementation. It differs from edgeca on
// purpose: the issued response holds the leaf only, base64 is wrapped at
// 64 columns with CRLF, errors are plain text without edgeca's codes, and
// its TLS certificate may come from a CA other than the one it enrolls
// devices into.
type testEST struct {
	root, inter *x509.Certificate // the CA devices enroll into
	interCA     *testpki.CA
	tlsRoot     *x509.Certificate // issues the server's TLS certificate
	srv         *httptest.Server
	url         string

	mu               sync.Mutex
	users            map[string]string // single-use HTTP Basic credentials
	deferrals        int               // answer 202 this many times first
	retryAfter       string            // Retry-After of those answers
	cacertsNoRoot    bool              // publish only the issuing CA
	refuseReenroll   int               // if set, reenroll answers this status
	enrollAttempts   int
	reenrollAttempts int
}

type testESTOptions struct {
	// SeparateTLSCA gives the server a TLS certificate from its own CA
	// (presented as leaf and that CA); otherwise the enrolling CA's
	// intermediate issues it and the chain is leaf, intermediate, root.
	SeparateTLSCA bool
}

func startTestEST(t *testing.T, o testESTOptions) *testEST {
	t.Helper()
	// Every certificate of this server is valid from five minutes ago for
	// an hour: its CAs are, and their leaves are clamped to them.
	validity := testpki.CAOptions{NotBefore: time.Now().Add(-5 * time.Minute), NotAfter: time.Now().Add(time.Hour)}
	rootCA := testpki.NewWith(t, "Other Root CA", validity)
	s := &testEST{interCA: rootCA.Intermediate(t, "Other Issuing CA"), users: map[string]string{}}
	s.root, s.inter = rootCA.Cert, s.interCA.Cert

	serverLeaf := testpki.Leaf{CN: "est.test", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	var server *testpki.Issued
	var chain [][]byte
	if o.SeparateTLSCA {
		tlsCA := testpki.NewWith(t, "TLS Root CA", validity)
		s.tlsRoot = tlsCA.Cert
		server = tlsCA.Issue(t, serverLeaf)
		chain = [][]byte{server.Cert.Raw, s.tlsRoot.Raw}
	} else {
		server = s.interCA.Issue(t, serverLeaf)
		chain = [][]byte{server.Cert.Raw, s.inter.Raw, s.root.Raw}
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/est/cacerts", s.cacerts)
	mux.HandleFunc("POST /.well-known/est/simpleenroll", s.simpleEnroll)
	mux.HandleFunc("POST /.well-known/est/simplereenroll", s.simpleReenroll)
	mux.HandleFunc("GET /.well-known/est/csrattrs", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(s.root)
	s.srv = httptest.NewUnstartedServer(mux)
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of some tests
	s.srv.TLS = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: chain, PrivateKey: server.TLS.PrivateKey}},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    clientCAs,
	}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	s.url = s.srv.URL
	return s
}

// addUser registers single-use credentials.
func (s *testEST) addUser(user, pass string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[user] = pass
}

func (s *testEST) set(f func(s *testEST)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func (s *testEST) counts() (enroll, reenroll int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.enrollAttempts, s.reenrollAttempts
}

func writeWrapped(w http.ResponseWriter, der []byte) {
	w.Header().Set("Content-Type", "application/pkcs7-mime; smime-type=certs-only")
	enc := base64.StdEncoding.EncodeToString(der)
	var b strings.Builder
	for len(enc) > 64 {
		b.WriteString(enc[:64] + "\r\n")
		enc = enc[64:]
	}
	b.WriteString(enc + "\r\n")
	io.WriteString(w, b.String())
}

func (s *testEST) cacerts(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	certs := []*x509.Certificate{s.inter, s.root}
	if s.cacertsNoRoot {
		certs = certs[:1]
	}
	s.mu.Unlock()
	der, err := est.EncodeCertsOnly(certs)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeWrapped(w, der)
}

// deferred answers 202 while deferrals remain; the caller holds s.mu.
func (s *testEST) deferred(w http.ResponseWriter) bool {
	if s.deferrals == 0 {
		return false
	}
	s.deferrals--
	w.Header().Set("Retry-After", s.retryAfter)
	w.WriteHeader(http.StatusAccepted)
	return true
}

func (s *testEST) simpleEnroll(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.enrollAttempts++
	user, pass, ok := r.BasicAuth()
	want, known := s.users[user]
	if !ok || !known || pass != want {
		s.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `Basic realm="est"`)
		http.Error(w, "Authentication failed", http.StatusUnauthorized)
		return
	}
	if s.deferred(w) {
		s.mu.Unlock()
		return
	}
	delete(s.users, user) // single use
	s.mu.Unlock()
	s.issue(w, r, "")
}

func (s *testEST) simpleReenroll(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.reenrollAttempts++
	refuse := s.refuseReenroll
	s.mu.Unlock()
	if len(r.TLS.VerifiedChains) == 0 {
		http.Error(w, "a valid client certificate is required", http.StatusUnauthorized)
		return
	}
	if refuse != 0 {
		http.Error(w, "Re-enrollment not permitted for this device", refuse)
		return
	}
	s.issue(w, r, r.TLS.PeerCertificates[0].Subject.CommonName)
}

// issue signs the CSR in r; a non-empty mustCN is the only subject allowed.
func (s *testEST) issue(w http.ResponseWriter, r *http.Request, mustCN string) {
	if mt := r.Header.Get("Content-Type"); mt != est.MediaPKCS10 {
		http.Error(w, "Content-Type must be application/pkcs10", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, est.MaxBodyBytes))
	if err != nil {
		http.Error(w, "request too large", http.StatusRequestEntityTooLarge)
		return
	}
	der, err := est.DecodeBase64(body)
	if err != nil {
		http.Error(w, "body is not base64", http.StatusBadRequest)
		return
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil || csr.CheckSignature() != nil {
		http.Error(w, "invalid CSR", http.StatusBadRequest)
		return
	}
	if mustCN != "" && csr.Subject.CommonName != mustCN {
		http.Error(w, "CSR subject differs from the client certificate", http.StatusForbidden)
		return
	}
	leaf, err := s.interCA.Sign(testpki.Leaf{CN: csr.Subject.CommonName, URIs: csr.URIs,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, PublicKey: csr.PublicKey})
	if err != nil {
		http.Error(w, "signing failed", http.StatusInternalServerError)
		return
	}
	out, err := est.EncodeCertsOnly([]*x509.Certificate{leaf})
	if err != nil {
		http.Error(w, "encoding failed", http.StatusInternalServerError)
		return
	}
	writeWrapped(w, out)
}
