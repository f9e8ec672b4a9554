package ca

import (
	"context"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/enroll/est"
)

func tool(t *testing.T, name string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is not installed; `make test` installs it (scripts/test-deps.sh)", name)
	}
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestCurlAndOpenSSLClient enrolls and reenrolls with curl and openssl,
// implementations independent of ours, and verifies the results with
// openssl verify.
func TestCurlAndOpenSSLClient(t *testing.T) {
	s := newTestServer(t, Options{})
	w := t.TempDir()
	p := func(f string) string { return filepath.Join(w, f) }
	if err := os.WriteFile(p("root.pem"), encodeCertPEM(s.ca.Root()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("inter.pem"), encodeCertPEM(s.ca.Intermediate()), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := s.token(t, TokenOptions{Pattern: "curl-*"})

	tool(t, "openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p("key.pem"))
	tool(t, "openssl", "req", "-new", "-key", p("key.pem"), "-subj", "/CN=curl-1", "-outform", "DER", "-out", p("csr.der"))
	// openssl base64 wraps lines at 64 columns with LF.
	if err := os.WriteFile(p("csr.b64"), []byte(tool(t, "openssl", "base64", "-in", p("csr.der"))), 0o600); err != nil {
		t.Fatal(err)
	}

	decode := func(body, out string) {
		t.Helper()
		raw, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(body), ""))
		if err != nil {
			t.Fatalf("response is not base64: %v\n%s", err, body)
		}
		if err := os.WriteFile(p("resp.p7"), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		tool(t, "openssl", "pkcs7", "-inform", "DER", "-in", p("resp.p7"), "-print_certs", "-out", out)
	}
	verify := func(chain string) {
		t.Helper()
		if out := tool(t, "openssl", "verify", "-purpose", "sslclient", "-CAfile", p("root.pem"), "-untrusted", p("inter.pem"), chain); !strings.Contains(out, ": OK") {
			t.Fatalf("openssl verify: %s", out)
		}
	}

	body := tool(t, "curl", "-sS", "--fail-with-body", "--cacert", p("root.pem"), "-u", tok.ID+":"+tok.Secret,
		"-H", "Content-Type: "+est.MediaPKCS10, "--data-binary", "@"+p("csr.b64"), s.url+est.Path("", est.OpSimpleEnroll))
	decode(body, p("cert.pem"))
	verify(p("cert.pem"))
	if subj := tool(t, "openssl", "x509", "-in", p("cert.pem"), "-noout", "-subject", "-ext", "subjectAltName,extendedKeyUsage"); !strings.Contains(subj, "CN=curl-1") && !strings.Contains(subj, "CN = curl-1") ||
		!strings.Contains(subj, "URI:urn:edgeagent:device:curl-1") || !strings.Contains(subj, "TLS Web Client Authentication") {
		t.Fatalf("issued certificate:\n%s", subj)
	}

	// A renewal CSR copies the Subject and SubjectAltName of the
	// certificate (RFC 7030 §4.2.2); the enrollment CSR (no SAN) is refused.
	body = tool(t, "curl", "-sS", "--cacert", p("root.pem"), "--cert", p("cert.pem"), "--key", p("key.pem"), "-w", "\n%{http_code}",
		"-H", "Content-Type: "+est.MediaPKCS10, "--data-binary", "@"+p("csr.b64"), s.url+est.Path("", est.OpSimpleReenroll))
	if !strings.HasSuffix(body, "\n400") || !strings.Contains(body, string(est.CodeIdentityMismatch)) {
		t.Fatalf("reenroll with a CSR lacking the certificate's SAN: %s", body)
	}
	tool(t, "openssl", "req", "-new", "-key", p("key.pem"), "-subj", "/CN=curl-1", "-addext", "subjectAltName=URI:urn:edgeagent:device:curl-1", "-outform", "DER", "-out", p("recsr.der"))
	if err := os.WriteFile(p("recsr.b64"), []byte(tool(t, "openssl", "base64", "-in", p("recsr.der"))), 0o600); err != nil {
		t.Fatal(err)
	}
	body = tool(t, "curl", "-sS", "--fail-with-body", "--cacert", p("root.pem"), "--cert", p("cert.pem"), "--key", p("key.pem"),
		"-H", "Content-Type: "+est.MediaPKCS10, "--data-binary", "@"+p("recsr.b64"), s.url+est.Path("", est.OpSimpleReenroll))
	decode(body, p("renewed.pem"))
	verify(p("renewed.pem"))

	// openssl reads /csrattrs as asking for the CN and a P-256 key.
	body = tool(t, "curl", "-sS", "--fail-with-body", "--cacert", p("root.pem"), s.url+est.Path("", est.OpCSRAttrs))
	raw, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(body), ""))
	if err != nil {
		t.Fatalf("csrattrs is not base64: %v\n%s", err, body)
	}
	if err := os.WriteFile(p("attrs.der"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	parsed := tool(t, "openssl", "asn1parse", "-inform", "DER", "-in", p("attrs.der"))
	for _, want := range []string{"commonName", "ecdsa-with-SHA256", "id-ecPublicKey", "prime256v1"} {
		mustContain(t, "openssl asn1parse of csrattrs", parsed, want)
	}

	dev, err := s.ca.Device(context.Background(), "curl-1")
	if err != nil || dev.Enrollments != 2 {
		t.Fatalf("device after curl reenroll: %+v %v", dev, err)
	}
}
