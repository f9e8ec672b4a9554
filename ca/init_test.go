package ca

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
)

func TestInitCreatesCA(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(ctx, dir, InitOptions{URL: "https://ca.example:8443"}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{
		RootKeyFile: 0o600, IntermediateKeyFile: 0o600, RootCertFile: 0o644, IntermediateCertFile: 0o644,
	} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %04o, want %04o", name, fi.Mode().Perm(), want)
		}
	}
	c, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	root, inter := c.Root(), c.Intermediate()
	if !root.IsCA || !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		t.Errorf("CA bits: root IsCA=%v, intermediate IsCA=%v pathlen=%d", root.IsCA, inter.IsCA, inter.MaxPathLen)
	}
	if root.PublicKeyAlgorithm != x509.ECDSA || inter.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("key algorithms %v %v, want ECDSA", root.PublicKeyAlgorithm, inter.PublicKeyAlgorithm)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Error(err)
	}
	if err := Init(ctx, dir, InitOptions{}); !errors.Is(err, ErrInitialized) {
		t.Errorf("second init: %v, want ErrInitialized", err)
	}
	// The --url given to init is the default for tokens.
	tok, _, err := c.CreateToken(ctx, TokenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tok.URL != "https://ca.example:8443" || !tok.Pin.Matches(root) {
		t.Errorf("token URL %q pin %v", tok.URL, tok.Pin)
	}
}

func TestKeyFilePermissionsRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Init(ctx, dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, IntermediateKeyFile)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		if err := os.Chmod(key, mode); err != nil {
			t.Fatal(err)
		}
		_, err := Open(ctx, dir, Options{})
		if !errors.Is(err, ErrKeyPermissions) || !strings.Contains(err.Error(), "chmod 600 "+key) {
			t.Errorf("mode %04o: err = %v, want ErrKeyPermissions with a chmod 600 hint", mode, err)
		}
	}
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestOpenUninitialized(t *testing.T) {
	_, err := Open(context.Background(), t.TempDir(), Options{})
	if err == nil || !strings.Contains(err.Error(), "edgeca init") {
		t.Fatalf("err = %v, want a hint to run edgeca init", err)
	}
}

