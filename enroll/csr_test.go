package enroll

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

func sanOf(exts []pkix.Extension) *pkix.Extension {
	for _, e := range exts {
		if e.Id.Equal(oidSubjectAltName) {
			return &e
		}
	}
	return nil
}

// TestBuildRenewalCSR: RFC 7030 §4.2.2. The renewal CSR's Subject and
// SubjectAltName are the current certificate's, byte for byte, whatever
// the CA put there.
func TestBuildRenewalCSR(t *testing.T) {
	p := newPKI(t)
	key := mustKey(t)
	uri, _ := url.Parse(DeviceURIPrefix + "dev-1")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		tmpl testpki.Leaf
	}{
		{"as edgeca issues", testpki.Leaf{Subject: pkix.Name{CommonName: "dev-1"}, URIs: []*url.URL{uri}}},
		{"CA added O= and OU=", testpki.Leaf{Subject: pkix.Name{CommonName: "dev-1", Organization: []string{"Example Fleet"}, OrganizationalUnit: []string{"sensors"}}, URIs: []*url.URL{uri}}},
		{"CA dropped the SAN", testpki.Leaf{Subject: pkix.Name{CommonName: "dev-1", Country: []string{"DE"}}}},
		{"CA rewrote the SAN", testpki.Leaf{Subject: pkix.Name{CommonName: "dev-1"}, DNSNames: []string{"dev-1.fleet.example"}, IPs: []net.IP{net.ParseIP("10.0.0.7")}}},
		{"empty subject, critical SAN", testpki.Leaf{URIs: []*url.URL{uri}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cur := issue(t, p.interCA, c.tmpl, &key.PublicKey)
			for _, k := range []struct {
				name string
				key  crypto.Signer
			}{{"same key", key}, {"rekey", rsaKey}} {
				der, err := BuildRenewalCSR(k.key, cur, CSRPlan{})
				if err != nil {
					t.Fatal(err)
				}
				csr, err := x509.ParseCertificateRequest(der)
				if err != nil {
					t.Fatal(err)
				}
				if err := csr.CheckSignature(); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(csr.RawSubject, cur.RawSubject) {
					t.Fatalf("%s: subject %q, want %q", k.name, csr.Subject, cur.Subject)
				}
				want, got := sanOf(cur.Extensions), sanOf(csr.Extensions)
				switch {
				case want == nil && got != nil:
					t.Fatalf("%s: CSR has a SAN the certificate has not", k.name)
				case want != nil && (got == nil || !bytes.Equal(got.Value, want.Value) || got.Critical != want.Critical):
					t.Fatalf("%s: SAN %+v, want %+v", k.name, got, want)
				}
			}
		})
	}
	if _, err := BuildRenewalCSR(key, nil, CSRPlan{}); err == nil {
		t.Fatal("no current certificate accepted")
	}
}

func mustRaw(t *testing.T, v any) asn1.RawValue {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return asn1.RawValue{FullBytes: b}
}

