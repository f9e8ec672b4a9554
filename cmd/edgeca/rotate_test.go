package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func cacertsOf(t *testing.T, u string, trust []*x509.Certificate) []*x509.Certificate {
	t.Helper()
	_, certs, err := estCall(httpsClient(trust, nil), http.MethodGet, u, "cacerts", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func contains(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range list {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

// TestRotateIntermediateThenRoot walks a device enrolled under the first
// root through an intermediate rotation and a root rollover without
// enrolling again, with the root key kept offline: both intermediates are
// in /cacerts during the overlap, new certificates come from the new one,
// a device that trusts only the old root accepts the rolled-over server
// and learns the new root, and retire refuses while a device has not
// renewed since.
func TestRotateIntermediateThenRoot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	rootKey := filepath.Join(t.TempDir(), "root-key.pem")
	mustRun(t, "init", "--dir", dir, "--root-key-out", rootKey)
	root1 := readRoot(t, dir)
	inter1 := mustCerts(t, filepath.Join(dir, "intermediate.pem"))[0]

	u := serveStoppable(t, dir)
	tok := newToken(t, dir, "--url", u.url, "--uses", "2", "--pattern", "dev-*")
	a, err := enrollDevice(u.url, tok, root1, "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := enrollDevice(u.url, tok, root1, "dev-b") // never renews
	if err != nil {
		t.Fatal(err)
	}
	u.stop()

	// The root key is offline: rotation says where to give it.
	if code, _, errOut := edgeca(t, "rotate", "intermediate", "--dir", dir); code == 0 || !strings.Contains(errOut, "--root-key") {
		t.Fatalf("rotate without the offline root key: %d %s", code, errOut)
	}
	mustRun(t, "rotate", "intermediate", "--dir", dir, "--root-key", rootKey)
	inter2 := mustCerts(t, filepath.Join(dir, "intermediate.pem"))[0]
	if inter2.Equal(inter1) || inter2.CheckSignatureFrom(root1) != nil {
		t.Fatalf("the new intermediate %q is not a new one under the root", inter2.Subject)
	}
	u = serveStoppable(t, dir)
	pub := cacertsOf(t, u.url, []*x509.Certificate{root1})
	for _, c := range []*x509.Certificate{inter1, inter2, root1} {
		if !contains(pub, c) {
			t.Errorf("/cacerts during the overlap lacks %q", c.Subject.CommonName)
		}
	}
	if err := a.renew(u.url); err != nil {
		t.Fatalf("a device holding a certificate of the old intermediate renews: %v", err)
	}
	if err := a.chain[0].CheckSignatureFrom(inter2); err != nil {
		t.Errorf("renewed certificate not issued by the new intermediate: %v", err)
	}
	u.stop()

	// Root rollover: the new root key goes offline too.
	if code, _, errOut := edgeca(t, "rotate", "root", "--dir", dir, "--root-key", rootKey); code == 0 || !strings.Contains(errOut, "--root-key-out") {
		t.Fatalf("rotate root without --root-key-out: %d %s", code, errOut)
	}
	rootKey2 := filepath.Join(t.TempDir(), "root2-key.pem")
	mustRun(t, "rotate", "root", "--dir", dir, "--root-key", rootKey, "--root-key-out", rootKey2)
	root2 := readRoot(t, dir)
	if root2.Equal(root1) {
		t.Fatal("root.pem did not change")
	}
	u = serveStoppable(t, dir)
	// A device that trusts only the old root accepts the server.
	pub = cacertsOf(t, u.url, []*x509.Certificate{root1})
	if !contains(pub, root2) || !contains(pub, root1) {
		t.Errorf("/cacerts after the rollover lacks a root")
	}
	if err := a.renew(u.url); err != nil {
		t.Fatalf("renew across the root rollover: %v", err)
	}
	if !contains(a.bundle, root2) {
		t.Errorf("the device did not learn the new root from /cacerts")
	}
	if _, err := a.chain[0].Verify(x509.VerifyOptions{Roots: pool(root2), Intermediates: pool(a.chain[1:]...), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the renewed certificate does not chain to the new root: %v", err)
	}
	// A relying party that still holds only the old root accepts the new
	// chain through the cross certificate from /cacerts.
	if _, err := a.chain[0].Verify(x509.VerifyOptions{Roots: pool(root1), Intermediates: pool(pub...), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the renewed certificate does not chain to the old root through /cacerts: %v", err)
	}
	// Renewing again against the new root only (the device's next renewal).
	if err := a.renew(u.url); err != nil {
		t.Fatalf("second renewal after the rollover: %v", err)
	}
	// A fresh token pins the new root and enrolls.
	tok2 := newToken(t, dir, "--url", u.url, "--device", "dev-c")
	if _, err := enrollDevice(u.url, tok2, root2, "dev-c"); err != nil {
		t.Fatalf("enroll with a token made after the rollover: %v", err)
	}
	// The broker's cafile: the published bundle.
	bundle := mustRun(t, "cacerts", "--dir", dir)
	for _, c := range []*x509.Certificate{root1, root2, inter1, inter2} {
		if !strings.Contains(bundle, string(pemOf(c))) {
			t.Errorf("edgeca cacerts lacks %q", c.Subject.CommonName)
		}
	}
	u.stop()

	// dev-b never renewed: retire waits for it.
	if code, _, errOut := edgeca(t, "rotate", "retire", "--dir", dir); code == 0 || !strings.Contains(errOut, "dev-b") {
		t.Fatalf("retire while dev-b holds a certificate of a retiring intermediate: %d %s", code, errOut)
	}
	if err := b.chain[0].CheckSignatureFrom(inter1); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "rotate", "retire", "--dir", dir, "--force")
	u = serveStoppable(t, dir)
	pub = cacertsOf(t, u.url, []*x509.Certificate{root2})
	if len(pub) != 2 || contains(pub, root1) {
		t.Errorf("/cacerts after retire holds %d certificates (old root: %v), want the intermediate and the root", len(pub), contains(pub, root1))
	}
	if err := a.renew(u.url); err != nil {
		t.Fatalf("renew after retire: %v", err)
	}
	if err := b.renew(u.url); err == nil {
		t.Error("a certificate of a retired intermediate still renews")
	}
	u.stop()
}

func mustCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	c, err := readPEMCerts(path)
	if err != nil || len(c) == 0 {
		t.Fatalf("read %s: %v", path, err)
	}
	return c
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func pemOf(c *x509.Certificate) []byte {
	var b bytes.Buffer
	_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	return b.Bytes()
}

type stoppable struct {
	url  string
	stop func()
}

// serveStoppable is serve that the test stops (and waits for) before the
// next rotation: a rotation takes effect when serve starts.
func serveStoppable(t *testing.T, dir string, extra ...string) stoppable {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), "addr")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var logs bytes.Buffer
	go func() {
		done <- run(ctx, append([]string{"serve", "--dir", dir, "--listen", "127.0.0.1:0", "--addr-file", addrFile, "--health-listen", "off"}, extra...), io.Discard, &logs)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if code := <-done; code != 0 {
				t.Errorf("serve exited %d:\n%s", code, logs.String())
			}
		})
	}
	t.Cleanup(stop)
	return stoppable{url: "https://" + waitFile(t, addrFile), stop: stop}
}