func TestInitImport(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	if err := Init(ctx, src, InitOptions{Name: "corp"}); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if err := Init(ctx, other, InitOptions{Name: "other"}); err != nil {
		t.Fatal(err)
	}
	p := func(dir, f string) string { return filepath.Join(dir, f) }
	looseKey := filepath.Join(t.TempDir(), "loose-key.pem")
	b, err := os.ReadFile(p(src, IntermediateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(looseKey, b, 0o644); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name    string
		opts    InitOptions
		errHas  string // "" means success
		newInt  bool   // a fresh intermediate is expected
		rootKey bool   // root-key.pem is expected
	}{
		{"root and intermediate", InitOptions{ImportRootCert: p(src, RootCertFile), ImportIntermediateCert: p(src, IntermediateCertFile), ImportIntermediateKey: p(src, IntermediateKeyFile)}, "", false, false},
		{"all four", InitOptions{ImportRootCert: p(src, RootCertFile), ImportRootKey: p(src, RootKeyFile), ImportIntermediateCert: p(src, IntermediateCertFile), ImportIntermediateKey: p(src, IntermediateKeyFile)}, "", false, true},
		{"root with key only: new intermediate", InitOptions{ImportRootCert: p(src, RootCertFile), ImportRootKey: p(src, RootKeyFile)}, "", true, true},
		{"root key of another root", InitOptions{ImportRootCert: p(src, RootCertFile), ImportRootKey: p(other, RootKeyFile)}, "is not the key of", false, false},
		{"intermediate key of another intermediate", InitOptions{ImportRootCert: p(src, RootCertFile), ImportIntermediateCert: p(src, IntermediateCertFile), ImportIntermediateKey: p(other, IntermediateKeyFile)}, "is not the key of", false, false},
		{"intermediate of another root", InitOptions{ImportRootCert: p(src, RootCertFile), ImportIntermediateCert: p(other, IntermediateCertFile), ImportIntermediateKey: p(other, IntermediateKeyFile)}, "not signed by", false, false},
		{"intermediate as root", InitOptions{ImportRootCert: p(src, IntermediateCertFile), ImportIntermediateCert: p(src, IntermediateCertFile), ImportIntermediateKey: p(src, IntermediateKeyFile)}, "not a self-signed root", false, false},
		{"key file others can read", InitOptions{ImportRootCert: p(src, RootCertFile), ImportIntermediateCert: p(src, IntermediateCertFile), ImportIntermediateKey: looseKey}, "chmod 600", false, false},
		{"root without any key", InitOptions{ImportRootCert: p(src, RootCertFile)}, "needs --import-intermediate-cert", false, false},
		{"intermediate without root", InitOptions{ImportIntermediateCert: p(src, IntermediateCertFile), ImportIntermediateKey: p(src, IntermediateKeyFile)}, "--import-root-cert", false, false},
		{"intermediate cert without key", InitOptions{ImportRootCert: p(src, RootCertFile), ImportIntermediateCert: p(src, IntermediateCertFile)}, "go together", false, false},
		{"a key as certificate", InitOptions{ImportRootCert: p(src, RootKeyFile), ImportRootKey: p(src, RootKeyFile)}, "no PEM CERTIFICATE", false, false},
	}
	srcRoot, err := loadCert(p(src, RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	srcInter, err := loadCert(p(src, IntermediateCertFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			err := Init(ctx, dir, tc.opts)
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("err = %v, want one containing %q", err, tc.errHas)
				}
				if _, serr := os.Stat(p(dir, RootCertFile)); serr == nil {
					t.Fatal("a failed import left an initialized directory")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c, err := Open(ctx, dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if !c.Root().Equal(srcRoot) {
				t.Error("root not imported")
			}
			if got := c.Intermediate().Equal(srcInter); got == tc.newInt {
				t.Errorf("intermediate imported=%v, want a new one=%v", got, tc.newInt)
			}
			if _, err := os.Stat(p(dir, RootKeyFile)); (err == nil) != tc.rootKey {
				t.Errorf("root key present=%v, want %v", err == nil, tc.rootKey)
			}
			// It issues certificates that chain to the imported root.
			leaf, err := c.auth.issueLeaf(newKey(t).Public(), "imp-1", time.Hour, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			inter := x509.NewCertPool()
			inter.AddCert(c.Intermediate())
			roots := x509.NewCertPool()
			roots.AddCert(srcRoot)
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestCreateTokenOptions(t *testing.T) {
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

	// No URL anywhere: a clear error.
	if _, _, err := c.CreateToken(ctx, TokenOptions{}); !errors.Is(err, ErrNoURL) {
		t.Fatalf("no URL: %v", err)
	}
	// The serving address file supplies one.
	if err := os.WriteFile(filepath.Join(dir, ServeAddrFile), []byte("127.0.0.1:9443\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, rec, err := c.CreateToken(ctx, TokenOptions{Uses: 5, TTL: time.Hour, Pattern: "sensor-*"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.URL != "https://127.0.0.1:9443" || rec.MaxUses != 5 || rec.Pattern != "sensor-*" || rec.ExpiresAt.Sub(rec.CreatedAt) != time.Hour {
		t.Errorf("token %+v record %+v", tok, rec)
	}
	if len(tok.Secret) < 43 || !strings.HasPrefix(tok.ID, "t") || len(tok.ID) != 17 {
		t.Errorf("token id %q secret length %d", tok.ID, len(tok.Secret))
	}
	// Only the hash is stored.
	toks, err := c.Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 || toks[0].SecretHash == [32]byte{} || strings.Contains(string(toks[0].SecretHash[:]), tok.Secret) {
		t.Errorf("stored tokens %+v", toks)
	}

	for _, tc := range []struct {
		name string
		o    TokenOptions
		has  string
	}{
		{"device and pattern", TokenOptions{URL: "https://x", Device: "a", Pattern: "b*"}, "not both"},
		{"bad device", TokenOptions{URL: "https://x", Device: "a b"}, "--device"},
		{"bad pattern", TokenOptions{URL: "https://x", Pattern: "[a"}, "--pattern"},
		{"pattern with slash", TokenOptions{URL: "https://x", Pattern: "a/*"}, "--pattern"},
		{"http URL", TokenOptions{URL: "http://x"}, "https"},
		{"negative uses", TokenOptions{URL: "https://x", Uses: -1}, "--uses"},
	} {
		if _, _, err := c.CreateToken(ctx, tc.o); err == nil || !strings.Contains(err.Error(), tc.has) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.has)
		}
	}
	if err := c.RevokeToken(ctx, "tnope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke unknown token: %v", err)
	}
	if err := c.RevokeDevice(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke unknown device: %v", err)
	}
}

// TestImportRSAIntermediate covers an issuing key other than ECDSA P-256,
// which signs through x509.CreateCertificate instead of the fast path.
func TestImportRSAIntermediate(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	rootKey := newKey(t)
	now := time.Now()
	root, err := newCACert("rsa test root", rootKey.Public(), nil, rootKey, 1, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	interKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := newCACert("rsa test issuing", interKey.Public(), root, rootKey, 0, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := encodeKeyPEM(interKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"root.pem": encodeCertPEM(root), "inter.pem": encodeCertPEM(inter), "inter-key.pem": keyPEM} {
		if err := os.WriteFile(filepath.Join(src, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(ctx, dir, InitOptions{ImportRootCert: filepath.Join(src, "root.pem"), ImportIntermediateCert: filepath.Join(src, "inter.pem"), ImportIntermediateKey: filepath.Join(src, "inter-key.pem")}); err != nil {
		t.Fatal(err)
	}
	c, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, fast := c.auth.fastSigner(); fast {
		t.Fatal("RSA intermediate took the P-256 fast path")
	}
	// The device certificate may not outlive the intermediate.
	leaf, err := c.auth.issueLeaf(newKey(t).Public(), "rsa-1", 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.CheckSignatureFrom(inter); err != nil {
		t.Fatal(err)
	}
	if leaf.NotAfter.After(inter.NotAfter) || leaf.Subject.CommonName != "rsa-1" {
		t.Fatalf("leaf CN %q notAfter %v, intermediate notAfter %v", leaf.Subject.CommonName, leaf.NotAfter, inter.NotAfter)
	}
}

// TestRootKeyOffline: init can write the root key outside the CA
// directory, and a CA serves and issues without it (a root-key.pem that
// is garbage is never read either).
func TestRootKeyOffline(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ca")
	offline := filepath.Join(t.TempDir(), "usb", "root-key.pem")
	if err := os.MkdirAll(filepath.Dir(offline), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(offline+".exists", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, out, has string
	}{
		{"inside the CA directory", filepath.Join(dir, "keys", "root.key"), "inside the CA directory"},
		{"the CA directory itself", filepath.Join(dir, "root.key"), "inside the CA directory"},
		{"an existing file", offline + ".exists", "exists"},
	} {
		if err := Init(ctx, dir, InitOptions{RootKeyOut: tc.out}); err == nil || !strings.Contains(err.Error(), tc.has) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if err := Init(ctx, dir, InitOptions{RootKeyOut: offline}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, RootKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("root key in the CA directory: %v", err)
	}
	fi, err := os.Stat(offline)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("offline root key: %v %v", fi, err)
	}
	key, err := loadKey(offline)
	if err != nil {
		t.Fatal(err)
	}
	root, err := loadCert(filepath.Join(dir, RootCertFile))
	if err != nil || !keyMatches(root, key) {
		t.Fatalf("offline key is not the root's: %v", err)
	}
	// Garbage where the root key would be: serve never reads it.
	if err := os.WriteFile(filepath.Join(dir, RootKeyFile), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := serveDir(t, dir, Options{})
	devKey := newKey(t)
	cert := s.client(nil).enroll(t, csrFor(t, devKey, "offline-1"), s.token(t, TokenOptions{})).certs(t)[0]
	if err := cert.CheckSignatureFrom(s.ca.Intermediate()); err != nil {
		t.Fatal(err)
	}
}
