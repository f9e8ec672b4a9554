package ca

import (
	"encoding/base64"
	"errors"
	"testing"

	"github.com/edgeagent/edgeagent/enroll/est"
)

func TestParseCSR(t *testing.T) {
	key := newKey(t)
	der := csrDER(t, key, "dev-1")
	wrapped := est.EncodeBase64(der) // CRLF every 64 columns
	for _, tc := range []struct {
		name string
		body []byte
		id   string
		code est.Code
	}{
		{"line-wrapped", wrapped, "dev-1", ""},
		{"one line", []byte(b64(der)), "dev-1", ""},
		{"SAN only", csrFor(t, key, "", DeviceURIPrefix+"dev-2"), "dev-2", ""},
		{"CN and SAN", csrFor(t, key, "dev-3", DeviceURIPrefix+"dev-3"), "dev-3", ""},
		{"two device SANs", csrFor(t, key, "", DeviceURIPrefix+"a", DeviceURIPrefix+"b"), "", est.CodeBadCSR},
		{"raw DER", der, "", est.CodeBadBase64},
		{"truncated", est.EncodeBase64(der[:len(der)-10]), "", est.CodeBadCSR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			csr, err := ParseCSR(tc.body)
			if tc.code != "" {
				var e *Error
				if !errors.As(err, &e) || e.Code != tc.code || e.Status != 400 {
					t.Fatalf("err = %v, want %s", err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if csr.DeviceID != tc.id {
				t.Fatalf("device id %q, want %q", csr.DeviceID, tc.id)
			}
		})
	}
}

func b64(der []byte) string { return base64.StdEncoding.EncodeToString(der) }

// FuzzParseCSR drives the server's CSR path (base64, PKCS#10 parsing, key
// and identity checks) with arbitrary bodies: it must never panic, and it
// either returns a checked CSR or an *Error with a 4xx status and a code.
func FuzzParseCSR(f *testing.F) {
	key := newKey(f)
	f.Add(csrFor(f, key, "dev-1"))
	f.Add(csrFor(f, key, "", DeviceURIPrefix+"dev-2"))
	f.Add(csrDER(f, key, "dev-1"))
	f.Add([]byte("MIIB"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		csr, err := ParseCSR(body)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Status < 400 || e.Status > 499 || e.Code == "" || e.Msg == "" {
				t.Fatalf("error %v is not a 4xx *Error with a code and message", err)
			}
			return
		}
		if ValidateDeviceID(csr.DeviceID) != nil || csr.Request.CheckSignature() != nil || checkKey(csr.Request.PublicKey) != nil {
			t.Fatalf("accepted an invalid CSR: %+v", csr)
		}
	})
}
