package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
)

// TestCheckRetirable is the retirement decision, case by case.
func TestCheckRetirable(t *testing.T) {
	now := time.Now()
	root, rootKey, inter, interKey, err := initPKI(InitOptions{Name: "t"}, now)
	if err != nil {
		t.Fatal(err)
	}
	a := &authority{root: root, intermediate: inter, signer: interKey}
	leaf := func(ttl time.Duration, at time.Time) []byte {
		c, err := a.issueLeaf(newKey(t).Public(), "dev-1", ttl, at)
		if err != nil {
			t.Fatal(err)
		}
		return c.Raw
	}
	ik2, _ := newP256()
	other, err := newCACert("t issuing CA 2", &ik2.PublicKey, root, rootKey, 0, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	const grace = time.Hour
	for _, tc := range []struct {
		name    string
		dev     store.Device
		blocked bool
	}{
		{"unexpired certificate of the retiring CA", store.Device{ID: "d", Status: store.StatusActive, Cert: leaf(time.Hour, now)}, true},
		{"expired but within the renewal grace", store.Device{ID: "d", Status: store.StatusActive, Cert: leaf(time.Minute, now.Add(-30*time.Minute))}, true},
		{"expired past the renewal grace", store.Device{ID: "d", Status: store.StatusActive, Cert: leaf(time.Minute, now.Add(-2*time.Hour))}, false},
		{"revoked device", store.Device{ID: "d", Status: store.StatusRevoked, Cert: leaf(time.Hour, now)}, false},
		{"no certificate on record", store.Device{ID: "d", Status: store.StatusActive}, false},
		{"unparsable certificate", store.Device{ID: "d", Status: store.StatusActive, Cert: []byte("junk")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkRetirable([]store.Device{tc.dev}, []*x509.Certificate{inter, root}, grace, now)
			if got := errors.Is(err, ErrStillInUse); got != tc.blocked {
				t.Errorf("blocked %v (%v), want %v", got, err, tc.blocked)
			}
			// A CA that did not issue the certificate never blocks.
			if err := checkRetirable([]store.Device{tc.dev}, []*x509.Certificate{other, root}, grace, now); err != nil {
				t.Errorf("retiring another intermediate: %v", err)
			}
		})
	}
}

// TestRotationFinishesAfterACrash: a rotation interrupted after it staged
// its files leaves a CA that still opens (the old one), and the next
// rotate command finishes the interrupted one instead of making another.
func TestRotationFinishesAfterACrash(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(ctx, dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := RotateIntermediate(ctx, dir, RotateOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rotated := c.Intermediate()
	c.Close()
	// Simulate the crash: the next rotation's files staged, the marker
	// written, none renamed.
	for _, name := range []string{PreviousCAFile, IntermediateKeyFile, IntermediateCertFile} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+stagedSuffix), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, stagedMarker), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := Open(ctx, dir, Options{}); err != nil {
		t.Fatalf("open with staged files: %v", err)
	} else {
		c.Close()
	}
	res, err := RotateIntermediate(ctx, dir, RotateOptions{})
	if err != nil || !res.Finished {
		t.Fatalf("rotate after the crash: %+v %v, want it to finish the staged one", res, err)
	}
	c, err = Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Intermediate().Equal(rotated) {
		t.Error("finishing made another intermediate")
	}
	for _, name := range stagedOrder {
		if _, err := os.Stat(filepath.Join(dir, name+stagedSuffix)); err == nil {
			t.Errorf("%s%s left behind", name, stagedSuffix)
		}
	}
}

// TestRotationCutShortWhileStaging: a crash after a new key was staged but
// before its certificate (no marker) must not pair that key with the old
// certificate: the staged files are dropped, the rerun makes a whole new
// rotation, and the CA opens.
func TestRotationCutShortWhileStaging(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(ctx, dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	old := c.Intermediate()
	c.Close()
	stray, err := os.ReadFile(filepath.Join(dir, RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, IntermediateKeyFile+stagedSuffix), stray, 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := RotateIntermediate(ctx, dir, RotateOptions{})
	if err != nil || res.Finished || res.NewIntermediate == nil || res.NewIntermediate.Equal(old) {
		t.Fatalf("rotate after a cut-short staging: %+v %v, want a new rotation", res, err)
	}
	c, err = Open(ctx, dir, Options{})
	if err != nil {
		t.Fatalf("open after the rotation: %v", err)
	}
	defer c.Close()
	if !c.Intermediate().Equal(res.NewIntermediate) {
		t.Error("the CA does not issue from the new intermediate")
	}
	for _, name := range append([]string{stagedMarker}, stagedOrder...) {
		if _, err := os.Stat(filepath.Join(dir, name+stagedSuffix)); err == nil {
			t.Errorf("%s%s left behind", name, stagedSuffix)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, stagedMarker)); err == nil {
		t.Error("the marker is left behind")
	}
}

// TestOpenRefusesAForeignCrossCertificate: cross.pem must hold the
// current intermediate under another root, nothing else.
func TestOpenRefusesAForeignCrossCertificate(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(ctx, dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CrossCertFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, dir, Options{}); err == nil || !strings.Contains(err.Error(), CrossCertFile) {
		t.Errorf("open with the root as cross certificate: %v", err)
	}
}

// TestRestoreRefusesDamagedBackups: nothing is written unless every file
// matches the manifest and the manifest names only files of a CA
// directory.
func TestRestoreRefusesDamagedBackups(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(ctx, dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, backup string)
		want   string
	}{
		{"a file changed", func(t *testing.T, b string) {
			if err := os.WriteFile(filepath.Join(b, IntermediateCertFile), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "does not match"},
		{"a file missing", func(t *testing.T, b string) { os.Remove(filepath.Join(b, DBFile)) }, DBFile},
		{"a path in the manifest", func(t *testing.T, b string) {
			m, _ := os.ReadFile(filepath.Join(b, ManifestFile))
			m = []byte(strings.Replace(string(m), `"name": "root.pem"`, `"name": "../root.pem"`, 1))
			os.WriteFile(filepath.Join(b, ManifestFile), m, 0o644)
		}, "not a file of a CA directory"},
		{"no manifest", func(t *testing.T, b string) { os.Remove(filepath.Join(b, ManifestFile)) }, ManifestFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backup := filepath.Join(t.TempDir(), "backup")
			if _, err := Backup(ctx, dir, backup, BackupOptions{}); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, backup)
			target := filepath.Join(t.TempDir(), "restored")
			if _, err := Restore(ctx, backup, target, RestoreOptions{}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("restore: %v, want an error naming %q", err, tc.want)
			}
			if _, err := os.Stat(target); !os.IsNotExist(err) {
				t.Errorf("restore wrote %s: %v", target, err)
			}
		})
	}
}

// TestRotateRootWithTheKeyInTheDirectory: without --root-key the new root
// key replaces root-key.pem and the old one is kept by its fingerprint.
func TestRotateRootWithTheKeyInTheDirectory(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(ctx, dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err := RotateRoot(ctx, dir, RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if k, err := loadRootKey(dir, "", res.NewRoot); err != nil {
		t.Errorf("root-key.pem after the rollover: %v", err)
	} else if !keyMatches(res.NewRoot, k) {
		t.Error("root-key.pem is not the new root's key")
	}
	old, err := loadKey(filepath.Join(dir, "root-key."+fingerprint(res.OldRoot)[:16]+".retired.pem"))
	if err != nil || !keyMatches(res.OldRoot, old) {
		t.Errorf("the old root key was not kept: %v", err)
	}
	if err := res.Cross.CheckSignatureFrom(res.OldRoot); err != nil || !res.Cross.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(res.NewIntermediate.PublicKey) {
		t.Errorf("cross certificate: %v", err)
	}
	// And the intermediate key it replaced.
	if _, err := os.Stat(filepath.Join(dir, "intermediate-key."+fingerprint(res.OldIntermediate)[:16]+".retired.pem")); err != nil {
		t.Errorf("the old intermediate key was not kept: %v", err)
	}
}

// TestPGConn: the password leaves the URL for PGPASSWORD.
func TestPGConn(t *testing.T) {
	for _, tc := range []struct{ in, url, pw string }{
		{"postgres://edgeca:s3cret@db.example/edgeca?sslmode=verify-full", "postgres://edgeca@db.example/edgeca?sslmode=verify-full", "s3cret"},
		{"postgres://edgeca@db.example/edgeca", "postgres://edgeca@db.example/edgeca", ""},
		{"postgres://db.example/edgeca", "postgres://db.example/edgeca", ""},
	} {
		u, env := pgConn(tc.in)
		pw := ""
		for _, e := range env {
			if v, ok := strings.CutPrefix(e, "PGPASSWORD="); ok {
				pw = v
			}
		}
		if u != tc.url || pw != tc.pw {
			t.Errorf("pgConn(%q) = %q, PGPASSWORD %q; want %q, %q", tc.in, u, pw, tc.url, tc.pw)
		}
	}
}
