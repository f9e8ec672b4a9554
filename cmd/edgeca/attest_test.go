package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/ca"
	caattest "github.com/edgeagent/edgeagent/ca/attest"
	enrollc "github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/keystore/tpm"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

// TestCLIAttestedEnrollment: edgeca serve --attest-roots with the
// manufacturer's PEMs, a --require-tpm token that refuses a software key
// and enrolls a swtpm key with attestation, and device show with the EK.
func TestCLIAttestedEnrollment(t *testing.T) {
	m := swtpm.TestManufacturer(t)
	sim := swtpm.StartWithEK(t, m)
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir)
	var bundle []byte
	for _, p := range []string{m.RootPEM, m.IssuerPEM} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		bundle = append(bundle, b...)
	}
	rootsFile := filepath.Join(t.TempDir(), "tpm-roots.pem")
	if err := os.WriteFile(rootsFile, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	serve(t, dir, "--attest-roots", rootsFile, "--attest-recovery")
	c, err := ca.Open(context.Background(), dir, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root := c.Root()
	c.Close()

	_, stderr := mustRunBoth(t, "token", "create", "--dir", dir, "--device", "tpm-1", "--require-tpm", "--uses", "2")
	if !strings.Contains(stderr, "requires TPM attestation") {
		t.Fatalf("token create does not say it requires attestation:\n%s", stderr)
	}
	tok, err := token.Parse(strings.TrimSpace(lastOut))
	if err != nil {
		t.Fatal(err)
	}
	if list := mustRun(t, "token", "list", "--dir", dir); !strings.Contains(list, "device tpm-1, TPM-attested only") {
		t.Fatalf("token list does not show the requirement:\n%s", list)
	}
	if list := mustRun(t, "token", "list", "--dir", dir, "--json"); !strings.Contains(list, `"require_tpm": true`) {
		t.Fatalf("token list --json does not show the requirement:\n%s", list)
	}
	if code, body := enroll(t, tok, root, "tpm-1"); code != http.StatusForbidden || !strings.Contains(body, "attestation_required") {
		t.Fatalf("software key with a --require-tpm token: %d %s", code, body)
	}

	ks, err := tpm.Open(tpm.Options{Address: sim.Addr(), Dir: filepath.Join(t.TempDir(), "keys")})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	key, err := ks.Create(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "tpm-1"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	cl, err := enrollc.New(enrollc.Options{Server: tok.URL, Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.AttestedEnroll(context.Background(), ks, csr, tok.ID, tok.Secret); err != nil {
		t.Fatalf("attested enrollment: %v", err)
	}
	end, err := ks.Endorsement()
	if err != nil {
		t.Fatal(err)
	}
	ekCert, err := caattest.ParseEKCert(end.RSACert)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := caattest.EKHash(ekCert.PublicKey)
	show := mustRun(t, "device", "show", "--dir", dir, "tpm-1")
	if !strings.Contains(show, "ek sha256:") || !strings.Contains(show, hexString(h[:])) {
		t.Fatalf("device show lacks the EK hash %x:\n%s", h, show)
	}
}

var lastOut string

func mustRunBoth(t *testing.T, args ...string) (string, string) {
	t.Helper()
	code, out, errOut := edgeca(t, args...)
	if code != 0 {
		t.Fatalf("edgeca %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	lastOut = out
	return out, errOut
}

func hexString(b []byte) string {
	const d = "0123456789abcdef"
	var sb strings.Builder
	for _, c := range b {
		sb.WriteByte(d[c>>4])
		sb.WriteByte(d[c&15])
	}
	return sb.String()
}
