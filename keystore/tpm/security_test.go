package tpm

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

// TestKeyNotExtractable checks, through the TPM itself, that the device key
// was generated inside the TPM and can never leave it, and that nothing in
// the state directory holds a private key in the clear.
func TestKeyNotExtractable(t *testing.T) {
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			sw := swtpm.Start(t)
			dir := t.TempDir()
			s := openStore(t, sw, dir)
			k, err := s.Create(alg)
			if err != nil {
				t.Fatal(err)
			}
			// Ask the TPM, not our cached copy, what the loaded object is.
			s.mu.Lock()
			rp, err := tpm2.ReadPublic{ObjectHandle: k.(*key).handle}.Execute(s.tpm)
			s.mu.Unlock()
			if err != nil {
				t.Fatalf("ReadPublic: %v", err)
			}
			pa, err := rp.OutPublic.Contents()
			if err != nil {
				t.Fatal(err)
			}
			a := pa.ObjectAttributes
			for name, ok := range map[string]bool{
				"fixedTPM":            a.FixedTPM,
				"fixedParent":         a.FixedParent,
				"sensitiveDataOrigin": a.SensitiveDataOrigin,
				"sign":                a.SignEncrypt,
				"userWithAuth":        a.UserWithAuth,
				"not decrypt":         !a.Decrypt,
				"not restricted":      !a.Restricted,
			} {
				if !ok {
					t.Errorf("key attributes: want %s", name)
				}
			}
			if !bytes.Equal(rp.OutPublic.Bytes(), k.(*key).pub.Bytes()) {
				t.Error("the TPM's public area differs from the stored one")
			}

			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
				p := filepath.Join(dir, e.Name())
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Contains(b, []byte("PRIVATE KEY")) || bytes.Contains(b, []byte("-----BEGIN")) {
					t.Errorf("%s contains PEM data", p)
				}
				fi, _ := e.Info()
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("%s has mode %04o, want 0600", p, fi.Mode().Perm())
				}
			}
			if strings.Join(names, ",") != PrivFile+","+PubFile {
				t.Errorf("state dir holds %v, want only %s and %s", names, PrivFile, PubFile)
			}
		})
	}
}

// TestBlobsFromAnotherTPM moves the key blobs to a second, freshly
// manufactured TPM, which must refuse them with the "different TPM" error.
func TestBlobsFromAnotherTPM(t *testing.T) {
	first := swtpm.Start(t)
	dir := t.TempDir()
	s := openStore(t, first, dir)
	if _, err := s.Create(keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	s.Close()

	second := swtpm.Start(t)
	s2 := openStore(t, second, dir)
	_, err := s2.Current()
	if !errors.Is(err, ErrForeignKey) {
		t.Fatalf("Current on another TPM: got %v, want ErrForeignKey", err)
	}
	t.Logf("error on another TPM: %v", err)
	for _, want := range []string{"different TPM", dir, "re-enroll"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// Pending blobs are checked the same way.
	for _, f := range [][2]string{{PubFile, NextPubFile}, {PrivFile, NextPrivFile}} {
		b, _ := os.ReadFile(filepath.Join(dir, f[0]))
		if err := os.WriteFile(filepath.Join(dir, f[1]), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s2.Pending(); !errors.Is(err, ErrForeignKey) {
		t.Fatalf("Pending on another TPM: got %v, want ErrForeignKey", err)
	}
}

func TestPrivateBlobPermissions(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	s := openStore(t, sw, dir)
	if _, err := s.Create(keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	s.Close()
	priv := filepath.Join(dir, PrivFile)
	if err := os.Chmod(priv, 0o644); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, sw, dir)
	_, err := s.Current()
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+priv) {
		t.Fatalf("Current with a 0644 private blob: got %v, want an error saying chmod 600 %s", err, priv)
	}
}

func TestDamagedBlobs(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	s := openStore(t, sw, dir)
	if _, err := s.Create(keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	s.Close()
	pub := filepath.Join(dir, PubFile)
	b, _ := os.ReadFile(pub)
	if err := os.WriteFile(pub, b[:len(b)-3], 0o600); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, sw, dir)
	if _, err := s.Current(); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("Current with a truncated public blob: got %v, want a 'damaged' error", err)
	}
	if err := os.Remove(filepath.Join(dir, PrivFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pub, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Current(); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("Current without a private blob: got %v, want an 'incomplete' error", err)
	}
}

// TestAuthValueAndLockout uses a key with an auth value, then a wrong one
// until the TPM's dictionary-attack protection locks out.
func TestAuthValueAndLockout(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	good := func(o *Options) { o.AuthValue = []byte("correct horse") }
	bad := func(o *Options) { o.AuthValue = []byte("battery staple") }
	d := sha256.Sum256([]byte("x"))

	s := openStore(t, sw, dir, good)
	k, err := s.Create(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
		t.Fatalf("Sign with the right auth value: %v", err)
	}
	s.Close()

	s = openStore(t, sw, dir, bad)
	k, err = s.Current()
	if err != nil {
		t.Fatalf("Current (loading needs only the parent's auth): %v", err)
	}
	_, err = k.Sign(rand.Reader, d[:], crypto.SHA256)
	if !errors.Is(err, ErrKeyAuth) || !errors.Is(err, tpm2.TPMRCAuthFail) {
		t.Fatalf("Sign with a wrong auth value: got %v, want ErrKeyAuth wrapping TPM_RC_AUTH_FAIL", err)
	}
	// Keep failing until the TPM locks out; a fresh swtpm allows a few
	// failures (maxTries), far fewer than 50.
	for i := 0; i < 50 && !errors.Is(err, ErrLockout); i++ {
		_, err = k.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	if !errors.Is(err, ErrLockout) || !strings.Contains(err.Error(), "lockout") {
		t.Fatalf("after repeated wrong auth values: got %v, want ErrLockout", err)
	}
	s.Close()
	// Lockout applies to the right value too until it is reset.
	s = openStore(t, sw, dir, good)
	k, err = s.Current()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, ErrLockout) {
		t.Fatalf("Sign with the right auth value during lockout: got %v, want ErrLockout", err)
	}
}

// TestOwnerAuth sets an owner password on the TPM, as some IT departments
// do, and checks the error without it and that OwnerAuth fixes it.
func TestOwnerAuth(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	s := openStore(t, sw, dir)
	s.mu.Lock()
	_, err := tpm2.HierarchyChangeAuth{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NewAuth:    tpm2.TPM2BAuth{Buffer: []byte("owner-secret")},
	}.Execute(s.tpm)
	s.mu.Unlock()
	if err != nil {
		t.Fatalf("set owner auth: %v", err)
	}
	_, err = s.Create(keystore.ECDSAP256)
	if !errors.Is(err, ErrOwnerAuth) || !strings.Contains(err.Error(), "owner") {
		t.Fatalf("Create without owner auth: got %v, want ErrOwnerAuth", err)
	}
	if _, err := os.Stat(filepath.Join(dir, PubFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a failed Create left %s behind", PubFile)
	}
	s.Close()

	s = openStore(t, sw, dir, func(o *Options) { o.OwnerAuth = []byte("owner-secret") })
	k, err := s.Create(keystore.ECDSAP256)
	if err != nil {
		t.Fatalf("Create with owner auth: %v", err)
	}
	d := sha256.Sum256([]byte("y"))
	if _, err := k.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}
}