// TestPlanCSR: what /csrattrs asks and what the agent makes of it.
func TestPlanCSR(t *testing.T) {
	ext := pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: []byte{0x05, 0x00}}
	san := pkix.Extension{Id: asn1.ObjectIdentifier(oidSubjectAltName), Value: []byte{0x30, 0x00}}
	macAddress := asn1.ObjectIdentifier{1, 3, 6, 1, 1, 1, 1, 22}
	cases := []struct {
		name      string
		attrs     est.CSRAttrs
		preferred string
		wantAlg   string
		wantSig   x509.SignatureAlgorithm
		wantExts  int
		unhonour  []string // substrings, one each
	}{
		{name: "nothing", preferred: algECDSAP256, wantAlg: algECDSAP256},
		// edgeca's own answer: CN and an ECDSA P-256 key with SHA-256.
		{name: "commonName is always sent", attrs: est.CSRAttrs{OIDs: []asn1.ObjectIdentifier{{2, 5, 4, 3}, oidECPublicKey, {1, 2, 840, 10045, 3, 1, 7}, {1, 2, 840, 10045, 4, 3, 2}}},
			preferred: algECDSAP256, wantAlg: algECDSAP256, wantSig: x509.ECDSAWithSHA256},
		{name: "commonName as an attribute", attrs: est.CSRAttrs{Attributes: []est.Attribute{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}}}}, preferred: algECDSAP256, wantAlg: algECDSAP256},
		{
			// The example of RFC 7030 §4.5.2.
			name: "RFC 7030 example",
			attrs: est.CSRAttrs{
				OIDs:       []asn1.ObjectIdentifier{oidChallengePassword, macAddress, {1, 2, 840, 10045, 4, 3, 3}},
				Attributes: []est.Attribute{{Type: oidECPublicKey, Values: []asn1.RawValue{mustRaw(t, asn1.ObjectIdentifier{1, 3, 132, 0, 34})}}},
			},
			preferred: algECDSAP256, wantAlg: algECDSAP256, wantSig: x509.ECDSAWithSHA384,
			unhonour: []string{"challengePassword", "1.3.6.1.1.1.1.22", "P-384"},
		},
		{name: "RSA 3072 attribute", attrs: est.CSRAttrs{Attributes: []est.Attribute{{Type: oidRSAEncryption, Values: []asn1.RawValue{mustRaw(t, 3072)}}}}, preferred: algECDSAP256, wantAlg: algRSA3072},
		{name: "RSA, any size, keeps a preferred RSA", attrs: est.CSRAttrs{OIDs: []asn1.ObjectIdentifier{oidRSAEncryption, {1, 2, 840, 113549, 1, 1, 11}}}, preferred: algRSA3072, wantAlg: algRSA3072, wantSig: x509.SHA256WithRSA},
		{name: "RSA, any size, from ECDSA", attrs: est.CSRAttrs{OIDs: []asn1.ObjectIdentifier{oidRSAEncryption}}, preferred: algECDSAP256, wantAlg: algRSA2048},
		{name: "RSA 4096", attrs: est.CSRAttrs{Attributes: []est.Attribute{{Type: oidRSAEncryption, Values: []asn1.RawValue{mustRaw(t, 4096)}}}}, preferred: algRSA2048, wantAlg: algRSA2048, unhonour: []string{"4096-bit"}},
		{name: "ECDSA from RSA", attrs: est.CSRAttrs{OIDs: []asn1.ObjectIdentifier{oidECPublicKey}}, preferred: algRSA2048, wantAlg: algECDSAP256},
		{name: "bare P-256 curve", attrs: est.CSRAttrs{OIDs: []asn1.ObjectIdentifier{{1, 2, 840, 10045, 3, 1, 7}}}, preferred: algRSA2048, wantAlg: algECDSAP256},
		{name: "either key type, keeps a preferred RSA", attrs: est.CSRAttrs{OIDs: []asn1.ObjectIdentifier{oidECPublicKey, oidRSAEncryption}}, preferred: algRSA2048, wantAlg: algRSA2048},
		{name: "either key type, keeps a preferred ECDSA", attrs: est.CSRAttrs{OIDs: []asn1.ObjectIdentifier{oidRSAEncryption, oidECPublicKey}}, preferred: algECDSAP256, wantAlg: algECDSAP256},
		{name: "P-384 or RSA", attrs: est.CSRAttrs{OIDs: []asn1.ObjectIdentifier{{1, 3, 132, 0, 34}, oidRSAEncryption}}, preferred: algECDSAP256, wantAlg: algRSA2048, unhonour: []string{"P-384"}},
		{name: "bad RSA size", attrs: est.CSRAttrs{Attributes: []est.Attribute{{Type: oidRSAEncryption, Values: []asn1.RawValue{mustRaw(t, "big")}}}}, preferred: algECDSAP256, wantAlg: algRSA2048, unhonour: []string{"INTEGER"}},
		{
			name:      "extension request, SAN refused",
			attrs:     est.CSRAttrs{Attributes: []est.Attribute{{Type: oidExtensionRequest, Values: []asn1.RawValue{mustRaw(t, []pkix.Extension{ext, san})}}}},
			preferred: algECDSAP256, wantAlg: algECDSAP256, wantExts: 1, unhonour: []string{"SubjectAltName"},
		},
		{name: "unknown attribute", attrs: est.CSRAttrs{Attributes: []est.Attribute{{Type: asn1.ObjectIdentifier{2, 5, 4, 10}, Values: []asn1.RawValue{mustRaw(t, "x")}}}}, preferred: algECDSAP256, wantAlg: algECDSAP256, unhonour: []string{"2.5.4.10"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Through the wire encoding, as a client gets it.
			der, err := est.EncodeCSRAttrs(c.attrs)
			if err != nil {
				t.Fatal(err)
			}
			attrs, err := est.DecodeCSRAttrs(der)
			if err != nil {
				t.Fatal(err)
			}
			p := PlanCSR(attrs)
			if got := p.Algorithm(c.preferred); got != c.wantAlg {
				t.Errorf("Algorithm(%s) = %s, want %s", c.preferred, got, c.wantAlg)
			}
			if p.SignatureAlgorithm != c.wantSig {
				t.Errorf("signature %v, want %v", p.SignatureAlgorithm, c.wantSig)
			}
			if len(p.Extensions) != c.wantExts {
				t.Errorf("%d extensions, want %d", len(p.Extensions), c.wantExts)
			}
			if len(p.Unhonoured) != len(c.unhonour) {
				t.Fatalf("unhonoured %q, want %d items like %q", p.Unhonoured, len(c.unhonour), c.unhonour)
			}
			for _, w := range c.unhonour {
				if !slices.ContainsFunc(p.Unhonoured, func(u string) bool { return strings.Contains(u, w) }) {
					t.Errorf("unhonoured %q: nothing says %q", p.Unhonoured, w)
				}
			}
		})
	}
}

