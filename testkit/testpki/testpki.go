// Package testpki makes certificates for tests: a CA (optionally under
// another as an intermediate), server certificates for loopback, client
// certificates whose CN is a device id, and leaves of any shape a test
// names (SANs, key usages, validity, a given public key), as crypto/tls
// values and as PEM files for external peers (mosquitto). StartEdgeCA
// runs a real edgeca instead, for tests of the agent side.
//
// It is the one test PKI of the repository: a test that needs a CA, a
// chain or a leaf takes it from here rather than calling
// x509.CreateCertificate itself.
//
// # What stays local and why
//
// Some tests build certificates themselves: the odd certificate is what
// they test, the code under test is the issuer, or they cannot import
// this package:
//
//   - ca/ (tbs_test.go compares the fast-path TBS encoder with
//     x509.CreateCertificate byte for byte; the other tests get their
//     certificates from ca itself): ca's own issuance is under test, and
//     its internal tests cannot import testpki, which imports ca for
//     StartEdgeCA.
//   - enroll/est: its internal tests cannot import testpki either
//     (testpki imports ca, which imports enroll/est); its self-signed
//     certificates are only payload for the certs-only encoding.
//   - enroll/interop (and ca/interop): modules of their own that do not
//     require this module; the interop CA is deliberately odd (it rewrites
//     the subject and SAN, caps NotAfter, backdates, reissues the raw
//     subject and SAN bytes on reenroll) and keeps its own polling loop.
//   - testkit/e2e/rotation_test.go: signs a broker certificate with the
//     real edgeca's intermediate key read from its key file, to show a
//     certificate of the rotated intermediate is trusted; a test CA here
//     would not be that intermediate.
//   - ca/store/storetest: the store conformance suite's own certificates.
//   - tools/bench and tools/bench/peer: not tests but the bench and its
//     peer module (its own module), which build their PKIs at run time.
//   - CSRs (x509.CreateCertificateRequest in cmd/edgeca, ca/interop,
//     tools/bench): a CSR is the device's request, not a PKI.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a test certificate authority: a root made by New, or an
// intermediate made by (*CA).Intermediate.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// Chain is Cert followed by its issuers up to and including the root
	// (for a root, Cert alone).
	Chain     []*x509.Certificate
	dir       string
	crlNumber *atomic.Int64 // shared by a root and its intermediates
}

// CAOptions tune a CA; the zero value is New's CA.
type CAOptions struct {
	// NotBefore and NotAfter bound the CA's validity; zero means an hour
	// ago and 24 hours ahead. A test of clocks far from now needs a CA
	// that was valid then.
	NotBefore, NotAfter time.Time
}

// New makes a root CA named name (its subject CN) whose files go in a
// temporary directory. Two calls with one name make look-alike CAs: the
// same subject, different keys.
func New(t testing.TB, name string) *CA {
	t.Helper()
	return NewWith(t, name, CAOptions{})
}

// NewWith is New with options.
func NewWith(t testing.TB, name string, o CAOptions) *CA {
	t.Helper()
	ca, err := makeCA(name, o, nil, new(atomic.Int64))
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	ca.dir = t.TempDir()
	return ca
}

// Intermediate makes a CA named name certified by ca, valid as long as
// ca. Leaves it issues carry it (and any intermediates above it) in
// Issued.TLS, so a server or client presents the whole chain but the root.
func (ca *CA) Intermediate(t testing.TB, name string) *CA {
	t.Helper()
	in, err := makeCA(name, CAOptions{NotBefore: ca.Cert.NotBefore, NotAfter: ca.Cert.NotAfter}, ca, ca.crlNumber)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	in.dir = ca.dir
	return in
}

func makeCA(name string, o CAOptions, parent *CA, crlNumber *atomic.Int64) (*CA, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	nb, na := validity(o.NotBefore, o.NotAfter)
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, NotBefore: nb, NotAfter: na}
	issuer, issuerKey := tmpl, k
	if parent != nil {
		issuer, issuerKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &k.PublicKey, issuerKey)
	if err != nil {
		return nil, fmt.Errorf("create CA %q: %w", name, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{Cert: c, Key: k, Chain: []*x509.Certificate{c}, crlNumber: crlNumber}
	if parent != nil {
		ca.Chain = append(ca.Chain, parent.Chain...)
	}
	return ca, nil
}

// serial is random, as a real CA's (RFC 5280 §4.1.2.2 asks for unique;
// CA/B forum for unpredictable): certificates of different test CAs in
// one test never share a serial, so nothing keyed by serial alone (a
// revocation set, a session cache) confuses them.
func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("testpki: serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func validity(nb, na time.Time) (time.Time, time.Time) {
	if nb.IsZero() {
		nb = time.Now().Add(-time.Hour)
	}
	if na.IsZero() {
		na = time.Now().Add(24 * time.Hour)
	}
	return nb, na
}

func key(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Root is the self-signed end of the CA's chain (the CA itself for a root).
func (ca *CA) Root() *x509.Certificate { return ca.Chain[len(ca.Chain)-1] }

// Pool is a pool with the CA's root only: what a peer pins.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Root())
	return p
}

// CAFile writes the CA's root certificate as PEM and returns its path.
func (ca *CA) CAFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(ca.dir, fmt.Sprintf("ca-%s.pem", ca.Root().SerialNumber))
	write(t, p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root().Raw}))
	return p
}

