package file

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/keystore"
)

func TestCreateLoadSign(t *testing.T) {
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Current(); !errors.Is(err, keystore.ErrNoKey) {
				t.Fatalf("empty store: %v", err)
			}
			k, err := keystore.LoadOrCreate(s, alg)
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(s.Path())
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("key file mode %v %v", fi.Mode().Perm(), err)
			}
			again, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			k2, err := again.Current()
			if err != nil {
				t.Fatal(err)
			}
			if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k2.Public()) {
				t.Fatal("reloaded a different key")
			}
			digest := sha256.Sum256([]byte("hello"))
			sig, err := k2.Sign(rand.Reader, digest[:], crypto.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			switch pub := k.Public().(type) {
			case *ecdsa.PublicKey:
				if !ecdsa.VerifyASN1(pub, digest[:], sig) {
					t.Fatal("bad signature")
				}
			case *rsa.PublicKey:
				if rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) != nil {
					t.Fatal("bad signature")
				}
			}
			if _, err := s.Create(alg); err == nil {
				t.Fatal("Create over an existing key succeeded")
			}
		})
	}
}

func TestLoadRejects(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, err := Generate(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(good)
	goodPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	edDER, _ := x509.MarshalPKCS8PrivateKey(edPriv)
	cases := []struct {
		name, path, want string
		is               error
	}{
		{"world readable", write("a.pem", goodPEM, 0o644), "chmod 600", ErrPermissions},
		{"group readable", write("b.pem", goodPEM, 0o640), "chmod 600", ErrPermissions},
		{"not pem", write("c.pem", []byte("hello"), 0o600), "no PEM block", nil},
		{"certificate", write("d.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), 0o600), "want a private key", nil},
		{"corrupt der", write("e.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), 0o600), "e.pem", nil},
		{"ed25519", write("f.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edDER}), 0o600), "want an ECDSA or RSA key", nil},
		{"missing", filepath.Join(dir, "nope.pem"), "no such file", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := LoadKey(c.path)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Fatalf("err = %v, want %v", err, c.is)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	old, err := s.Create(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	eq := func(a, b crypto.Signer) bool {
		return a.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(b.Public())
	}

	// Abort keeps the old key.
	r, err := s.BeginRotate(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Abort(); err != nil {
		t.Fatal(err)
	}
	if cur, _ := s.Current(); !eq(cur, old) {
		t.Fatal("abort changed the current key")
	}
	if _, ok, _ := s.Pending(); ok {
		t.Fatal("pending key left after abort")
	}

	// A pending rotation survives a restart and commits.
	r, err = s.BeginRotate(keystore.RSA2048)
	if err != nil {
		t.Fatal(err)
	}
	if cur, _ := s.Current(); !eq(cur, old) {
		t.Fatal("BeginRotate changed the current key")
	}
	reopened, _ := Open(dir)
	p, ok, err := reopened.Pending()
	if err != nil || !ok || !eq(p.Signer(), r.Signer()) {
		t.Fatalf("pending after reopen: %v %v", ok, err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	cur, err := reopened.Current()
	if err != nil || !eq(cur, r.Signer()) {
		t.Fatalf("commit did not make the new key current: %v", err)
	}
	if _, ok := cur.(*rsa.PrivateKey); !ok {
		t.Fatalf("rotated to %T, want RSA", cur)
	}
	if _, ok, _ := reopened.Pending(); ok {
		t.Fatal("pending key left after commit")
	}
	if fi, _ := os.Stat(reopened.Path()); fi.Mode().Perm() != 0o600 {
		t.Fatalf("committed key mode %v", fi.Mode().Perm())
	}
	if reopened.Info().Backend != "file" {
		t.Fatal("info backend")
	}
}

func TestGenerateRejectsUnknown(t *testing.T) {
	if _, err := Generate("dsa-1024"); err == nil {
		t.Fatal("unknown algorithm accepted")
	}
}

// TestStoreRefusesBadFiles: the Store (not only LoadKey) refuses a key file
// others can read, names the fix, and reports damaged files instead of
// treating them as absent.
func TestStoreRefusesBadFiles(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, s *Store)
		op    func(s *Store) error
		want  string
	}{
		{"current world readable", func(t *testing.T, s *Store) {
			if _, err := s.Create(keystore.ECDSAP256); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(s.Path(), 0o644); err != nil {
				t.Fatal(err)
			}
		}, func(s *Store) error { _, err := s.Current(); return err }, "run: chmod 600 "},
		{"current corrupt", func(t *testing.T, s *Store) {
			if err := os.WriteFile(s.Path(), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, func(s *Store) error { _, err := s.Current(); return err }, KeyFile},
		{"pending group readable", func(t *testing.T, s *Store) {
			if _, err := s.BeginRotate(keystore.ECDSAP256); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(filepath.Dir(s.Path()), PendingFile), 0o640); err != nil {
				t.Fatal(err)
			}
		}, func(s *Store) error { _, _, err := s.Pending(); return err }, "chmod 600"},
		{"pending not a key", func(t *testing.T, s *Store) {
			if err := os.WriteFile(filepath.Join(filepath.Dir(s.Path()), PendingFile), []byte("garbage"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, func(s *Store) error { _, _, err := s.Pending(); return err }, "no PEM block"},
		{"commit after abort", nil, func(s *Store) error {
			r, err := s.BeginRotate(keystore.ECDSAP256)
			if err != nil {
				return err
			}
			if err := r.Abort(); err != nil {
				return err
			}
			return r.Commit()
		}, "commit rotated key"},
		{"unknown algorithm", nil, func(s *Store) error { _, err := s.Create("ed448"); return err }, "unsupported algorithm"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if c.setup != nil {
				c.setup(t, s)
			}
			err = c.op(s)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
		})
	}
}

// TestRotationAlgorithms: every algorithm can be created and rotated to,
// and a second BeginRotate replaces the first pending key.
func TestRotationAlgorithms(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(keystore.RSA3072); err != nil {
		t.Fatal(err)
	}
	cur, _ := s.Current()
	if k, ok := cur.(*rsa.PrivateKey); !ok || k.N.BitLen() != 3072 {
		t.Fatalf("created %T, want RSA-3072", cur)
	}
	first, err := s.BeginRotate(keystore.RSA2048)
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.BeginRotate(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	p, ok, err := s.Pending()
	if err != nil || !ok {
		t.Fatalf("pending: %v %v", ok, err)
	}
	if !p.Signer().Public().(*ecdsa.PublicKey).Equal(second.Signer().Public()) {
		t.Fatal("pending is not the latest BeginRotate")
	}
	if _, isRSA := first.Signer().(*rsa.PrivateKey); !isRSA {
		t.Fatal("first rotation key type")
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if cur, _ := s.Current(); !cur.Public().(*ecdsa.PublicKey).Equal(second.Signer().Public()) {
		t.Fatal("commit did not install the latest key")
	}
}
