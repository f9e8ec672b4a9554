package testpki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"testing"
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
