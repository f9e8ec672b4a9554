package e2e

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/agent"
)

// pemCerts reads every certificate in a PEM file.
func pemCerts(t testing.TB, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := agent.ParseCertsPEM(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return certs
}

// writeUntrusted writes the intermediates of a chain file (all but the
// leaf) for openssl verify's -untrusted.
func writeUntrusted(t testing.TB, chain []*x509.Certificate) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "untrusted.pem")
	var buf []byte
	for _, c := range chain[1:] {
		buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(p, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// opensslVerify checks the leaf of chainFile against the CA bundle with
// openssl, an implementation independent of ours.
func opensslVerify(t testing.TB, caFile, chainFile string) {
	t.Helper()
	chain := pemCerts(t, chainFile)
	leaf := filepath.Join(t.TempDir(), "leaf.pem")
	if err := os.WriteFile(leaf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[0].Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"verify", "-purpose", "sslclient", "-CAfile", caFile}
	if len(chain) > 1 {
		args = append(args, "-untrusted", writeUntrusted(t, chain))
	}
	args = append(args, leaf)
	out := run(t, "openssl", args...)
	if !strings.Contains(out, ": OK") {
		t.Fatalf("openssl verify: %s", out)
	}
}

func TestEnrollRenewEndToEnd(t *testing.T) {
	requireTools(t, "openssl", "curl")
	caDir, url := startCA(t, "--cert-ttl", "1h")
	tok := strings.TrimSpace(run(t, built.ca, "token", "create", "--dir", caDir, "--url", url, "--device", "sensor-0001"))
	if !strings.HasPrefix(tok, "edgetok1.") {
		t.Fatalf("token create printed %q, want one token string", tok)
	}

	state := filepath.Join(t.TempDir(), "state")
	out := run(t, built.agent, "enroll", "--token", tok, "--state-dir", state, "--device-id", "sensor-0001")
	if !strings.Contains(out, "sensor-0001") {
		t.Fatalf("enroll output does not name the device:\n%s", out)
	}
	caFile, certFile, keyFile := filepath.Join(state, "ca.pem"), filepath.Join(state, "cert.pem"), filepath.Join(state, "key.pem")
	opensslVerify(t, caFile, certFile)

	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem mode %v, want 0600", fi.Mode().Perm())
	}
	leaf := pemCerts(t, certFile)[0]
	if leaf.Subject.CommonName != "sensor-0001" || len(leaf.URIs) != 1 || leaf.URIs[0].String() != "urn:edgeagent:device:sensor-0001" {
		t.Fatalf("leaf identity: CN=%q URIs=%v", leaf.Subject.CommonName, leaf.URIs)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("leaf EKU %v, want clientAuth only", leaf.ExtKeyUsage)
	}

	// The token was single-use: a second device cannot use it.
	if _, errOut, err := runErr(t, built.agent, "enroll", "--token", tok, "--state-dir", filepath.Join(t.TempDir(), "s2"), "--device-id", "sensor-0001"); err == nil {
		t.Fatal("second enrollment with a single-use token succeeded")
	} else if !strings.Contains(errOut, "token_invalid") {
		t.Fatalf("second enrollment failed without naming the token: %s", errOut)
	}

	// Renew over mTLS (simplereenroll), same key, then with a new key.
	keyBefore, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	run(t, built.agent, "renew", "--state-dir", state)
	renewed := pemCerts(t, certFile)[0]
	if renewed.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("renew kept the old serial")
	}
	if !renewed.NotAfter.After(leaf.NotAfter.Add(-1)) || renewed.Subject.CommonName != "sensor-0001" {
		t.Fatalf("renewed cert: CN=%q notAfter=%v", renewed.Subject.CommonName, renewed.NotAfter)
	}
	opensslVerify(t, caFile, certFile)
	if keyAfter, _ := os.ReadFile(keyFile); string(keyAfter) != string(keyBefore) {
		t.Fatal("renew without --rekey changed the key")
	}
	run(t, built.agent, "renew", "--state-dir", state, "--rekey")
	if keyAfter, _ := os.ReadFile(keyFile); string(keyAfter) == string(keyBefore) {
		t.Fatal("renew --rekey kept the old key")
	}
	opensslVerify(t, caFile, certFile)

	// edgeca knows the device and its current serial.
	show := run(t, built.ca, "device", "show", "--dir", caDir, "sensor-0001")
	if !strings.Contains(strings.ToLower(show), "sensor-0001") {
		t.Fatalf("device show: %s", show)
	}

	// Revoked devices cannot renew.
	run(t, built.ca, "device", "revoke", "--dir", caDir, "sensor-0001")
	if _, errOut, err := runErr(t, built.agent, "renew", "--state-dir", state); err == nil {
		t.Fatal("renew succeeded for a revoked device")
	} else if !strings.Contains(errOut, "device_revoked") {
		t.Fatalf("renew of a revoked device failed without saying so: %s", errOut)
	}
	// ...and the failed renewal left the working identity in place.
	opensslVerify(t, caFile, certFile)
}

