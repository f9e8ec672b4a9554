package ca

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent"
	"github.com/edgeagent/edgeagent/keystore/file"
)

// TestAgentSurvivesLostAnswers runs the real agent's enroll and renew
// through a proxy that swallows edgeca's answer three times in a row, the
// way a device retries (the same state dir, so the same key): each ends
// with an identity whose certificate is the one the CA has on record, the
// token shows one use, and the identity renews again afterwards.
func TestAgentSurvivesLostAnswers(t *testing.T) {
	s := newTestServer(t, Options{CertTTL: time.Hour})
	ctx := context.Background()
	p := newDropProxy(t, strings.TrimPrefix(s.url, "https://"))
	const id, lost = "agent-lossy", 3
	dir := filepath.Join(t.TempDir(), "state")
	ks, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	tok := s.token(t, TokenOptions{URL: p.url(), Device: id})

	retry := func(t *testing.T, what string, do func() (*agent.Identity, error)) *agent.Identity {
		t.Helper()
		p.drop.Store(lost)
		p.dropped.Store(0)
		for i := 0; ; i++ {
			ident, err := do()
			if err == nil {
				if p.dropped.Load() != lost || i != lost {
					t.Fatalf("%s: succeeded at attempt %d with %d answers dropped, want %d", what, i+1, p.dropped.Load(), lost)
				}
				return ident
			}
			if i >= lost {
				t.Fatalf("%s: attempt %d: %v", what, i+1, err)
			}
		}
	}
	onRecord := func(t *testing.T, ident *agent.Identity) {
		t.Helper()
		d, err := s.ca.Device(ctx, id)
		if err != nil || d.Serial != SerialHex(ident.Leaf().SerialNumber) {
			t.Fatalf("agent holds %s, CA has %+v %v", SerialHex(ident.Leaf().SerialNumber), d, err)
		}
	}

	ident := retry(t, "enroll", func() (*agent.Identity, error) {
		return agent.Enroll(ctx, agent.EnrollOptions{StateDir: dir, DeviceID: id, Keystore: ks, Token: &tok, Timeout: 10 * time.Second})
	})
	onRecord(t, ident)
	if toks, err := s.ca.Tokens(ctx); err != nil || toks[0].Uses != 1 {
		t.Fatalf("token after lost answers: %+v %v", toks, err)
	}
	ident = retry(t, "renew", func() (*agent.Identity, error) {
		return agent.Renew(ctx, agent.RenewOptions{StateDir: dir, Keystore: ks, Timeout: 10 * time.Second})
	})
	onRecord(t, ident)
	ident = retry(t, "rekey", func() (*agent.Identity, error) {
		return agent.Renew(ctx, agent.RenewOptions{StateDir: dir, Keystore: ks, Rekey: true, Timeout: 10 * time.Second})
	})
	onRecord(t, ident)
	// The final identity works.
	ident, err = agent.Renew(ctx, agent.RenewOptions{StateDir: dir, Keystore: ks, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("renewal with the final identity: %v", err)
	}
	onRecord(t, ident)
	recs, err := s.ca.Audit(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	replays := 0
	for _, r := range recs {
		if strings.Contains(r.Reason, "the earlier answer was lost") {
			replays++
		}
	}
	// Enroll and renew retries reuse the key: each retry is answered
	// again. A rekey retry comes with a new key: a new certificate.
	if replays != 2*lost {
		t.Errorf("%d retries answered with the certificate already issued, want %d", replays, 2*lost)
	}
}