// TestCSRHonoursPlan: the signature algorithm and extensions asked for
// are in the CSR when the key can make them, and the CSR is still built
// when it cannot.
func TestCSRHonoursPlan(t *testing.T) {
	ext := pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: []byte{0x05, 0x00}}
	for _, c := range []struct {
		name string
		plan CSRPlan
		want x509.SignatureAlgorithm
	}{
		{"SHA-384 asked", CSRPlan{SignatureAlgorithm: x509.ECDSAWithSHA384, Extensions: []pkix.Extension{ext}}, x509.ECDSAWithSHA384},
		{"RSA signature for an ECDSA key", CSRPlan{SignatureAlgorithm: x509.SHA384WithRSA, KeyTypes: []string{"rsa"}}, x509.ECDSAWithSHA256},
	} {
		t.Run(c.name, func(t *testing.T) {
			der, err := BuildEnrollCSR(mustKey(t), "dev-1", c.plan)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := x509.ParseCertificateRequest(der)
			if err != nil || csr.CheckSignature() != nil {
				t.Fatalf("CSR: %v", err)
			}
			if csr.SignatureAlgorithm != c.want {
				t.Fatalf("signature %v, want %v", csr.SignatureAlgorithm, c.want)
			}
			has := slices.ContainsFunc(csr.Extensions, func(e pkix.Extension) bool { return e.Id.Equal(ext.Id) })
			if has != (len(c.plan.Extensions) > 0) {
				t.Fatalf("extension in the CSR: %v", has)
			}
		})
	}
}

func FuzzPlanCSR(f *testing.F) {
	for _, a := range []est.CSRAttrs{
		{OIDs: []asn1.ObjectIdentifier{oidChallengePassword, oidRSAEncryption}},
		{Attributes: []est.Attribute{{Type: oidECPublicKey, Values: []asn1.RawValue{{FullBytes: []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}}}}}},
		{Attributes: []est.Attribute{{Type: oidRSAEncryption, Values: []asn1.RawValue{{FullBytes: []byte{0x02, 0x02, 0x0c, 0x00}}}}}},
		{Attributes: []est.Attribute{{Type: oidExtensionRequest, Values: []asn1.RawValue{{FullBytes: []byte{0x30, 0x00}}}}}},
	} {
		der, err := est.EncodeCSRAttrs(a)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		a, err := est.DecodeCSRAttrs(in)
		if err != nil {
			return
		}
		p := PlanCSR(a)
		switch alg := p.Algorithm("pref"); alg {
		case "pref", algECDSAP256, algRSA2048, algRSA3072:
		default:
			t.Fatalf("Algorithm gave %q", alg)
		}
		if _, err := BuildEnrollCSR(mustKey(t), "dev-1", p); err != nil && !strings.Contains(err.Error(), "sign CSR") {
			t.Fatalf("CSR from a plan: %v", err)
		}
	})
}

