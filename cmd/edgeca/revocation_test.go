package main

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/enroll/token"
)

// TestRevocationCommands: device revoke (by id and --serial), unrevoke,
// delete and enroll again, enforcer create (key 0600) and crl, as an
// operator types them.
func TestRevocationCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir)
	url := serve(t, dir)
	rootPEM, _ := os.ReadFile(filepath.Join(dir, "root.pem"))
	blk, _ := pem.Decode(rootPEM)
	root, _ := x509.ParseCertificate(blk.Bytes)
	newTok := func(id string) token.Token {
		tok, err := token.Parse(strings.TrimSpace(mustRun(t, "token", "create", "--dir", dir, "--url", url, "--device", id)))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if code, body := enroll(t, newTok("cli-1"), root, "cli-1"); code != 200 {
		t.Fatalf("enroll: %d %s", code, body)
	}
	crl := func() *x509.RevocationList {
		out := mustRun(t, "crl", "--dir", dir)
		b, _ := pem.Decode([]byte(out))
		if b == nil || b.Type != "X509 CRL" {
			t.Fatalf("edgeca crl printed %q", out)
		}
		l, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	for _, step := range []struct {
		args    []string
		entries int
	}{
		{[]string{"device", "revoke", "--dir", dir, "CLI-1"}, 1},
		{[]string{"device", "unrevoke", "--dir", dir, "cli-1"}, 0},
		{[]string{"device", "delete", "--dir", dir, "cli-1"}, 1},
	} {
		mustRun(t, step.args...)
		if n := len(crl().RevokedCertificateEntries); n != step.entries {
			t.Fatalf("after %v: %d CRL entries, want %d", step.args, n, step.entries)
		}
	}
	if code, body := enroll(t, newTok("cli-1"), root, "cli-1"); code != 200 {
		t.Fatalf("enroll after delete: %d %s", code, body)
	}
	if code, _, errOut := edgeca(t, "device", "revoke", "--dir", dir, "--serial", "zz"); code == 0 || !strings.Contains(errOut, "hex") {
		t.Fatalf("revoke --serial zz: exit %d: %s", code, errOut)
	}
	out := t.TempDir()
	mustRun(t, "enforcer", "create", "--dir", dir, "--out", out, "gw-1")
	fi, err := os.Stat(filepath.Join(out, "gw-1-key.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("enforcer key: %v %v", fi, err)
	}
	certPEM, _ := os.ReadFile(filepath.Join(out, "gw-1.pem"))
	cb, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil || len(cert.URIs) != 1 || cert.URIs[0].String() != "urn:edgeagent:enforcer:gw-1" || len(cert.CRLDistributionPoints) != 1 {
		t.Fatalf("enforcer certificate: %v %v %v", err, cert.URIs, cert.CRLDistributionPoints)
	}
	mustRun(t, "device", "revoke", "--dir", dir, "--serial", strings.ToUpper(cert.SerialNumber.Text(16)))
	if n := len(crl().RevokedCertificateEntries); n != 2 {
		t.Fatalf("after revoking the enforcer: %d CRL entries, want 2", n)
	}
	if code, _, _ := edgeca(t, "mosquitto-sync", "--ca-url", url); code == 0 {
		t.Fatal("mosquitto-sync without its flags succeeded")
	}
}
