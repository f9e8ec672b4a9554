package main

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestAttestedEnrollCLI: `edgeagent enroll --attest tpm` with a
// --require-tpm token against edgeca and a manufactured swtpm, renew, and
// enrolling again when the token is used up: the agent falls back to
// recovery by attestation alone. Without --attest the same token is
// refused with the reason.
func TestAttestedEnrollCLI(t *testing.T) {
	m := swtpm.TestManufacturer(t)
	sim := swtpm.StartWithEK(t, m)
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(m.Root)
	inter.AddCert(m.Issuer)
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{Attestation: &ca.AttestOptions{Roots: roots, Intermediates: inter, Recovery: true}})
	tok, _, err := c.CreateToken(context.Background(), ca.TokenOptions{URL: c.URL, Device: "tpm-7", RequireTPM: true})
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state")
	tpmFlags := []string{"--keystore", "tpm", "--tpm-address", sim.Addr()}

	_, errOut, err := edgeagent(t, "enroll", "--token", tok.String(), "--state-dir", filepath.Join(t.TempDir(), "soft"), "--device-id", "tpm-7")
	if err == nil || !strings.Contains(err.Error(), "attestation_required") || !strings.Contains(err.Error(), "enroll.attest: tpm") {
		t.Fatalf("plain enrollment with a --require-tpm token: %v\n%s", err, errOut)
	}

	out := mustEdgeagent(t, append([]string{"enroll", "--attest", "tpm", "--token", tok.String(), "--state-dir", state, "--device-id", "tpm-7"}, tpmFlags...)...)
	checkSummary(t, out, "enrolled", "tpm-7", state)
	ek, err := c.DeviceEK(context.Background(), "tpm-7")
	if err != nil || len(ek) != 64 {
		t.Fatalf("EK on record %q (%v)", ek, err)
	}
	mustEdgeagent(t, append([]string{"renew", "--state-dir", state}, tpmFlags...)...)

	// The token is used up: enrolling again recovers by attestation alone.
	_, errOut, err = edgeagent(t, append([]string{"enroll", "--force", "--attest", "tpm", "--token", tok.String(), "--state-dir", state, "--device-id", "tpm-7"}, tpmFlags...)...)
	if err != nil {
		t.Fatalf("recovery: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "recovery by TPM attestation alone") {
		t.Fatalf("the agent does not say it fell back to recovery:\n%s", errOut)
	}

	if _, errOut, err := edgeagent(t, "enroll", "--attest", "tpm", "--token", tok.String(), "--state-dir", state); err == nil || !strings.Contains(err.Error()+errOut, "--keystore tpm") {
		t.Fatalf("--attest without the TPM keystore: %v %s", err, errOut)
	}
}
