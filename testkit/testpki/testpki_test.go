package testpki

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"os"
	"testing"
	"time"
)

func TestIssuedCertificates(t *testing.T) {
	ca := New(t, "test-ca")
	other := New(t, "other-ca")
	cases := []struct {
		name    string
		issued  *Issued
		usage   x509.ExtKeyUsage
		cn      string
		trusted bool
	}{
		{"client of this CA", ca.Client(t, "dev-1"), x509.ExtKeyUsageClientAuth, "dev-1", true},
		{"server of this CA", ca.Server(t), x509.ExtKeyUsageServerAuth, "server", true},
		{"client of another CA", other.Client(t, "dev-1"), x509.ExtKeyUsageClientAuth, "dev-1", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.issued.Cert.Subject.CommonName != c.cn {
				t.Fatalf("CN %q, want %q", c.issued.Cert.Subject.CommonName, c.cn)
			}
			_, err := c.issued.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{c.usage}})
			if (err == nil) != c.trusted {
				t.Fatalf("verify against test-ca: %v, want trusted=%v", err, c.trusted)
			}
			// The PEM files are what mosquitto reads: they must load as a
			// pair, and the key must not be readable by others.
			if _, err := tls.LoadX509KeyPair(c.issued.CertFile, c.issued.KeyFile); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(c.issued.KeyFile); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("key file mode: %v %v", fi.Mode(), err)
			}
		})
	}
	if a, b := ca.Client(t, "dev-1").Cert.SerialNumber, ca.Client(t, "dev-1").Cert.SerialNumber; a.Cmp(b) == 0 {
		t.Fatal("two certificates with one serial")
	}
}

func TestCRL(t *testing.T) {
	ca := New(t, "test-ca")
	revoked, kept := ca.Client(t, "dev-1"), ca.Client(t, "dev-1")
	data, err := os.ReadFile(ca.CRL(t, revoked.Cert))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "X509 CRL" {
		t.Fatalf("not a PEM CRL: %q", data)
	}
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatalf("CRL not signed by the CA: %v", err)
	}
	listed := map[string]bool{}
	for _, e := range crl.RevokedCertificateEntries {
		listed[e.SerialNumber.String()] = true
	}
	if !listed[revoked.Cert.SerialNumber.String()] || listed[kept.Cert.SerialNumber.String()] {
		t.Fatalf("CRL lists %v; want only %v", listed, revoked.Cert.SerialNumber)
	}
}

// TestLeafOptions: each option of Leaf and each CA shape does what its
// doc says, checked by x509's own verifier.
func TestLeafOptions(t *testing.T) {
	root := New(t, "root")
	inter := root.Intermediate(t, "issuing")
	lookalike := New(t, "root")
	now := time.Now()
	longCA := NewWith(t, "long", CAOptions{NotBefore: now.Add(-72 * time.Hour), NotAfter: now.Add(72 * time.Hour)})
	given := key(t)
	u, _ := url.Parse("urn:dev:1")
	cases := []struct {
		name    string
		ca      *CA
		leaf    Leaf
		at      time.Time // verification time; zero is now
		name2   string    // DNS name verified, if any
		trusted bool
	}{
		{"plain leaf of the root", root, Leaf{CN: "a"}, time.Time{}, "", true},
		{"leaf of the intermediate", inter, Leaf{CN: "b", DNSNames: []string{"b.test"}}, time.Time{}, "b.test", true},
		{"wrong DNS name", inter, Leaf{CN: "b", DNSNames: []string{"b.test"}}, time.Time{}, "c.test", false},
		{"look-alike root's leaf", lookalike, Leaf{CN: "c"}, time.Time{}, "", false},
		{"expired", longCA, Leaf{CN: "d", NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}, time.Time{}, "", false},
		{"expired, verified in its lifetime", longCA, Leaf{CN: "d", NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}, now.Add(-36 * time.Hour), "", true},
		{"not yet valid", root, Leaf{CN: "e", NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)}, time.Time{}, "", false},
		{"given public key and URI", inter, Leaf{Subject: pkix.Name{CommonName: "f", Organization: []string{"o"}}, URIs: []*url.URL{u}, PublicKey: &given.PublicKey}, time.Time{}, "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			is := c.ca.Issue(t, c.leaf)
			inters := x509.NewCertPool()
			for _, in := range c.ca.Chain[:len(c.ca.Chain)-1] {
				inters.AddCert(in)
			}
			roots := root.Pool()
			if c.ca == longCA {
				roots = longCA.Pool()
			}
			_, err := is.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: c.at, DNSName: c.name2,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			if (err == nil) != c.trusted {
				t.Fatalf("verify: %v, want trusted=%v", err, c.trusted)
			}
			if c.leaf.PublicKey != nil {
				if is.TLS != nil || is.KeyFile != "" || !given.PublicKey.Equal(is.Cert.PublicKey) {
					t.Fatalf("given key: TLS %v, key file %q, key certified %v", is.TLS, is.KeyFile, given.PublicKey.Equal(is.Cert.PublicKey))
				}
				if is.Cert.Subject.Organization[0] != "o" || is.Cert.URIs[0].String() != "urn:dev:1" {
					t.Fatalf("subject %v, URIs %v", is.Cert.Subject, is.Cert.URIs)
				}
				return
			}
			// The TLS value and the file carry the intermediates, not the root.
			if got, want := len(is.TLS.Certificate), len(c.ca.Chain); got != want {
				t.Fatalf("TLS chain of %d, want %d", got, want)
			}
			pair, err := tls.LoadX509KeyPair(is.CertFile, is.KeyFile)
			if err != nil || len(pair.Certificate) != len(c.ca.Chain) {
				t.Fatalf("files: %v, %d certificates", err, len(pair.Certificate))
			}
		})
	}
	if lookalike.Cert.Subject.String() != root.Cert.Subject.String() || inter.Root() != root.Cert {
		t.Fatal("look-alike subject or intermediate root wrong")
	}
	short := NewWith(t, "short", CAOptions{NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)})
	if l := short.Issue(t, Leaf{CN: "clamped"}).Cert; !l.NotAfter.Equal(short.Cert.NotAfter) || !l.NotBefore.Equal(short.Cert.NotBefore) {
		t.Fatalf("default validity %v..%v not clamped to the CA's %v..%v", l.NotBefore, l.NotAfter, short.Cert.NotBefore, short.Cert.NotAfter)
	}
	if _, err := root.Sign(Leaf{CN: "no key"}); err == nil {
		t.Fatal("Sign without a public key succeeded")
	}
}
