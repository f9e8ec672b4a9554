package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509/pkix"
	"math/big"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// TestBadInput sends every kind of bad request over real TLS and checks
// that each gets its 4xx and stable code, leaves an audit record saying
// precisely what was wrong, and changes no token and no device.
func TestBadInput(t *testing.T) {
	// Every refusal audited: the table checks each record.
	s := newTestServer(t, Options{CertTTL: time.Hour, AuditRefusalsPerMinute: -1})
	ctx := context.Background()
	other := newTestServer(t, Options{}) // another CA
	key := newKey(t)
	good := csrFor(t, key, "dev-1")

	sign := func(k crypto.Signer, cn string) []byte { return csrFor(t, k, cn) }
	// renewal is a CSR that copies an edgeca certificate's identity.
	renewal := func(k crypto.Signer, id string) []byte { return csrFor(t, k, id, DeviceURIPrefix+id) }
	rsaKey := func(bits int) crypto.Signer {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	badSig := csrDER(t, key, "dev-1")
	badSig[len(badSig)-1] ^= 0x01

	// Fixtures the cases below use.
	fresh := func() token.Token { return s.token(t, TokenOptions{}) }
	used := s.token(t, TokenOptions{})
	if r := s.client(nil).enroll(t, csrFor(t, newKey(t), "used-by-someone"), used); r.status != http.StatusOK {
		t.Fatalf("setup: %d %s", r.status, r.body)
	}
	expired := s.token(t, TokenOptions{TTL: time.Minute})
	revokedTok := s.token(t, TokenOptions{})
	if err := s.ca.RevokeToken(ctx, revokedTok.ID); err != nil {
		t.Fatal(err)
	}
	revokedDevCert, revokedDevKey := s.enrolled(t, "gone-1")
	if err := s.ca.RevokeDevice(ctx, "gone-1"); err != nil {
		t.Fatal(err)
	}
	devCert, devKey := s.enrolled(t, "dev-2")
	otherCert, _ := other.enrolled(t, "dev-2")
	// An expiring identity: enrolled now, used after the clock moved on.
	expCert, expKey := s.enrolled(t, "dev-exp")

	type req struct {
		op          string
		contentType string
		body        []byte
		tok         *token.Token
		user, pass  string
		cert        *tls.Certificate
	}
	cases := []struct {
		name       string
		req        func() req
		clock      time.Duration // clock offset while the request runs
		status     int
		code       est.Code
		reasonHas  string
		wantDevice string // device id the audit record names, if any
	}{
		{"no credentials", func() req { return req{op: est.OpSimpleEnroll, body: good} }, 0,
			401, est.CodeAuthRequired, "HTTP Basic", ""},
		{"wrong content type", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, contentType: "text/plain", body: good, tok: &tk}
		}, 0, 415, est.CodeWrongContentType, "text/plain", ""},
		{"no content type", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, contentType: "-", body: good, tok: &tk}
		}, 0, 415, est.CodeWrongContentType, "Content-Type", ""},
		{"malformed base64", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: []byte("MII$%^&*"), tok: &tk}
		}, 0, 400, est.CodeBadBase64, "base64", ""},
		{"empty body", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: nil, tok: &tk}
		}, 0, 400, est.CodeBadBase64, "empty", ""},
		{"not a CSR", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: est.EncodeBase64([]byte("hello, I am not DER")), tok: &tk}
		}, 0, 400, est.CodeBadCSR, "PKCS#10", ""},
		{"a certificate instead of a CSR", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: est.EncodeBase64(s.ca.Root().Raw), tok: &tk}
		}, 0, 400, est.CodeBadCSR, "PKCS#10", ""},
		{"bad CSR signature", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: est.EncodeBase64(badSig), tok: &tk}
		}, 0, 400, est.CodeBadCSR, "signature", ""},
		{"RSA 1024", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: sign(rsaKey(1024), "dev-1"), tok: &tk}
		}, 0, 400, est.CodeKeyNotAllowed, "1024 bits", ""},
		{"Ed25519", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: sign(edKey, "dev-1"), tok: &tk}
		}, 0, 400, est.CodeKeyNotAllowed, "Ed25519", ""},
		{"P-521", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: sign(p521, "dev-1"), tok: &tk}
		}, 0, 400, est.CodeKeyNotAllowed, "P-521", ""},
		{"CSR without a device id", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: sign(key, ""), tok: &tk}
		}, 0, 400, est.CodeBadCSR, "names no device", ""},
		{"CSR with an invalid device id", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: sign(key, "dev/../1"), tok: &tk}
		}, 0, 400, est.CodeBadCSR, "only letters", ""},
		{"CSR with a device id starting with '-'", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: sign(key, "-rf"), tok: &tk}
		}, 0, 400, est.CodeBadCSR, "start with", ""},
		{"CSR with device id '..'", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: sign(key, ".."), tok: &tk}
		}, 0, 400, est.CodeBadCSR, "start with", ""},
		{"CSR with a device id with a terminal escape", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: sign(key, "dev\x1b[2J"), tok: &tk}
		}, 0, 400, est.CodeBadCSR, `\x1b`, ""},
		{"claim token for an enrolled device spelled in another case", func() req {
			tk := s.token(t, TokenOptions{Pattern: "dev-*"})
			return req{op: est.OpSimpleEnroll, body: sign(key, "DEV-2"), tok: &tk}
		}, 0, 403, est.CodeDeviceNotAllowed, "already enrolled", "DEV-2"},
		{"CSR whose CN and SAN disagree", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: csrFor(t, key, "dev-1", DeviceURIPrefix+"dev-9"), tok: &tk}
		}, 0, 400, est.CodeBadCSR, "disagree", ""},
		{"CSR asking for a foreign URI", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: csrFor(t, key, "dev-1", "spiffe://evil/admin"), tok: &tk}
		}, 0, 400, est.CodeBadCSR, "spiffe", ""},
		{"body over the limit", func() req {
			tk := fresh()
			return req{op: est.OpSimpleEnroll, body: bytes.Repeat([]byte("QUFB"), est.MaxBodyBytes/4+1), tok: &tk}
		}, 0, 413, est.CodeBodyTooLarge, "limit", ""},
		{"unknown token", func() req {
			return req{op: est.OpSimpleEnroll, body: good, user: "tdeadbeefdeadbeef", pass: strings.Repeat("x", 43)}
		}, 0, 401, est.CodeTokenInvalid, "unknown token", "dev-1"},
		{"user name with terminal escapes and line breaks", func() req {
			return req{op: est.OpSimpleEnroll, body: good, user: "t\x1b[2J\r\n2026-12-01 simpleenroll ok dev-9", pass: "x"}
		}, 0, 401, est.CodeTokenInvalid, "unknown token", "dev-1"},
		{"user name of 10 KB", func() req {
			return req{op: est.OpSimpleEnroll, body: good, user: strings.Repeat("u", 10<<10), pass: "x"}
		}, 0, 401, est.CodeTokenInvalid, "unknown token", "dev-1"},
		{"wrong secret", func() req {
			tk := fresh()
			tk.Secret = strings.Repeat("A", 43)
			return req{op: est.OpSimpleEnroll, body: good, tok: &tk}
		}, 0, 401, est.CodeTokenInvalid, "wrong secret", "dev-1"},
		{"used token", func() req { return req{op: est.OpSimpleEnroll, body: good, tok: &used} }, 0,
			401, est.CodeTokenInvalid, "used up", "dev-1"},
		{"expired token", func() req { return req{op: est.OpSimpleEnroll, body: good, tok: &expired} }, 2 * time.Minute,
			401, est.CodeTokenInvalid, "expired", "dev-1"},
		{"revoked token", func() req { return req{op: est.OpSimpleEnroll, body: good, tok: &revokedTok} }, 0,
			401, est.CodeTokenInvalid, "revoked", "dev-1"},
		{"token bound to another device", func() req {
			tk := s.token(t, TokenOptions{Device: "dev-7"})
			return req{op: est.OpSimpleEnroll, body: good, tok: &tk}
		}, 0, 403, est.CodeDeviceNotAllowed, `bound to device "dev-7"`, "dev-1"},
		{"device outside the token pattern", func() req {
			tk := s.token(t, TokenOptions{Pattern: "sensor-*"})
			return req{op: est.OpSimpleEnroll, body: good, tok: &tk}
		}, 0, 403, est.CodeDeviceNotAllowed, "pattern", "dev-1"},
		{"claim token for an enrolled device", func() req {
			tk := s.token(t, TokenOptions{Pattern: "dev-*"})
			return req{op: est.OpSimpleEnroll, body: sign(key, "dev-2"), tok: &tk}
		}, 0, 403, est.CodeDeviceNotAllowed, "already enrolled", "dev-2"},
		{"new token for a revoked device", func() req {
			tk := s.token(t, TokenOptions{Device: "gone-1"})
			return req{op: est.OpSimpleEnroll, body: sign(revokedDevKey, "gone-1"), tok: &tk}
		}, 0, 403, est.CodeDeviceRevoked, "revoked", "gone-1"},
		{"reenroll without a client certificate", func() req {
			return req{op: est.OpSimpleReenroll, body: sign(devKey, "dev-2")}
		}, 0, 401, est.CodeClientCertRequired, "client certificate", ""},
		{"reenroll with a certificate of another CA", func() req {
			return req{op: est.OpSimpleReenroll, body: sign(devKey, "dev-2"), cert: otherCert}
		}, 0, 401, est.CodeClientCertRequired, "unknown authority", ""},
		{"reenroll of a revoked device", func() req {
			return req{op: est.OpSimpleReenroll, body: renewal(revokedDevKey, "gone-1"), cert: revokedDevCert}
		}, 0, 403, est.CodeDeviceRevoked, "revoked", "gone-1"},
		{"reenroll with a CSR for another device", func() req {
			return req{op: est.OpSimpleReenroll, body: sign(devKey, "dev-3"), cert: devCert}
		}, 0, 403, est.CodeDeviceNotAllowed, `"dev-3"`, "dev-2"},
		{"reenroll with an expired certificate", func() req {
			return req{op: est.OpSimpleReenroll, body: sign(expKey, "dev-exp"), cert: expCert}
		}, 2 * time.Hour, 401, est.CodeClientCertRequired, "expired", ""},
		{"reenroll CSR without the certificate's SAN", func() req {
			return req{op: est.OpSimpleReenroll, body: sign(devKey, "dev-2"), cert: devCert}
		}, 0, 400, est.CodeIdentityMismatch, "SubjectAltName", "dev-2"},
		{"reenroll CSR with another Subject", func() req {
			return req{op: est.OpSimpleReenroll, body: csrWith(t, devKey, pkix.Name{CommonName: "dev-2", Organization: []string{"Evil"}}, DeviceURIPrefix+"dev-2"), cert: devCert}
		}, 0, 400, est.CodeIdentityMismatch, "O=Evil", "dev-2"},
		{"reenroll CSR with an extra DNS name", func() req {
			return req{op: est.OpSimpleReenroll, body: csrWith(t, devKey, pkix.Name{CommonName: "dev-2"}, DeviceURIPrefix+"dev-2", "dns:admin.example"), cert: devCert}
		}, 0, 400, est.CodeIdentityMismatch, "DNS:admin.example", "dev-2"},
		{"reenroll with a bad CSR", func() req {
			return req{op: est.OpSimpleReenroll, body: est.EncodeBase64(badSig), cert: devCert}
		}, 0, 400, est.CodeBadCSR, "signature", "dev-2"},
		{"reenroll with the wrong content type", func() req {
			return req{op: est.OpSimpleReenroll, contentType: "application/octet-stream", body: sign(devKey, "dev-2"), cert: devCert}
		}, 0, 415, est.CodeWrongContentType, "octet-stream", "dev-2"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.req()
			ct := est.MediaPKCS10
			switch r.contentType {
			case "":
			case "-":
				ct = ""
			default:
				ct = r.contentType
			}
			user, pass := r.user, r.pass
			if r.tok != nil {
				user, pass = r.tok.ID, r.tok.Secret
			}
			before := s.state(t)
			n := s.auditLen(t)
			s.clock.Set(tc.clock)
			// Each case from a peer of its own: token failures slow a peer down.
			resp := s.client(r.cert).from(100+i).do(t, http.MethodPost, est.Path("", r.op), ct, r.body, user, pass)
			s.clock.Set(0)

			if resp.status != tc.status || errCode(resp.body) != tc.code {
				t.Fatalf("got %d %q, want %d %s", resp.status, resp.body, tc.status, tc.code)
			}
			if got := resp.header.Get("WWW-Authenticate"); (resp.status == http.StatusUnauthorized) != (got != "") ||
				got != "" && !strings.HasPrefix(got, `Basic realm="edgeca"`) {
				t.Errorf("status %d with WWW-Authenticate %q: every 401 and only a 401 carries Basic realm=\"edgeca\"", resp.status, got)
			}
			if ct := resp.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("error Content-Type %q, want text/plain", ct)
			}
			if tc.code == est.CodeTokenInvalid {
				// The client learns nothing about which check failed.
				if _, msg := est.ParseErrorBody(resp.body); msg != tokenInvalidMsg {
					t.Errorf("token error message %q leaks detail", msg)
				}
			}
			if got := s.auditLen(t); got != n+1 {
				t.Fatalf("%d audit records written, want 1", got-n)
			}
			a := s.lastAudit(t)
			if a.Op != r.op || a.Result != store.ResultDenied || a.Code != string(tc.code) || a.Peer == "" {
				t.Errorf("audit record %+v", a)
			}
			mustContain(t, "audit reason", a.Reason, tc.reasonHas)
			if tc.wantDevice != "" && a.DeviceID != tc.wantDevice {
				t.Errorf("audit device %q, want %q", a.DeviceID, tc.wantDevice)
			}
			// Client strings are stored escaped and cut to a bound.
			if want := Printable(user[:min(len(user), 64)], maxFieldLen); user != "" && a.TokenID != want {
				t.Errorf("audit token %q, want %q", a.TokenID, want)
			}
			if strings.ContainsAny(a.TokenID+a.Reason, "\x1b\r\n") {
				t.Errorf("audit record holds raw control characters: %+v", a)
			}
			if after := s.state(t); !reflect.DeepEqual(before, after) {
				t.Errorf("state changed:\nbefore %+v\nafter  %+v", before, after)
			}
		})
	}
}

