package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/keystore/file"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

func enrolled(t *testing.T, c *testpki.EdgeCA, id string) (string, *file.Store, *Identity) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	ks, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	tok := c.Token(t, id)
	ident, err := Enroll(context.Background(), EnrollOptions{StateDir: dir, DeviceID: id, Keystore: ks, Token: &tok, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return dir, ks, ident
}

func TestEnrollLoadRenew(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	dir, ks, ident := enrolled(t, c, "dev-a")
	if ident.Leaf().Subject.CommonName != "dev-a" || len(ident.CABundle) != 2 {
		t.Fatalf("identity %s, bundle %d", ident.Summary(), len(ident.CABundle))
	}
	loaded, err := LoadIdentity(dir, ks)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Serial() != ident.Serial() || loaded.Server != c.URL {
		t.Fatalf("loaded %s from %s", loaded.Summary(), loaded.Server)
	}
	renewed, err := Renew(context.Background(), RenewOptions{StateDir: dir, Keystore: ks, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Serial() == ident.Serial() || !samePublic(renewed.Key.Public(), ident.Key.Public()) {
		t.Fatal("renew without rekey: want a new serial and the same key")
	}
	rekeyed, err := Renew(context.Background(), RenewOptions{StateDir: dir, Keystore: ks, Rekey: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if samePublic(rekeyed.Key.Public(), ident.Key.Public()) {
		t.Fatal("rekey kept the key")
	}
	if _, ok, _ := ks.Pending(); ok {
		t.Fatal("rotation left pending after a successful rekey")
	}
	again, err := LoadIdentity(dir, ks)
	if err != nil || again.Serial() != rekeyed.Serial() {
		t.Fatalf("reload after rekey: %v", err)
	}
	if _, err := Enroll(context.Background(), EnrollOptions{StateDir: dir, DeviceID: "dev-a", Keystore: ks, Token: ptr(c.Token(t, "dev-a"))}); !errors.Is(err, ErrIdentityExists) {
		t.Fatalf("second enroll without force: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// TestFailedRenewalKeepsIdentity: a rekey the CA refuses leaves the old
// certificate and key in place, and no pending key behind.
func TestFailedRenewalKeepsIdentity(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	dir, ks, ident := enrolled(t, c, "dev-b")
	before := readAll(t, dir)
	if err := c.RevokeDevice(context.Background(), "dev-b"); err != nil {
		t.Fatal(err)
	}
	_, err := Renew(context.Background(), RenewOptions{StateDir: dir, Keystore: ks, Rekey: true, Timeout: 5 * time.Second})
	if !enroll.IsDeviceRevoked(err) {
		t.Fatalf("renew of a revoked device: %v", err)
	}
	if after := readAll(t, dir); after != before {
		t.Fatal("a failed renewal changed the state directory")
	}
	loaded, err := LoadIdentity(dir, ks)
	if err != nil || loaded.Serial() != ident.Serial() {
		t.Fatalf("identity after failed renewal: %v", err)
	}
}

// TestCrashBetweenCertAndKeyCommit: the new certificate was stored but the
// process died before the new key became current; loading finishes it.
func TestCrashBetweenCertAndKeyCommit(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	dir, ks, ident := enrolled(t, c, "dev-c")
	rot, err := ks.BeginRotate(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := enroll.BuildCSR(rot.Signer(), "dev-c")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := enroll.New(enroll.Options{Server: c.URL, Roots: ident.CAPool(), Certificate: ident.TLSCertificate})
	if err != nil {
		t.Fatal(err)
	}
	certs, err := cl.SimpleReenroll(context.Background(), csr)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := enroll.CheckIssued(certs, rot.Signer().Public(), "dev-c", ident.CABundle, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := saveIdentity(dir, ident.Meta, chain, ident.CABundle, ident.ServerRoots); err != nil {
		t.Fatal(err)
	}
	// "Crash": no Commit. A fresh keystore sees the pending key.
	ks2, _ := file.Open(dir)
	loaded, err := LoadIdentity(dir, ks2)
	if err != nil {
		t.Fatal(err)
	}
	if !samePublic(loaded.Key.Public(), rot.Signer().Public()) {
		t.Fatal("load did not finish the rotation")
	}
	if cur, _ := ks2.Current(); !samePublic(cur.Public(), rot.Signer().Public()) {
		t.Fatal("pending key not committed")
	}

	// A crash before the certificate was stored: the pending key is dropped.
	if _, err := ks2.BeginRotate(keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(dir, ks2); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := ks2.Pending(); ok {
		t.Fatal("orphan pending key kept")
	}
}

func TestLoadIdentityErrors(t *testing.T) {
	dir := t.TempDir()
	ks, _ := file.Open(dir)
	if _, err := LoadIdentity(dir, ks); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("empty dir: %v", err)
	}
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	sdir, sks, _ := enrolled(t, c, "dev-d")
	// A key that does not match the certificate.
	if err := os.Remove(filepath.Join(sdir, file.KeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := sks.Create(keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(sdir, sks); err == nil || !strings.Contains(err.Error(), "not for the device key") {
		t.Fatalf("mismatched key: %v", err)
	}
	if err := os.WriteFile(filepath.Join(sdir, CertFile), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(sdir, sks); err == nil || !strings.Contains(err.Error(), "no certificates") {
		t.Fatalf("garbage cert: %v", err)
	}
}

func readAll(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == LockFile { // its content is the last holder's pid
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(e.Name() + "\n" + string(data))
	}
	return b.String()
}
