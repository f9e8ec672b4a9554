package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

func TestEnrollIssuesDeviceIdentity(t *testing.T) {
	s := newTestServer(t, Options{CertTTL: 2 * time.Hour})
	for _, tc := range []struct {
		name   string
		key    func(t testing.TB) crypto.Signer
		wantKU x509.KeyUsage
	}{
		{"ecdsa-p256", func(t testing.TB) crypto.Signer { return newKey(t) }, x509.KeyUsageDigitalSignature},
		{"rsa-2048", func(t testing.TB) crypto.Signer {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				t.Fatal(err)
			}
			return k
		}, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "dev-" + tc.name
			signer := tc.key(t)
			tok := s.token(t, TokenOptions{Device: id})
			before := s.clock.Now()
			resp := s.client(nil).enroll(t, csrFor(t, signer, id), tok)
			if ct := resp.header.Get("Content-Type"); ct != est.MediaCertsOnly {
				t.Errorf("Content-Type %q, want %q", ct, est.MediaCertsOnly)
			}
			if cte := resp.header.Get("Content-Transfer-Encoding"); cte != "base64" {
				t.Errorf("Content-Transfer-Encoding %q", cte)
			}
			certs := resp.certs(t)
			if len(certs) != 1 {
				t.Fatalf("response holds %d certificates, want the issued one only (RFC 7030 §4.2.3)", len(certs))
			}
			leaf := certs[0]
			if leaf.Subject.CommonName != id || len(leaf.URIs) != 1 || leaf.URIs[0].String() != DeviceURIPrefix+id {
				t.Errorf("identity CN=%q URIs=%v", leaf.Subject.CommonName, leaf.URIs)
			}
			if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
				t.Errorf("EKU %v, want clientAuth only", leaf.ExtKeyUsage)
			}
			if leaf.KeyUsage != tc.wantKU {
				t.Errorf("KeyUsage %v, want %v", leaf.KeyUsage, tc.wantKU)
			}
			if leaf.IsCA || len(leaf.DNSNames) != 0 {
				t.Errorf("leaf IsCA=%v DNS=%v", leaf.IsCA, leaf.DNSNames)
			}
			if d := before.Add(-LeafBackdate(2 * time.Hour)).Sub(leaf.NotBefore); d < -time.Minute || d > time.Minute {
				t.Errorf("NotBefore %v, want about %v", leaf.NotBefore, before.Add(-LeafBackdate(2*time.Hour)))
			}
			if d := leaf.NotAfter.Sub(before.Add(2 * time.Hour)); d < -time.Minute || d > time.Minute {
				t.Errorf("NotAfter %v, want about %v", leaf.NotAfter, before.Add(2*time.Hour))
			}
			if leaf.SerialNumber.BitLen() < 100 {
				t.Errorf("serial %x has %d bits: not a 128-bit random serial", leaf.SerialNumber, leaf.SerialNumber.BitLen())
			}
			inter := x509.NewCertPool()
			inter.AddCert(s.ca.Intermediate())
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("leaf does not verify against the root: %v", err)
			}
			dev, err := s.ca.Device(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if dev.Status != store.StatusActive || dev.Serial != SerialHex(leaf.SerialNumber) || dev.TokenID != tok.ID || dev.Enrollments != 1 || !dev.NotAfter.Equal(leaf.NotAfter) {
				t.Errorf("device record %+v", dev)
			}
			a := s.lastAudit(t)
			if a.Op != est.OpSimpleEnroll || a.Result != store.ResultOK || a.DeviceID != id || a.TokenID != tok.ID || a.Serial != dev.Serial || a.Peer == "" {
				t.Errorf("audit %+v", a)
			}
		})
	}
}

func TestReenrollRenewsAndRekeys(t *testing.T) {
	s := newTestServer(t, Options{})
	ctx := context.Background()
	id := "sensor-1"
	cert, key := s.enrolled(t, id)
	first := cert.Leaf

	// Same key.
	certs := s.client(cert).reenroll(t, csrFor(t, key, id, DeviceURIPrefix+id)).certs(t)
	renewed := certs[0]
	if renewed.SerialNumber.Cmp(first.SerialNumber) == 0 || renewed.Subject.CommonName != id {
		t.Fatalf("renewed serial %x CN %q", renewed.SerialNumber, renewed.Subject.CommonName)
	}
	if !renewed.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Fatal("renewal without rekey changed the key")
	}
	dev, err := s.ca.Device(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Serial != SerialHex(renewed.SerialNumber) || dev.PrevSerial != SerialHex(first.SerialNumber) || dev.Enrollments != 2 {
		t.Fatalf("device after renewal %+v", dev)
	}
	a := s.lastAudit(t)
	if a.Op != est.OpSimpleReenroll || a.Result != store.ResultOK || a.DeviceID != id || a.Serial != dev.Serial {
		t.Fatalf("audit %+v", a)
	}

	// Rekey: authenticate with the current certificate, CSR with a new key.
	cur := tlsCert(certs, key)
	newK := newKey(t)
	rekeyed := s.client(cur).reenroll(t, csrFor(t, newK, id, DeviceURIPrefix+id)).certs(t)[0]
	if !rekeyed.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(newK.Public()) {
		t.Fatal("rekey: certificate does not carry the CSR's new key")
	}

	// The first certificate is now two generations old: superseded.
	resp := s.client(cert).reenroll(t, csrFor(t, key, id, DeviceURIPrefix+id))
	if resp.status != http.StatusUnauthorized || errCode(resp.body) != est.CodeClientCertRequired {
		t.Fatalf("renewal with a superseded certificate: %d %s", resp.status, resp.body)
	}
	mustContain(t, "audit reason", s.lastAudit(t).Reason, "neither the newest")
}