// TestRSAKeySizes checks the accepted RSA range at its edges.
func TestRSAKeySizes(t *testing.T) {
	for _, tc := range []struct {
		bits int
		ok   bool
	}{{2047, false}, {2048, true}, {4096, true}, {4104, false}} {
		pub := &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), uint(tc.bits-1)), E: 65537}
		err := checkKey(pub)
		if (err == nil) != tc.ok {
			t.Errorf("RSA %d: err = %v, want ok=%v", tc.bits, err, tc.ok)
		}
	}
}

// TestErrorCodesParse checks that every code edgeca sends survives the
// client's parser (bad_base64 once did not: the parser refused digits).
func TestErrorCodesParse(t *testing.T) {
	for _, c := range []est.Code{est.CodeTokenInvalid, est.CodeAuthRequired, est.CodeClientCertRequired, est.CodeDeviceRevoked,
		est.CodeDeviceNotAllowed, est.CodeBadBase64, est.CodeBadCSR, est.CodeKeyNotAllowed, est.CodeBodyTooLarge,
		est.CodeWrongContentType, est.CodeNotFound, est.CodeMethodNotAllowed, est.CodeInternal, est.CodeIdentityMismatch, est.CodeRateLimited} {
		if got, msg := est.ParseErrorBody(est.ErrorBody(c, "some: text")); got != c || msg != "some: text" {
			t.Errorf("%s parses as %q, %q", c, got, msg)
		}
	}
}
