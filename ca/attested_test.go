package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/attest"
	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/keystore/tpm"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

// attestedDevice is a device whose key is in a manufactured swtpm.
type attestedDevice struct {
	ks  *tpm.Store
	key crypto.Signer
}

func newAttestedDevice(t *testing.T, m *swtpm.Manufacturer) *attestedDevice {
	t.Helper()
	sim := swtpm.StartWithEK(t, m)
	ks, err := tpm.Open(tpm.Options{Address: sim.Addr(), Dir: filepath.Join(t.TempDir(), "keys")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })
	key, err := ks.Create(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	return &attestedDevice{ks: ks, key: key}
}

func attestOpts(m *swtpm.Manufacturer, recovery bool) *AttestOptions {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(m.Root)
	inter.AddCert(m.Issuer)
	return &AttestOptions{Roots: roots, Intermediates: inter, Recovery: recovery}
}

func (s *testServer) enrollClient(t *testing.T) *enroll.Client {
	t.Helper()
	c, err := enroll.New(enroll.Options{Server: s.url, Roots: s.roots, Time: s.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAttestedEnrollRenewRecover: a device enrolls with a --require-tpm
// token and attestation, renews over mTLS, lets its certificate expire
// beyond the renewal grace, and recovers by attestation alone.
func TestAttestedEnrollRenewRecover(t *testing.T) {
	m := swtpm.TestManufacturer(t)
	dev := newAttestedDevice(t, m)
	s := newTestServer(t, Options{Attestation: attestOpts(m, true), RenewGrace: time.Hour})
	ctx := context.Background()
	tok := s.token(t, TokenOptions{Device: "dev-1", RequireTPM: true})
	csr := csrDER(t, dev.key, "dev-1")

	certs, err := s.enrollClient(t).AttestedEnroll(ctx, dev.ks, csr, tok.ID, tok.Secret)
	if err != nil {
		t.Fatalf("attested enrollment: %v", err)
	}
	end, err := dev.ks.Endorsement()
	if err != nil {
		t.Fatal(err)
	}
	ekCert, _ := attest.ParseEKCert(end.RSACert)
	want, _ := attest.EKHash(ekCert.PublicKey)
	got, err := s.ca.DeviceEK(ctx, "dev-1")
	if err != nil || got == "" || !strings.EqualFold(got, hexOf(want[:])) {
		t.Fatalf("device EK on record %q (%v), want %x", got, err, want)
	}
	mustContain(t, "audit", s.lastAudit(t).Reason, "TPM attestation")

	// Renewal is the ordinary mTLS reenroll.
	r := s.client(tlsCert(certs, dev.key)).reenroll(t, csrFor(t, dev.key, "dev-1", "urn:edgeagent:device:dev-1"))
	if r.status != http.StatusOK {
		t.Fatalf("renew: %d %s", r.status, r.body)
	}
	renewed := r.certs(t)

	// Past expiry and grace: reenroll is refused, attestation alone works.
	s.clock.Advance(DefaultCertTTL + 2*time.Hour)
	if r := s.client(tlsCert(renewed, dev.key)).reenroll(t, csrFor(t, dev.key, "dev-1", "urn:edgeagent:device:dev-1")); r.status != http.StatusUnauthorized {
		t.Fatalf("reenroll after grace: %d %s, want 401", r.status, r.body)
	}
	rec, err := s.enrollClient(t).AttestedEnroll(ctx, dev.ks, csr, "", "")
	if err != nil {
		t.Fatalf("recovery by attestation: %v", err)
	}
	if !rec[0].NotAfter.After(s.clock.Now()) {
		t.Fatalf("recovered certificate expires %s, before now", rec[0].NotAfter)
	}
	mustContain(t, "audit", s.lastAudit(t).Reason, "recovered by TPM attestation alone")
	if r := s.client(tlsCert(rec, dev.key)).reenroll(t, csrFor(t, dev.key, "dev-1", "urn:edgeagent:device:dev-1")); r.status != http.StatusOK {
		t.Fatalf("renew after recovery: %d %s", r.status, r.body)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// TestAttestedRefusals: the policy decisions around attestation, each
// refused with its reason, over real TLS and swtpm.
func TestAttestedRefusals(t *testing.T) {
	m := swtpm.TestManufacturer(t)
	dev := newAttestedDevice(t, m)
	other := newAttestedDevice(t, m) // a genuine TPM, but not dev-1's
	ctx := context.Background()

	t.Run("software key with a --require-tpm token", func(t *testing.T) {
		s := newTestServer(t, Options{Attestation: attestOpts(m, true)})
		tok := s.token(t, TokenOptions{Device: "dev-1", RequireTPM: true})
		r := s.client(nil).enroll(t, csrFor(t, newKey(t), "dev-1"), tok)
		if r.status != http.StatusForbidden || errCode(r.body) != CodeAttestationRequired {
			t.Fatalf("got %d %s, want 403 %s", r.status, r.body, CodeAttestationRequired)
		}
		mustContain(t, "body", r.body, "--require-tpm")
	})
	t.Run("CA-wide requirement", func(t *testing.T) {
		o := attestOpts(m, false)
		o.RequireTPM = true
		s := newTestServer(t, Options{Attestation: o})
		tok := s.token(t, TokenOptions{Device: "dev-1"})
		r := s.client(nil).enroll(t, csrFor(t, newKey(t), "dev-1"), tok)
		if r.status != http.StatusForbidden || errCode(r.body) != CodeAttestationRequired {
			t.Fatalf("got %d %s, want 403 %s", r.status, r.body, CodeAttestationRequired)
		}
	})
	t.Run("recovery from another TPM", func(t *testing.T) {
		s := newTestServer(t, Options{Attestation: attestOpts(m, true)})
		tok := s.token(t, TokenOptions{Device: "dev-1"})
		if _, err := s.enrollClient(t).AttestedEnroll(ctx, dev.ks, csrDER(t, dev.key, "dev-1"), tok.ID, tok.Secret); err != nil {
			t.Fatal(err)
		}
		_, err := s.enrollClient(t).AttestedEnroll(ctx, other.ks, csrDER(t, other.key, "dev-1"), "", "")
		wantServerError(t, err, http.StatusUnauthorized, "did not enroll with this TPM's EK")
	})
	t.Run("recovery switched off", func(t *testing.T) {
		s := newTestServer(t, Options{Attestation: attestOpts(m, false)})
		tok := s.token(t, TokenOptions{Device: "dev-1"})
		if _, err := s.enrollClient(t).AttestedEnroll(ctx, dev.ks, csrDER(t, dev.key, "dev-1"), tok.ID, tok.Secret); err != nil {
			t.Fatal(err)
		}
		_, err := s.enrollClient(t).AttestedEnroll(ctx, dev.ks, csrDER(t, dev.key, "dev-1"), "", "")
		wantServerError(t, err, http.StatusUnauthorized, "recovery by attestation alone is off")
	})
	t.Run("EK from another manufacturer", func(t *testing.T) {
		s := newTestServer(t, Options{Attestation: attestOpts(swtpm.TestManufacturerPrepared(t), true)})
		tok := s.token(t, TokenOptions{Device: "dev-1"})
		_, err := s.enrollClient(t).AttestedEnroll(ctx, dev.ks, csrDER(t, dev.key, "dev-1"), tok.ID, tok.Secret)
		wantServerError(t, err, http.StatusForbidden, "does not chain to a configured manufacturer root")
		var ae *enroll.AttestError
		if !errors.As(err, &ae) || ae.Side != "CA" {
			t.Fatalf("error %v does not say the CA refused", err)
		}
	})
}

// TestAttestedErrorSaysTheSide: a failure in the device's TPM is reported
// as the device's, before anything is sent.
func TestAttestedErrorSaysTheSide(t *testing.T) {
	m := swtpm.TestManufacturer(t)
	dev := newAttestedDevice(t, m)
	s := newTestServer(t, Options{Attestation: attestOpts(m, true)})
	tok := s.token(t, TokenOptions{Device: "dev-1"})
	csr := csrDER(t, dev.key, "dev-1")
	dev.ks.Close()
	_, err := s.enrollClient(t).AttestedEnroll(context.Background(), dev.ks, csr, tok.ID, tok.Secret)
	var ae *enroll.AttestError
	if !errors.As(err, &ae) || ae.Side != "device TPM" || !errors.Is(err, tpm.ErrClosed) {
		t.Fatalf("got %v, want a device TPM error", err)
	}
	if n := s.auditLen(t); n != 0 {
		t.Fatalf("%d audit records: the CA was asked", n)
	}
}

func wantServerError(t *testing.T, err error, status int, sub string) {
	t.Helper()
	var se *enroll.ServerError
	if !errors.As(err, &se) || se.Status != status || !strings.Contains(se.Message, sub) {
		t.Fatalf("got %v, want %d containing %q", err, status, sub)
	}
}

// TestAttestBadInput: what an unauthenticated peer can send to the
// attestation resources gets a clear error and holds nothing.
func TestAttestBadInput(t *testing.T) {
	m := swtpm.TestManufacturerPrepared(t)
	on := newTestServer(t, Options{Attestation: attestOpts(m, true)})
	off := newTestServer(t, Options{})
	big := []byte(`{"ek_public":"` + strings.Repeat("A", 40<<10) + `"}`)
	for _, tc := range []struct {
		name       string
		s          *testServer
		method     string
		path, ct   string
		body       []byte
		status     int
		code, text string
	}{
		{"not offered", off, http.MethodPost, "/.well-known/est/attest/start", "application/json", []byte(`{}`), http.StatusNotFound, "not_found", "does not offer attested enrollment"},
		{"GET", on, http.MethodGet, "/.well-known/est/attest/start", "", nil, http.StatusMethodNotAllowed, "method_not_allowed", "POST"},
		{"content type", on, http.MethodPost, "/.well-known/est/attest/start", "application/pkcs10", []byte(`{}`), http.StatusUnsupportedMediaType, "wrong_content_type", "application/json"},
		{"not JSON", on, http.MethodPost, "/.well-known/est/attest/start", "application/json", []byte(`{"ek_public":`), http.StatusBadRequest, "bad_csr", "not the expected JSON"},
		{"too large", on, http.MethodPost, "/.well-known/est/attest/start", "application/json", big, http.StatusRequestEntityTooLarge, "body_too_large", "limit"},
		{"empty EK", on, http.MethodPost, "/.well-known/est/attest/start", "application/json", []byte(`{}`), http.StatusForbidden, string(CodeAttestationFailed), "EK public area is missing"},
		{"junk EK", on, http.MethodPost, "/.well-known/est/lbl/attest/start", "application/json", []byte(`{"ek_public":"AAEC"}`), http.StatusForbidden, string(CodeAttestationFailed), "malformed"},
		{"unknown id", on, http.MethodPost, "/.well-known/est/attest/finish", "application/json", []byte(`{"id":"nope","csr":"` + base64CSR(t) + `"}`), http.StatusForbidden, string(CodeAttestationFailed), "unknown or already used"},
		{"finish without CSR", on, http.MethodPost, "/.well-known/est/attest/finish", "application/json", []byte(`{"id":"nope"}`), http.StatusBadRequest, "bad_csr", "carries no csr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.s.client(nil).do(t, tc.method, tc.path, tc.ct, tc.body, "", "")
			if r.status != tc.status || string(errCode(r.body)) != tc.code || !strings.Contains(r.body, tc.text) {
				t.Fatalf("got %d %s, want %d %s containing %q", r.status, r.body, tc.status, tc.code, tc.text)
			}
		})
	}
}

func base64CSR(t *testing.T) string {
	return base64.StdEncoding.EncodeToString(csrDER(t, newKey(t), "dev-x"))
}