// TestCurlIsAnESTClient uses curl, the seed-style client, with the identity
// edgeagent enrolled: it fetches cacerts and reenrolls with an openssl CSR.
func TestCurlIsAnESTClient(t *testing.T) {
	requireTools(t, "openssl", "curl")
	caDir, url := startCA(t)
	tok := strings.TrimSpace(run(t, built.ca, "token", "create", "--dir", caDir, "--url", url, "--pattern", "cam-*"))
	state := filepath.Join(t.TempDir(), "state")
	run(t, built.agent, "enroll", "--token", tok, "--state-dir", state, "--device-id", "cam-7")
	caFile, certFile, keyFile := filepath.Join(state, "ca.pem"), filepath.Join(state, "cert.pem"), filepath.Join(state, "key.pem")
	work := t.TempDir()

	// cacerts over server-authenticated TLS.
	b64 := run(t, "curl", "-sS", "--fail-with-body", "--cacert", caFile, url+"/.well-known/est/cacerts")
	der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(b64), ""))
	if err != nil {
		t.Fatalf("cacerts body is not base64: %v\n%s", err, b64)
	}
	p7 := filepath.Join(work, "cacerts.p7")
	if err := os.WriteFile(p7, der, 0o600); err != nil {
		t.Fatal(err)
	}
	if certs := run(t, "openssl", "pkcs7", "-inform", "DER", "-in", p7, "-print_certs"); strings.Count(certs, "BEGIN CERTIFICATE") < 2 {
		t.Fatalf("cacerts should carry the intermediate and the root:\n%s", certs)
	}

	// simplereenroll with curl's mTLS and an openssl-made CSR for the same key.
	csr := filepath.Join(work, "csr.der")
	run(t, "openssl", "req", "-new", "-key", keyFile, "-subj", "/CN=cam-7",
		"-addext", "subjectAltName=URI:urn:edgeagent:device:cam-7", "-outform", "DER", "-out", csr)
	csrDER, err := os.ReadFile(csr)
	if err != nil {
		t.Fatal(err)
	}
	body := filepath.Join(work, "csr.b64")
	if err := os.WriteFile(body, []byte(base64.StdEncoding.EncodeToString(csrDER)), 0o600); err != nil {
		t.Fatal(err)
	}
	resp := run(t, "curl", "-sS", "--fail-with-body", "--cacert", caFile, "--cert", certFile, "--key", keyFile,
		"-H", "Content-Type: application/pkcs10", "-H", "Content-Transfer-Encoding: base64",
		"--data-binary", "@"+body, url+"/.well-known/est/simplereenroll")
	der, err = base64.StdEncoding.DecodeString(strings.Join(strings.Fields(resp), ""))
	if err != nil {
		t.Fatalf("simplereenroll body is not base64: %v\n%s", err, resp)
	}
	if err := os.WriteFile(p7, der, 0o600); err != nil {
		t.Fatal(err)
	}
	newChain := filepath.Join(work, "new.pem")
	run(t, "openssl", "pkcs7", "-inform", "DER", "-in", p7, "-print_certs", "-out", newChain)
	opensslVerify(t, caFile, newChain)
	if got := pemCerts(t, newChain)[0]; got.Subject.CommonName != "cam-7" {
		t.Fatalf("reenrolled CN %q", got.Subject.CommonName)
	}

	// Without a client certificate the same request is refused.
	_, _, err = runErr(t, "curl", "-sS", "--fail-with-body", "--cacert", caFile,
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+body, url+"/.well-known/est/simplereenroll")
	if err == nil {
		t.Fatal("simplereenroll without a client certificate succeeded")
	}
}
