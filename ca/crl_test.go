package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/revocation"
)

// fetchCRL gets the CRL over plain HTTP from the distribution point a leaf
// names, as a relying party would.
func fetchCRL(t *testing.T, leaf *x509.Certificate) *x509.RevocationList {
	t.Helper()
	if len(leaf.CRLDistributionPoints) != 1 {
		t.Fatalf("leaf has CRL distribution points %q, want one", leaf.CRLDistributionPoints)
	}
	resp, err := http.Get(leaf.CRLDistributionPoints[0])
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v %s", leaf.CRLDistributionPoints[0], resp.StatusCode, err, der)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("Go's parser refuses the CRL: %v", err)
	}
	return crl
}

func onCRL(crl *x509.RevocationList, c *x509.Certificate) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(c.SerialNumber) == 0 {
			return true
		}
	}
	return false
}

// TestCRLReadByGoAndOpenSSL revokes a device and checks the CRL: signed by
// the intermediate, with an Issuing Distribution Point naming the leaves'
// distribution point, nextUpdate inside the certificate lifetime, and
// `openssl crl -text` and `openssl verify -crl_check` agree.
func TestCRLReadByGoAndOpenSSL(t *testing.T) {
	s := newTestServer(t, Options{})
	ctx := context.Background()
	bad, _ := s.enrolled(t, "dev-bad")
	good, _ := s.enrolled(t, "dev-good")
	if err := s.ca.RevokeDevice(ctx, "dev-bad"); err != nil {
		t.Fatal(err)
	}
	crl := fetchCRL(t, bad.Leaf)
	if err := crl.CheckSignatureFrom(s.ca.Intermediate()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	if !onCRL(crl, bad.Leaf) || onCRL(crl, good.Leaf) {
		t.Fatalf("CRL lists %d entries: revoked on it %v, other on it %v", len(crl.RevokedCertificateEntries), onCRL(crl, bad.Leaf), onCRL(crl, good.Leaf))
	}
	if !crl.NextUpdate.Before(bad.Leaf.NotAfter) {
		t.Errorf("nextUpdate %s is not inside the certificate lifetime (ends %s)", crl.NextUpdate, bad.Leaf.NotAfter)
	}
	var idp bool
	for _, e := range crl.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 28}) {
			idp = e.Critical && strings.Contains(string(e.Value), bad.Leaf.CRLDistributionPoints[0])
		}
	}
	if !idp {
		t.Error("CRL has no critical Issuing Distribution Point naming the leaves' distribution point")
	}

	dir := t.TempDir()
	write := func(name string, blocks ...*pem.Block) string {
		var b []byte
		for _, blk := range blocks {
			b = append(b, pem.EncodeToMemory(blk)...)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	crlFile := write("crl.pem", &pem.Block{Type: "X509 CRL", Bytes: crl.Raw})
	text := tool(t, "openssl", "crl", "-in", crlFile, "-noout", "-text")
	for _, want := range []string{"Issuing Distribution Point: critical", "Only User Certificates", bad.Leaf.CRLDistributionPoints[0],
		strings.ToUpper(SerialHex(bad.Leaf.SerialNumber))} {
		mustContain(t, "openssl crl -text", text, want)
	}
	caFile := write("ca.pem", &pem.Block{Type: "CERTIFICATE", Bytes: s.ca.Root().Raw}, &pem.Block{Type: "CERTIFICATE", Bytes: s.ca.Intermediate().Raw})
	verify := func(c *tls.Certificate) (string, error) {
		leaf := write("leaf.pem", &pem.Block{Type: "CERTIFICATE", Bytes: c.Leaf.Raw})
		out, err := execOut("openssl", "verify", "-crl_check", "-CAfile", caFile, "-CRLfile", crlFile, leaf)
		return out, err
	}
	if out, err := verify(good); err != nil {
		t.Errorf("openssl verify -crl_check of the other device: %v\n%s", err, out)
	}
	if out, err := verify(bad); err == nil || !strings.Contains(out, "certificate revoked") {
		t.Errorf("openssl verify -crl_check of the revoked device: %v\n%s", err, out)
	}
}

// TestRevocationLifecycle: revoke by device refuses renewal and lists
// every certificate; unrevoke lets it back; revoke by serial; delete lets
// the id enroll again with a new token; a token re-enrollment supersedes
// the earlier certificates (a stolen copy neither renews nor passes the
// CRL).
func TestRevocationLifecycle(t *testing.T) {
	s := newTestServer(t, Options{})
	ctx := context.Background()
	old, _ := s.enrolled(t, "dev-1")

	// Revoke by device: no renewal, on the CRL.
	if err := s.ca.RevokeDevice(ctx, "DEV-1"); err != nil {
		t.Fatal(err)
	}
	if r := s.client(old).reenroll(t, csrFor(t, newKey(t), "dev-1", DeviceURIPrefix+"dev-1")); r.status != http.StatusForbidden || errCode(r.body) != est.CodeDeviceRevoked {
		t.Fatalf("renew of a revoked device: %d %s", r.status, r.body)
	}
	if !onCRL(fetchCRL(t, old.Leaf), old.Leaf) {
		t.Fatal("revoked device's certificate is not on the CRL")
	}
	// Unrevoke: renews again, off the CRL.
	if _, err := s.ca.UnrevokeDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	if onCRL(fetchCRL(t, old.Leaf), old.Leaf) {
		t.Fatal("unrevoked device's certificate is still on the CRL")
	}
	key2 := newKey(t)
	renewed := s.client(old).reenroll(t, csrFor(t, key2, "dev-1", DeviceURIPrefix+"dev-1"))
	if renewed.status != http.StatusOK {
		t.Fatalf("renew after unrevoke: %d %s", renewed.status, renewed.body)
	}
	cur := tlsCert(renewed.certs(t), key2)

	// Revoke by serial: that certificate only.
	if _, err := s.ca.RevokeSerial(ctx, strings.ToUpper(SerialHex(cur.Leaf.SerialNumber)), store.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	if r := s.client(cur).reenroll(t, csrFor(t, newKey(t), "dev-1", DeviceURIPrefix+"dev-1")); r.status != http.StatusForbidden {
		t.Fatalf("renew with a certificate revoked by serial: %d %s", r.status, r.body)
	}
	if _, err := s.ca.RevokeSerial(ctx, "abcdef", 0); !isNotFound(err) {
		t.Fatalf("revoke of an unknown serial: %v", err)
	}

	// A token re-enrollment supersedes: the stolen earlier certificate
	// (old, unrevoked above) neither renews nor passes the CRL.
	fresh, _ := s.enrolled(t, "dev-1")
	if r := s.client(old).reenroll(t, csrFor(t, newKey(t), "dev-1", DeviceURIPrefix+"dev-1")); r.status == http.StatusOK {
		t.Fatal("a stolen earlier certificate renewed after the device enrolled again with a token")
	}
	crl := fetchCRL(t, fresh.Leaf)
	if !onCRL(crl, old.Leaf) || onCRL(crl, fresh.Leaf) {
		t.Fatalf("after re-enrollment: old on CRL %v (want true), new on CRL %v (want false)", onCRL(crl, old.Leaf), onCRL(crl, fresh.Leaf))
	}
	if r := s.client(fresh).reenroll(t, csrFor(t, newKey(t), "dev-1", DeviceURIPrefix+"dev-1")); r.status != http.StatusOK {
		t.Fatalf("the new certificate does not renew: %d %s", r.status, r.body)
	}

	// Delete: every certificate revoked, the id enrolls again with a new token.
	if err := s.ca.RevokeDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	tok := s.token(t, TokenOptions{Device: "dev-1"})
	if r := s.client(nil).enroll(t, csrFor(t, newKey(t), "dev-1"), tok); r.status != http.StatusForbidden {
		t.Fatalf("token enrollment of a revoked device: %d %s", r.status, r.body)
	}
	if _, err := s.ca.DeleteDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	if !onCRL(fetchCRL(t, fresh.Leaf), fresh.Leaf) {
		t.Fatal("deleted device's certificate is not on the CRL")
	}
	if _, err := s.ca.Device(ctx, "dev-1"); !isNotFound(err) {
		t.Fatalf("deleted device still listed: %v", err)
	}
	repl, _ := s.enrolled(t, "dev-1")
	if onCRL(fetchCRL(t, repl.Leaf), repl.Leaf) {
		t.Fatal("the replacement's certificate is on the CRL")
	}
}

// TestRevocationFeed follows the feed with an enforcer certificate: a
// device certificate is refused, a long poll returns as soon as a device is
// revoked, and the cursor moves on.
func TestRevocationFeed(t *testing.T) {
	s := newTestServer(t, Options{})
	ctx := context.Background()
	dev, _ := s.enrolled(t, "dev-f")
	if r := s.client(dev).do(t, "GET", revocation.FeedPath, "", nil, "", ""); r.status != http.StatusForbidden {
		t.Fatalf("feed with a device certificate: %d %s", r.status, r.body)
	}
	if r := s.client(nil).do(t, "GET", revocation.FeedPath, "", nil, "", ""); r.status != http.StatusUnauthorized {
		t.Fatalf("feed without a certificate: %d %s", r.status, r.body)
	}
	e, err := s.ca.CreateEnforcer(ctx, "broker-1")
	if err != nil {
		t.Fatal(err)
	}
	enf := tlsCert([]*x509.Certificate{e.Cert}, e.Key)
	first := s.client(enf).do(t, "GET", revocation.FeedPath+"?since=0", "", nil, "", "")
	p, err := revocation.DecodePage(strings.NewReader(first.body))
	if first.status != 200 || err != nil || len(p.Events) != 0 {
		t.Fatalf("first page: %d %v %+v", first.status, err, p)
	}
	got := make(chan revocation.Page, 1)
	go func() {
		r := s.client(enf).do(t, "GET", revocation.FeedPath+"?wait=20&since=0", "", nil, "", "")
		p, _ := revocation.DecodePage(strings.NewReader(r.body))
		got <- p
	}()
	if err := s.ca.RevokeDevice(ctx, "dev-f"); err != nil {
		t.Fatal(err)
	}
	p = <-got
	if len(p.Events) != 1 || p.Events[0].Serial != SerialHex(dev.Leaf.SerialNumber) || p.Events[0].Device != "dev-f" || p.Cursor != p.Events[0].Seq {
		t.Fatalf("long poll answered %+v", p)
	}
	// A revoked enforcer certificate no longer follows the feed.
	if _, err := s.ca.RevokeSerial(ctx, SerialHex(e.Cert.SerialNumber), store.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	if r := s.client(enf).do(t, "GET", revocation.FeedPath, "", nil, "", ""); r.status != http.StatusForbidden {
		t.Fatalf("feed with a revoked enforcer certificate: %d %s", r.status, r.body)
	}
}

func execOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// TestFeedLongPollOutlivesReadTimeout: a long poll held past the server's
// read timeout (headers and body, 20 s) still answers, empty, at its wait.
func TestFeedLongPollOutlivesReadTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 25 s; -short skips it")
	}
	s := newTestServer(t, Options{})
	e, err := s.ca.CreateEnforcer(context.Background(), "slow")
	if err != nil {
		t.Fatal(err)
	}
	enf := tlsCert([]*x509.Certificate{e.Cert}, e.Key)
	r := s.client(enf).do(t, "GET", revocation.FeedPath+"?since=0&wait=25", "", nil, "", "")
	if p, err := revocation.DecodePage(strings.NewReader(r.body)); r.status != 200 || err != nil || len(p.Events) != 0 {
		t.Fatalf("long poll of 25 s: %d %v %q", r.status, err, r.body)
	}
}

// TestPlainHTTPServesOnlyTheCRL: on the EST port, plain HTTP gets the CRL
// and a 404 for anything else; EST itself stays TLS only.
func TestPlainHTTPServesOnlyTheCRL(t *testing.T) {
	s := newTestServer(t, Options{})
	base := "http://" + strings.TrimPrefix(s.url, "https://")
	for _, tc := range []struct {
		path string
		want int
	}{
		{s.ca.CRLPath(), http.StatusOK},
		{CRLCurrentPath, http.StatusOK},
		{"/crl/other.crl", http.StatusNotFound},
		{est.PathPrefix + est.OpCACerts, http.StatusNotFound},
		{revocation.FeedPath, http.StatusNotFound},
	} {
		resp, err := http.Get(base + tc.path)
		if err != nil {
			t.Fatalf("GET %s: %v", tc.path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("plain GET %s: %d, want %d", tc.path, resp.StatusCode, tc.want)
		}
	}
}

// TestHealthAddressServesTheCRL: the health address serves the same signed
// CRL as the EST port, for relying parties that reach only that address.
func TestHealthAddressServesTheCRL(t *testing.T) {
	s := newTestServer(t, Options{})
	bad, _ := s.enrolled(t, "dev-health-crl")
	if err := s.ca.RevokeDevice(context.Background(), "dev-health-crl"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.ca.HealthMux())
	defer srv.Close()
	resp, err := http.Get(srv.URL + s.ca.CRLPath())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s on the health address: %d %v", s.ca.CRLPath(), resp.StatusCode, err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("parse the CRL from the health address: %v", err)
	}
	if err := crl.CheckSignatureFrom(s.ca.Intermediate()); err != nil || !onCRL(crl, bad.Leaf) {
		t.Fatalf("CRL from the health address: signature %v, revoked device listed %v", err, onCRL(crl, bad.Leaf))
	}
}