// TestClientCSRPlan: /csrattrs as a server answers it. Nothing asked (204,
// 404) is the zero plan; an error or an unreadable answer is logged and
// is the zero plan too (not fatal); what cannot be honoured is logged, at
// once and when a CSR is built for a key that does not fit.
func TestClientCSRPlan(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	example, err := est.EncodeCSRAttrs(est.CSRAttrs{
		OIDs:       []asn1.ObjectIdentifier{oidChallengePassword},
		Attributes: []est.Attribute{{Type: oidECPublicKey, Values: []asn1.RawValue{mustRaw(t, asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		status  int
		body    []byte
		wantKey []string
		wantLog []string // substrings of the log, in order
	}{
		{name: "204", status: http.StatusNoContent},
		{name: "404", status: http.StatusNotFound},
		{name: "500", status: http.StatusInternalServerError, wantLog: []string{"cannot read what the server wants"}},
		{name: "garbage", status: http.StatusOK, body: []byte("bm90IGRlcg=="), wantLog: []string{"cannot read what the server wants"}},
		{name: "P-256 and a challenge password", status: http.StatusOK, body: est.EncodeBase64(example), wantKey: []string{"ecdsa"},
			wantLog: []string{"challengePassword", "asks for an ecdsa P-256 key"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := serveTLS(t, p, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/.well-known/est/csrattrs" {
					http.NotFound(w, r)
					return
				}
				w.Header().Set("Content-Type", est.MediaCSRAttrs)
				w.WriteHeader(c.status)
				w.Write(c.body)
			}))
			cl, err := New(Options{Server: srv.URL, Roots: p.pool(), Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.CloseIdleConnections()
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, nil))
			plan, err := cl.CSRPlan(context.Background(), log)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(plan.KeyTypes, c.wantKey) {
				t.Fatalf("key types %q, want %q", plan.KeyTypes, c.wantKey)
			}
			// An RSA key (a renewal without rekey keeps it) against a
			// server that wants ECDSA: built, and logged.
			uri, _ := url.Parse(DeviceURIPrefix + "dev-1")
			cur := issue(t, p.interCA, testpki.Leaf{CN: "dev-1", URIs: []*url.URL{uri}}, &rsaKey.PublicKey)
			if _, err := BuildRenewalCSR(rsaKey, cur, plan); err != nil {
				t.Fatal(err)
			}
			out := buf.String()
			for _, w := range c.wantLog {
				i := strings.Index(out, w)
				if i < 0 {
					t.Fatalf("log lacks %q:\n%s", w, out)
				}
				out = out[i+len(w):]
			}
			if len(c.wantLog) == 0 && buf.Len() != 0 {
				t.Fatalf("logged for nothing asked:\n%s", buf.String())
			}
		})
	}
}

// TestCSRPlanUnreachable: a server that cannot be reached fails the
// enrollment or renewal at once (Unreachable), before a key is made.
func TestCSRPlanUnreachable(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	srv := serveTLS(t, p, http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	cl, err := New(Options{Server: url, Roots: p.pool(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.CSRPlan(context.Background(), nil); !Unreachable(err) {
		t.Fatalf("err = %v, want Unreachable", err)
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{&ServerError{Status: 500}, false},
		{fmt.Errorf("enroll: GET csrattrs: %w: bad", ErrResponse), false},
		{fmt.Errorf("enroll: GET csrattrs: %w", context.DeadlineExceeded), true},
	} {
		if got := Unreachable(c.err); got != c.want {
			t.Errorf("Unreachable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
