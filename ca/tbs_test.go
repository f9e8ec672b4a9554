package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"testing"
	"time"
)

// TestLeafDERMatchesCreateCertificate holds the fast path to the standard
// library: for the same template the TBSCertificate must be identical, and
// the signature must verify.
func TestLeafDERMatchesCreateCertificate(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Init(ctx, dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key, ok := c.auth.fastSigner()
	if !ok {
		t.Fatal("init did not make a P-256 intermediate")
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tc := range []struct {
		name string
		pub  crypto.PublicKey
		id   string
	}{
		{"ecdsa", newKey(t).Public(), "sensor-0001"},
		{"rsa", rsaKey.Public(), "a.b_c-D"},
		{"long id", newKey(t).Public(), "x123456789012345678901234567890123456789012345678901234567890123"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// issueLeaf takes the fast path; rebuild its template and let
			// CreateCertificate sign the same thing.
			fast, err := c.auth.issueLeaf(tc.pub, tc.id, time.Hour, now)
			if err != nil {
				t.Fatal(err)
			}
			if err := fast.CheckSignatureFrom(c.Intermediate()); err != nil {
				t.Fatalf("fast path signature: %v", err)
			}
			tmpl := &x509.Certificate{
				SerialNumber:          fast.SerialNumber,
				Subject:               fast.Subject,
				URIs:                  fast.URIs,
				NotBefore:             fast.NotBefore,
				NotAfter:              fast.NotAfter,
				KeyUsage:              fast.KeyUsage,
				ExtKeyUsage:           fast.ExtKeyUsage,
				BasicConstraintsValid: true,
			}
			std, err := x509.CreateCertificate(rand.Reader, tmpl, c.Intermediate(), tc.pub, key)
			if err != nil {
				t.Fatal(err)
			}
			stdCert, err := x509.ParseCertificate(std)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(fast.RawTBSCertificate, stdCert.RawTBSCertificate) {
				t.Fatalf("TBSCertificate differs from CreateCertificate's:\nfast %x\nstd  %x", fast.RawTBSCertificate, stdCert.RawTBSCertificate)
			}
		})
	}
}

func TestMarshalSPKIMatchesStandardLibrary(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, pub := range []crypto.PublicKey{newKey(t).Public(), newKey(t).Public(), rsaKey.Public()} {
		got, err := marshalSPKI(pub)
		if err != nil {
			t.Fatal(err)
		}
		want, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("SPKI %x, want %x", got, want)
		}
	}
}
