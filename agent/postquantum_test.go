package agent

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/keystore/file"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestPostQuantumTLSReachesTheWire: enroll.post_quantum_tls makes enroll
// and renew negotiate the hybrid key exchange with an edgeca that offers
// it, and the default stays classical, as seen on the real connections.
func TestPostQuantumTLSReachesTheWire(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{PostQuantumTLS: true})
	for _, tc := range []struct {
		name string
		pq   bool
		want tls.CurveID
	}{
		{"default", false, tls.X25519},
		{"post_quantum_tls", true, tls.X25519MLKEM768},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var seen []tls.CurveID
			observe := func(r enroll.Response) {
				mu.Lock()
				defer mu.Unlock()
				seen = append(seen, r.KeyExchange)
			}
			dir := filepath.Join(t.TempDir(), "state")
			ks, err := file.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			tok := c.Token(t, "pq-"+tc.name)
			ident, err := Enroll(context.Background(), EnrollOptions{StateDir: dir, DeviceID: "pq-" + tc.name, Keystore: ks, Token: &tok,
				Timeout: 5 * time.Second, OnResponse: observe, PostQuantumTLS: tc.pq})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Renew(context.Background(), RenewOptions{StateDir: dir, Keystore: ks, Current: ident,
				Timeout: 5 * time.Second, OnResponse: observe, PostQuantumTLS: tc.pq}); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(seen) < 2 {
				t.Fatalf("saw %d EST responses, want enroll and renew", len(seen))
			}
			for i, got := range seen {
				if got != tc.want {
					t.Errorf("EST response %d used key exchange %v, want %v", i, got, tc.want)
				}
			}
		})
	}
}