// Issued is a certificate and its key.
type Issued struct {
	Cert *x509.Certificate
	// TLS holds the leaf, the issuing intermediates (not the root) and
	// the key; nil when the leaf certifies a given public key.
	TLS      *tls.Certificate
	CertFile string // the leaf then its intermediates, PEM
	KeyFile  string // PKCS#8 PEM, mode 0600; empty with Leaf.PublicKey
}

// Leaf describes a certificate to issue. Zero fields take the defaults
// noted; no field makes a CA certificate (use New or Intermediate).
type Leaf struct {
	// Subject is the certificate's subject; CN, when set, replaces its
	// common name.
	Subject pkix.Name
	CN      string
	// DNSNames, IPs and URIs are the subject alternative names.
	DNSNames []string
	IPs      []net.IP
	URIs     []*url.URL
	// ExtKeyUsage: none by default (any use, as x509 reads it).
	ExtKeyUsage []x509.ExtKeyUsage
	// NotBefore and NotAfter: zero means an hour ago and 24 hours ahead,
	// clamped to the issuing CA's validity (as a real CA does). Set them
	// to make an expired or a not-yet-valid certificate.
	NotBefore, NotAfter time.Time
	// PublicKey, when set, is certified instead of a new key (a CSR's, a
	// TPM's); Issued then has only Cert and CertFile.
	PublicKey crypto.PublicKey
}

// Server issues a server certificate for 127.0.0.1 and localhost.
func (ca *CA) Server(t testing.TB) *Issued {
	t.Helper()
	return ca.Issue(t, Leaf{CN: "server", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
}

// Client issues a client certificate with CN = cn.
func (ca *CA) Client(t testing.TB, cn string) *Issued {
	t.Helper()
	return ca.Issue(t, Leaf{CN: cn, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}

// Issue issues the leaf l, failing the test on error.
func (ca *CA) Issue(t testing.TB, l Leaf) *Issued {
	t.Helper()
	var k *ecdsa.PrivateKey
	if l.PublicKey == nil {
		k = key(t)
		l.PublicKey = &k.PublicKey
	}
	c, err := ca.Sign(l)
	if err != nil {
		t.Fatal(err)
	}
	chain := [][]byte{c.Raw}
	for _, in := range ca.Chain[:len(ca.Chain)-1] {
		chain = append(chain, in.Raw)
	}
	base := filepath.Join(ca.dir, fmt.Sprintf("%s-%s", c.Subject.CommonName, c.SerialNumber))
	if c.Subject.CommonName == "" || filepath.Base(c.Subject.CommonName) != c.Subject.CommonName {
		base = filepath.Join(ca.dir, "leaf-"+c.SerialNumber.String())
	}
	is := &Issued{Cert: c, CertFile: base + ".pem"}
	var certPEM []byte
	for _, der := range chain {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	write(t, is.CertFile, certPEM)
	if k == nil {
		return is
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	is.TLS = &tls.Certificate{Certificate: chain, PrivateKey: k, Leaf: c}
	is.KeyFile = base + "-key.pem"
	write(t, is.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	return is
}

// Sign certifies l.PublicKey (which must be set) and returns the leaf
// without writing files: for a test EST server answering a CSR in a
// handler, where failing the test is not possible.
func (ca *CA) Sign(l Leaf) (*x509.Certificate, error) {
	if l.PublicKey == nil {
		return nil, errors.New("testpki: Sign needs Leaf.PublicKey")
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	nb, na := validity(l.NotBefore, l.NotAfter)
	if l.NotBefore.IsZero() && nb.Before(ca.Cert.NotBefore) {
		nb = ca.Cert.NotBefore
	}
	if l.NotAfter.IsZero() && na.After(ca.Cert.NotAfter) {
		na = ca.Cert.NotAfter
	}
	subject := l.Subject
	if l.CN != "" {
		subject.CommonName = l.CN
	}
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: subject, NotBefore: nb, NotAfter: na,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: l.ExtKeyUsage, DNSNames: l.DNSNames, IPAddresses: l.IPs, URIs: l.URIs}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, l.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("testpki: issue %q: %w", subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

func write(t testing.TB, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// CRL writes a PEM certificate revocation list from the CA revoking the
// given certificates and returns its path (the same path on every call,
// so a broker configured with it sees the latest list when it restarts).
func (ca *CA) CRL(t testing.TB, revoked ...*x509.Certificate) string {
	t.Helper()
	der, err := ca.CRLDER(ca.crlNumber.Add(1), revoked...)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(ca.dir, fmt.Sprintf("crl-%s.pem", ca.Cert.SerialNumber))
	write(t, p, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
	return p
}

// CRLDER is a DER CRL from the CA with the given CRL number revoking the
// given certificates: for a test server that publishes CRLs in a handler.
func (ca *CA) CRLDER(number int64, revoked ...*x509.Certificate) ([]byte, error) {
	tmpl := &x509.RevocationList{Number: big.NewInt(number), ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: time.Now().Add(24 * time.Hour)}
	for _, c := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("testpki: create CRL: %w", err)
	}
	return der, nil
}
