package est

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func selfSigned(t testing.TB, cn string) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertsOnlyRoundTrip(t *testing.T) {
	a, b := selfSigned(t, "a"), selfSigned(t, "b")
	der, err := EncodeCertsOnly([]*x509.Certificate{a, b})
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeCertsOnly(der)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Equal(a) || !got[1].Equal(b) {
		t.Fatalf("round trip gave %d certs, want a then b", len(got))
	}
}

// TestCertsOnlyOpenSSLReadsOurs has openssl, an independent implementation,
// parse what we encode.
func TestCertsOnlyOpenSSLReadsOurs(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl not installed: make test installs it (apt-get install openssl)")
	}
	a, b := selfSigned(t, "alpha"), selfSigned(t, "beta")
	der, err := EncodeCertsOnly([]*x509.Certificate{a, b})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "ours.p7")
	if err := os.WriteFile(p, der, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "pkcs7", "-inform", "DER", "-in", p, "-print_certs", "-noout").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl pkcs7: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "CN = alpha") || !strings.Contains(string(out), "CN = beta") {
		t.Fatalf("openssl did not list both certs:\n%s", out)
	}
}

func TestCertsOnlyReadsOpenSSL(t *testing.T) {
	der, err := os.ReadFile("testdata/openssl-two-certs.p7")
	if err != nil {
		t.Fatal(err)
	}
	certs, err := DecodeCertsOnly(der)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 || certs[0].Subject.CommonName != "a" || certs[1].Subject.CommonName != "b" {
		t.Fatalf("got %d certs", len(certs))
	}
}

func TestDecodeCertsOnlyRejects(t *testing.T) {
	good, err := EncodeCertsOnly([]*x509.Certificate{selfSigned(t, "a")})
	if err != nil {
		t.Fatal(err)
	}
	empty, err := EncodeCertsOnly(nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"empty":       nil,
		"garbage":     []byte("hello"),
		"truncated":   good[:len(good)-3],
		"trailing":    append(append([]byte{}, good...), 0),
		"no certs":    empty,
		"a bare cert": selfSigned(t, "x").Raw,
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeCertsOnly(in); !errors.Is(err, ErrCMS) {
				t.Fatalf("err = %v, want ErrCMS", err)
			}
		})
	}
}

func TestBase64(t *testing.T) {
	data := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef, 0x01}, 40)
	enc := EncodeBase64(data)
	if !bytes.Contains(enc, []byte("\r\n")) {
		t.Fatal("long bodies should be line-wrapped")
	}
	cases := []struct {
		name string
		in   string
		want []byte
		err  bool
	}{
		{"wrapped", string(enc), data, false},
		{"lf wrapped", strings.ReplaceAll(string(enc), "\r\n", "\n"), data, false},
		{"padded", "AQI=", []byte{1, 2}, false},
		{"unpadded", "AQI", []byte{1, 2}, false},
		{"spaces", " AQ I= \n", []byte{1, 2}, false},
		{"empty", "", nil, true},
		{"only space", "\r\n  ", nil, true},
		{"bad char", "AQ*=", nil, true},
		{"url alphabet", "-_8=", nil, true},
		{"bad length", "A", nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := DecodeBase64([]byte(c.in))
			if c.err {
				if !errors.Is(err, ErrBase64) {
					t.Fatalf("err = %v, want ErrBase64", err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, c.want) {
				t.Fatalf("got %x, %v; want %x", got, err, c.want)
			}
		})
	}
}

func FuzzDecodeCertsOnly(f *testing.F) {
	good, err := EncodeCertsOnly([]*x509.Certificate{selfSigned(f, "a")})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	if b, err := os.ReadFile("testdata/openssl-two-certs.p7"); err == nil {
		f.Add(b)
	}
	f.Add([]byte{0x30, 0x80})
	f.Fuzz(func(t *testing.T, in []byte) {
		certs, err := DecodeCertsOnly(in)
		if err == nil && len(certs) == 0 {
			t.Fatal("nil error with no certificates")
		}
	})
}

func FuzzDecodeBase64(f *testing.F) {
	f.Add([]byte("AQI=\r\n"))
	f.Add(EncodeBase64(bytes.Repeat([]byte{7}, 100)))
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := DecodeBase64(in)
		if err != nil {
			return
		}
		// Whatever decodes must re-encode to the same bytes.
		back, err := DecodeBase64(EncodeBase64(out))
		if err != nil || !bytes.Equal(back, out) {
			t.Fatalf("re-encode mismatch: %v", err)
		}
	})
}