func TestCACertsAndServerChain(t *testing.T) {
	s := newTestServer(t, Options{})
	c := s.client(nil)
	for _, p := range []string{est.Path("", est.OpCACerts), est.Path("fleet-a", est.OpCACerts)} {
		resp := c.do(t, http.MethodGet, p, "", nil, "", "")
		if resp.status != http.StatusOK || resp.header.Get("Content-Type") != est.MediaPKCS7 || resp.header.Get("Content-Transfer-Encoding") != "base64" {
			t.Fatalf("GET %s: %d %v", p, resp.status, resp.header)
		}
		certs := resp.certs(t)
		if len(certs) != 2 || !certs[0].Equal(s.ca.Intermediate()) || !certs[1].Equal(s.ca.Root()) {
			t.Fatalf("GET %s: want intermediate and root, got %d certs", p, len(certs))
		}
	}

	// A device that only knows the root's pin asks for the root in the
	// chain the server presents and must find it there; other clients get
	// leaf and intermediate only.
	conn, err := tls.Dial("tcp", s.url[len("https://"):], &tls.Config{RootCAs: s.roots, ServerName: "localhost", NextProtos: []string{est.ALPNRootInChain}})
	if err != nil {
		t.Fatal(err)
	}
	chain := conn.ConnectionState().PeerCertificates
	conn.Close()
	if len(chain) != 3 || !token.PinOf(chain[2]).Matches(s.ca.Root()) || !chain[1].Equal(s.ca.Intermediate()) {
		t.Fatalf("server presents %d certificates to a pin bootstrap, want leaf, intermediate, root", len(chain))
	}
	conn, err = tls.Dial("tcp", s.url[len("https://"):], &tls.Config{RootCAs: s.roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	chain = conn.ConnectionState().PeerCertificates
	conn.Close()
	if len(chain) != 2 || !chain[1].Equal(s.ca.Intermediate()) {
		t.Fatalf("server presents %d certificates, want leaf and intermediate", len(chain))
	}
	if chain[0].PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("server key %v, want ECDSA", chain[0].PublicKeyAlgorithm)
	}
	// TLS 1.1 is refused; TLS 1.2 only with ECDHE and an AEAD.
	for _, tc := range []struct {
		name  string
		max   uint16
		suite uint16
		ok    bool
	}{
		{"TLS 1.1", tls.VersionTLS11, 0, false},
		{"TLS 1.2 ECDHE AES-GCM", tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, true},
		{"TLS 1.2 ECDHE ChaCha20-Poly1305", tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, true},
		{"TLS 1.2 ECDHE CBC", tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, false},
		{"TLS 1.2 ECDHE CBC-SHA256", tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, false},
		{"TLS 1.2 RSA key transport AES-GCM", tls.VersionTLS12, tls.TLS_RSA_WITH_AES_128_GCM_SHA256, false},
	} {
		cfg := &tls.Config{RootCAs: s.roots, ServerName: "localhost", MaxVersion: tc.max}
		if tc.suite != 0 {
			cfg.CipherSuites = []uint16{tc.suite}
		}
		conn, err := tls.Dial("tcp", s.url[len("https://"):], cfg)
		if (err == nil) != tc.ok {
			t.Errorf("%s: handshake err = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if conn != nil {
			conn.Close()
		}
	}

	for _, tc := range []struct {
		method, path string
		status       int
		code         est.Code
	}{
		{http.MethodGet, est.Path("", "serverkeygen"), http.StatusNotFound, est.CodeNotFound},
		{http.MethodGet, "/.well-known/est/a/b/cacerts", http.StatusNotFound, est.CodeNotFound},
		{http.MethodGet, "/.well-known/est/bad label/cacerts", http.StatusNotFound, est.CodeNotFound},
		{http.MethodGet, "/", http.StatusNotFound, est.CodeNotFound},
		{http.MethodPost, est.Path("", est.OpCACerts), http.StatusMethodNotAllowed, est.CodeMethodNotAllowed},
		{http.MethodGet, est.Path("", est.OpSimpleEnroll), http.StatusMethodNotAllowed, est.CodeMethodNotAllowed},
	} {
		resp := c.do(t, tc.method, tc.path, "", nil, "", "")
		if resp.status != tc.status || errCode(resp.body) != tc.code {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.path, resp.status, resp.body, tc.status, tc.code)
		}
	}
}

// TestCSRAttrs checks /csrattrs says what edgeca wants: the subject CN and
// an ECDSA P-256 key signed with SHA-256, in the RFC 7030 §4.5.2 encoding.
func TestCSRAttrs(t *testing.T) {
	s := newTestServer(t, Options{})
	for _, p := range []string{est.Path("", est.OpCSRAttrs), est.Path("x", est.OpCSRAttrs)} {
		resp := s.client(nil).do(t, http.MethodGet, p, "", nil, "", "")
		if resp.status != http.StatusOK || resp.header.Get("Content-Type") != est.MediaCSRAttrs || resp.header.Get("Content-Transfer-Encoding") != "base64" {
			t.Fatalf("GET %s: %d %v %q", p, resp.status, resp.header, resp.body)
		}
		der, err := est.DecodeBase64([]byte(resp.body))
		if err != nil {
			t.Fatal(err)
		}
		attrs, err := est.DecodeCSRAttrs(der)
		if err != nil {
			t.Fatal(err)
		}
		if len(attrs.OIDs) != 2 || !attrs.OIDs[0].Equal(oidCommonName) || !attrs.OIDs[1].Equal(oidECDSAWithSHA256) {
			t.Errorf("OIDs %v", attrs.OIDs)
		}
		if len(attrs.Attributes) != 1 || !attrs.Attributes[0].Type.Equal(oidECPublicKey) || len(attrs.Attributes[0].Values) != 1 {
			t.Fatalf("attributes %+v", attrs.Attributes)
		}
		var curve asn1.ObjectIdentifier
		if _, err := asn1.Unmarshal(attrs.Attributes[0].Values[0].FullBytes, &curve); err != nil || !curve.Equal(oidP256) {
			t.Errorf("curve %v %v", curve, err)
		}
	}
}

func TestEnrollUnderLabel(t *testing.T) {
	s := newTestServer(t, Options{})
	key := newKey(t)
	tok := s.token(t, TokenOptions{Pattern: "cam-*"})
	resp := s.client(nil).do(t, http.MethodPost, est.Path("cameras", est.OpSimpleEnroll), est.MediaPKCS10, csrFor(t, key, "cam-1"), tok.ID, tok.Secret)
	if got := resp.certs(t)[0].Subject.CommonName; got != "cam-1" {
		t.Fatalf("CN %q", got)
	}
}

func TestCertTTLMinimum(t *testing.T) {
	dir := t.TempDir()
	if err := Init(context.Background(), dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), dir, Options{CertTTL: 59 * time.Second}); err == nil {
		t.Fatal("Open accepted a 59s certificate lifetime")
	}
	if _, err := Open(context.Background(), dir, Options{CertTTL: MaxCertTTL + time.Hour}); err == nil {
		t.Fatal("Open accepted a certificate lifetime over the maximum")
	}
	c, err := Open(context.Background(), dir, Options{CertTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestDeviceIDCase: ids that differ in case only name one device. The
// registry finds it by any spelling, a device-bound token matches any
// spelling, and the certificate keeps the spelling the CSR used.
func TestDeviceIDCase(t *testing.T) {
	s := newTestServer(t, Options{})
	ctx := context.Background()
	cert, key := s.enrolled(t, "DEVA")
	if cert.Leaf.Subject.CommonName != "DEVA" {
		t.Fatalf("CN %q, want the CSR's spelling", cert.Leaf.Subject.CommonName)
	}
	for _, spelling := range []string{"DEVA", "devA", "deva"} {
		d, err := s.ca.Device(ctx, spelling)
		if err != nil || d.ID != "deva" {
			t.Fatalf("Device(%q) = %+v, %v", spelling, d, err)
		}
	}
	// Renewal with the certificate: same device, same spelling.
	renewed := s.client(cert).reenroll(t, csrFor(t, key, "DEVA", DeviceURIPrefix+"DEVA")).certs(t)[0]
	if renewed.Subject.CommonName != "DEVA" {
		t.Fatalf("renewed CN %q", renewed.Subject.CommonName)
	}
	// A token made for "devA" re-enrolls the same device.
	tok := s.token(t, TokenOptions{Device: "devA"})
	if r := s.client(nil).enroll(t, csrFor(t, newKey(t), "deVa"), tok); r.status != http.StatusOK {
		t.Fatalf("token for devA, CSR deVa: %d %s", r.status, r.body)
	}
	devs, err := s.ca.Devices(ctx)
	if err != nil || len(devs) != 1 || devs[0].Enrollments != 3 {
		t.Fatalf("devices %+v %v", devs, err)
	}
	if err := s.ca.RevokeDevice(ctx, "DeVa"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ca.Device(ctx, "-x"); err == nil || !strings.Contains(err.Error(), "start with") {
		t.Fatalf("Device(-x): %v", err)
	}
}
