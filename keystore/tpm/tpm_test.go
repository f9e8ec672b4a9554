package tpm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

// openStore opens a Store on the swtpm with blobs in dir; it is closed when
// the test ends (closing twice is fine).
func openStore(t testing.TB, sw *swtpm.TPM, dir string, edit ...func(*Options)) *Store {
	t.Helper()
	o := Options{Address: sw.Addr(), Dir: dir}
	for _, e := range edit {
		e(&o)
	}
	s, err := Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func pubDER(t testing.TB, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestCreateSignVerify(t *testing.T) {
	sw := swtpm.Start(t)
	msg := []byte("edgeagent device key test")
	d256 := sha256.Sum256(msg)
	d384 := sha512.Sum384(msg)
	tests := []struct {
		alg    keystore.Algorithm
		name   string
		digest []byte
		opts   crypto.SignerOpts
		verify func(pub crypto.PublicKey, digest, sig []byte) error
	}{
		{keystore.ECDSAP256, "ecdsa-sha256", d256[:], crypto.SHA256, verifyECDSA},
		{keystore.ECDSAP256, "ecdsa-sha384", d384[:], crypto.SHA384, verifyECDSA},
		{keystore.RSA2048, "pkcs1v15-sha256", d256[:], crypto.SHA256, func(pub crypto.PublicKey, d, sig []byte) error {
			return rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, d, sig)
		}},
		{keystore.RSA2048, "pss-sha256-equals-hash", d256[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}, func(pub crypto.PublicKey, d, sig []byte) error {
			// What TLS 1.3 demands: salt length = hash length.
			return rsa.VerifyPSS(pub.(*rsa.PublicKey), crypto.SHA256, d, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		}},
		{keystore.RSA2048, "pss-sha384-auto", d384[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA384}, func(pub crypto.PublicKey, d, sig []byte) error {
			return rsa.VerifyPSS(pub.(*rsa.PublicKey), crypto.SHA384, d, sig, nil)
		}},
		{keystore.RSA3072, "rsa3072-pss-sha256", d256[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}, func(pub crypto.PublicKey, d, sig []byte) error {
			return rsa.VerifyPSS(pub.(*rsa.PublicKey), crypto.SHA256, d, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		}},
	}
	// swtpm serves one connection at a time, so one Store is open at a
	// time: the cases are grouped by algorithm.
	var s *Store
	var k crypto.Signer
	for _, tc := range tests {
		if k == nil || s.cur == nil || algOf(k) != tc.alg {
			if s != nil {
				s.Close()
			}
			s = openStore(t, sw, t.TempDir())
			var err error
			if k, err = s.Create(tc.alg); err != nil {
				t.Fatalf("Create(%s): %v", tc.alg, err)
			}
		}
		t.Run(tc.name, func(t *testing.T) {
			sig, err := k.Sign(rand.Reader, tc.digest, tc.opts)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if err := tc.verify(k.Public(), tc.digest, sig); err != nil {
				t.Fatalf("signature does not verify with the standard library: %v", err)
			}
			// A signature over another digest must not verify: the check
			// above is not vacuous.
			other := bytes.Clone(tc.digest)
			other[0] ^= 1
			if tc.verify(k.Public(), other, sig) == nil {
				t.Fatal("signature verifies for a different digest")
			}
		})
	}
}

func algOf(k crypto.Signer) keystore.Algorithm {
	switch p := k.Public().(type) {
	case *ecdsa.PublicKey:
		return keystore.ECDSAP256
	case *rsa.PublicKey:
		if p.Size() == 384 {
			return keystore.RSA3072
		}
		return keystore.RSA2048
	}
	return ""
}

func verifyECDSA(pub crypto.PublicKey, digest, sig []byte) error {
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest, sig) {
		return errors.New("ecdsa.VerifyASN1 failed")
	}
	return nil
}

func TestReopenGivesSameKey(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	s := openStore(t, sw, dir)
	if _, err := s.Current(); !errors.Is(err, keystore.ErrNoKey) {
		t.Fatalf("Current on empty store: got %v, want ErrNoKey", err)
	}
	k, err := keystore.LoadOrCreate(s, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(keystore.ECDSAP256); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second Create: got %v, want an 'already exists' error", err)
	}
	want := pubDER(t, k)
	s.Close()
	if _, err := k.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sign after Close: got %v, want ErrClosed", err)
	}

	check := func(what string) {
		t.Helper()
		s := openStore(t, sw, dir)
		k, err := s.Current()
		if err != nil {
			t.Fatalf("%s: Current: %v", what, err)
		}
		if !bytes.Equal(pubDER(t, k), want) {
			t.Fatalf("%s: public key changed", what)
		}
		d := sha256.Sum256([]byte(what))
		sig, err := k.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("%s: Sign: %v", what, err)
		}
		if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
			t.Fatalf("%s: signature does not verify", what)
		}
		s.Close()
	}
	check("agent restart")
	sw.Restart()
	check("swtpm restart with the same state")
}
