package e2e

import (
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestAttestedAgentRecoversAfterExpiry: the agent process with its key in
// a manufactured swtpm and enroll.attest: tpm enrolls with a single-use
// --require-tpm token, publishes, and when its certificate expires while
// the CA is down, re-enrolls once the CA is back by attestation alone (the
// token is used up), then publishes with the new certificate.
func TestAttestedAgentRecoversAfterExpiry(t *testing.T) {
	t.Parallel()
	mosquitto.Binary(t)
	const ttl = 20 * time.Second
	m := swtpm.TestManufacturer(t)
	sim := swtpm.StartWithEK(t, m)
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(m.Root)
	inter.AddCert(m.Issuer)
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{CertTTL: ttl, MinTTL: ttl,
		Attestation: &ca.AttestOptions{Roots: roots, Intermediates: inter, Recovery: true}})
	const device = "attested-dev"
	tok, _, err := c.CreateToken(context.Background(), ca.TokenOptions{URL: c.URL, Device: device, RequireTPM: true})
	if err != nil {
		t.Fatal(err)
	}
	be := startBackend(t, c.Dir)
	work := t.TempDir()
	sock := filepath.Join(work, "api.sock")
	cfgFile := filepath.Join(work, "edgeagent.yaml")
	agentConfig{DeviceID: device, StateDir: filepath.Join(work, "state"), Socket: sock, MQTTURL: be.broker.URL(), MQTTCA: be.caFile,
		RetryMin: "1s", RetryMax: "3s", Policy: "rebootstrap",
		Extra: fmt.Sprintf("keystore: tpm\ntpm:\n  address: %s\nenroll:\n  attest: tpm\n", sim.Addr())}.write(t, cfgFile)
	a := startDaemon(t, cfgFile, sock, "EDGEAGENT_TOKEN="+tok.String())
	deliver(t, a, be, "first message")
	st, err := a.status()
	if err != nil || st["attest"] != "tpm" {
		t.Fatalf("status attest %v (%v)", st["attest"], err)
	}
	first := a.mustStatus().Serial

	c.Stop()
	poll.Until(t, 2*ttl, "the certificate expired, reported", func() bool { return a.mustStatus().Phase == "expired" })
	c.Resume()
	poll.Until(t, 30*time.Second, "recovery after the CA returned", func() bool {
		st := a.mustStatus()
		return st.Serial != first && st.Phase == "valid"
	})
	certs := issuedTo(t, c, device)
	if len(certs) != 2 || certs[0].Op != "attest/finish" || certs[1].Op != "attest/finish" {
		t.Fatalf("issued %+v, want two attested enrollments", certs)
	}
	recs, err := c.Audit(context.Background(), 1)
	if err != nil || len(recs) == 0 || !strings.Contains(recs[0].Reason, "recovered by TPM attestation alone") {
		t.Fatalf("last audit record %+v (%v)", recs, err)
	}
	a.waitLog(10*time.Second, "trying recovery by TPM attestation alone")
	deliver(t, a, be, "a message after recovery")

	// Stopped, its token gone, its certificate expired meanwhile: started
	// again, the agent recovers from the server and roots of its identity.
	st, err = a.status()
	if err != nil {
		t.Fatal(err)
	}
	notAfter, err := time.Parse(time.RFC3339Nano, fmt.Sprint(st["not_after"]))
	if err != nil {
		t.Fatalf("status not_after %v: %v", st["not_after"], err)
	}
	_ = a.cmd.Process.Kill()
	<-a.done
	poll.Until(t, 2*ttl, "the recovered certificate expired", func() bool { return time.Now().After(notAfter) })
	b := startDaemon(t, cfgFile, sock)
	poll.Until(t, 30*time.Second, "recovery without a token", func() bool {
		st := b.mustStatus()
		return st.Phase == "valid" && len(issuedTo(t, c, device)) == 3
	})
	if certs := issuedTo(t, c, device); certs[2].Op != "attest/finish" {
		t.Fatalf("issued %+v, want a third attested enrollment", certs)
	}
	deliver(t, b, be, "a message after recovery without a token")
}
