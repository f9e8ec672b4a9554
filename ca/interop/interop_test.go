package interop

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/globalsign/est"
)

// edgeca builds the edgeca command from the parent module.
func edgeca(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "edgeca")
	goTool := os.Getenv("GO")
	if goTool == "" {
		goTool = "go"
	}
	cmd := exec.Command(goTool, "build", "-o", bin, "./cmd/edgeca")
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build edgeca: %v\n%s", err, out)
	}
	return bin
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", filepath.Base(name), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// server is a running `edgeca serve`.
type server struct {
	bin, dir, addr string
}

func startServer(t *testing.T, bin string) *server {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	run(t, bin, "init", "--dir", dir)
	addrFile := filepath.Join(t.TempDir(), "addr")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "serve", "--dir", dir, "--listen", "127.0.0.1:0", "--addr-file", addrFile)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("edgeca log:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := os.ReadFile(addrFile)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			return &server{bin: bin, dir: dir, addr: strings.TrimSpace(string(b))}
		}
		if time.Now().After(deadline) {
			t.Fatalf("edgeca serve did not write %s: %v\n%s", addrFile, err, logs.String())
		}
		time.Sleep(20 * time.Millisecond) // polling for the file, with a deadline
	}
}

// token creates an enrollment token and returns its Basic credentials
// (the token string is base64url of JSON after its "edgetok1." prefix).
func (s *server) token(t *testing.T, device string) (id, secret string) {
	t.Helper()
	out := strings.TrimSpace(run(t, s.bin, "token", "create", "--dir", s.dir, "--device", device, "--url", "https://"+s.addr))
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(out, "edgetok1."))
	if err != nil {
		t.Fatalf("token %q: %v", out, err)
	}
	var tok struct{ ID, Secret string }
	if err := json.Unmarshal(raw, &tok); err != nil {
		t.Fatal(err)
	}
	return tok.ID, tok.Secret
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func csr(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	r, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// renewalCSR copies the Subject and SubjectAltName of cur (RFC 7030 §4.2.2).
func renewalCSR(t *testing.T, key crypto.Signer, cur *x509.Certificate) *x509.CertificateRequest {
	return csr(t, key, &x509.CertificateRequest{Subject: cur.Subject, URIs: cur.URIs, DNSNames: cur.DNSNames})
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// verify runs openssl verify on cert against the CA's root and intermediate.
func (s *server) verify(t *testing.T, cert *x509.Certificate) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "cert.pem")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	out := run(t, "openssl", "verify", "-purpose", "sslclient", "-CAfile", filepath.Join(s.dir, "root.pem"),
		"-untrusted", filepath.Join(s.dir, "intermediate.pem"), f)
	if !strings.Contains(out, ": OK") {
		t.Fatalf("openssl verify: %s", out)
	}
}

// TestGlobalSignClient enrolls, renews and rekeys with the globalsign/est
// client against edgeca (which it accepts only if each answer holds exactly
// the issued certificate), reads /cacerts and /csrattrs with it, and checks
// every certificate with openssl verify.
func TestGlobalSignClient(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is not installed; `make test` installs it (scripts/test-deps.sh)")
	}
	s := startServer(t, edgeca(t))
	ctx := context.Background()
	root := readCert(t, filepath.Join(s.dir, "root.pem"))
	anchor := x509.NewCertPool()
	anchor.AddCert(root)
	const id = "gs-1"
	user, pass := s.token(t, id)

	c := &est.Client{Host: s.addr, ExplicitAnchor: anchor, Username: user, Password: pass, DisableKeepAlives: true}
	cas, err := c.CACerts(ctx)
	if err != nil {
		t.Fatalf("cacerts: %v", err)
	}
	if len(cas) != 2 || !cas[1].Equal(root) {
		t.Fatalf("cacerts: %d certificates, want intermediate and root", len(cas))
	}
	attrs, err := c.CSRAttrs(ctx)
	if err != nil {
		t.Fatalf("csrattrs: %v", err)
	}
	if len(attrs.OIDs) != 2 || len(attrs.Attributes) != 1 {
		t.Fatalf("csrattrs as globalsign reads it: %+v", attrs)
	}

	key := newKey(t)
	cert, err := c.Enroll(ctx, csr(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}))
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if cert.Subject.CommonName != id {
		t.Fatalf("enrolled %s", cert.Subject)
	}
	s.verify(t, cert)

	// Renew with the same key, authenticated by the certificate.
	rc := &est.Client{Host: s.addr, ExplicitAnchor: anchor, Certificates: []*x509.Certificate{cert}, PrivateKey: key, DisableKeepAlives: true}
	renewed, err := rc.Reenroll(ctx, renewalCSR(t, key, cert))
	if err != nil {
		t.Fatalf("reenroll: %v", err)
	}
	if renewed.SerialNumber.Cmp(cert.SerialNumber) == 0 || !renewed.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("reenroll did not renew the certificate for the same key")
	}
	s.verify(t, renewed)

	// Rekey: a new key, authenticated by the renewed certificate.
	newK := newKey(t)
	rc = &est.Client{Host: s.addr, ExplicitAnchor: anchor, Certificates: []*x509.Certificate{renewed}, PrivateKey: key, DisableKeepAlives: true}
	rekeyed, err := rc.Reenroll(ctx, renewalCSR(t, newK, renewed))
	if err != nil {
		t.Fatalf("rekey: %v", err)
	}
	if !rekeyed.PublicKey.(*ecdsa.PublicKey).Equal(newK.Public()) {
		t.Fatal("rekey: certificate is not for the new key")
	}
	s.verify(t, rekeyed)

	// A renewal CSR that changes the Subject is refused with a 4xx the
	// client reports.
	rc = &est.Client{Host: s.addr, ExplicitAnchor: anchor, Certificates: []*x509.Certificate{rekeyed}, PrivateKey: newK, DisableKeepAlives: true}
	_, err = rc.Reenroll(ctx, csr(t, newK, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id, Organization: []string{"Other"}}, URIs: rekeyed.URIs}))
	var estErr est.Error
	if !errors.As(err, &estErr) || estErr.StatusCode() != 400 || !strings.Contains(err.Error(), "identity_mismatch") {
		t.Fatalf("renewal with another Subject: %v", err)
	}

	// Without credentials: a 401 the client sees as one.
	_, err = (&est.Client{Host: s.addr, ExplicitAnchor: anchor, DisableKeepAlives: true}).Enroll(ctx, csr(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}))
	if !errors.As(err, &estErr) || estErr.StatusCode() != 401 {
		t.Fatalf("enroll without credentials: %v", err)
	}
}
