package agent

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestRevokedIsTerminal: once the CA answers a renewal with "device
// revoked", the agent says so in status and metrics and stops renewing:
// a renewal on demand is answered at once without asking the CA again.
func TestRevokedIsTerminal(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	sink := newHTTPSSink(t, c)
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(c.Token(t, "rev-1").String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonConfig(dir, "rev-1")
	cfg.Enroll.TokenFile = tokFile
	cfg.HTTPS.URL = sink.srv.URL + "/ingest"
	cfg.HTTPS.CABundle = sink.caFile
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Options{Config: cfg, Ready: func() { close(ready) }}) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon stopped: %v", err)
	}
	api := localapi.Client(cfg.API.Socket, 0)
	poll.Until(t, 30*time.Second, "the local API", func() bool {
		resp, err := api.Get("http://agent/v1/status")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	if err := c.RevokeDevice(context.Background(), "rev-1"); err != nil {
		t.Fatal(err)
	}
	renew := func() string {
		resp, err := api.Post("http://agent/v1/renew", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.Status + " " + string(b)
	}
	if out := renew(); !strings.Contains(out, "revoked") {
		t.Fatalf("renewal of a revoked device answered %s", out)
	}
	st := fetchStatus(t, api)
	if st.Phase != "revoked" || st.Revoked == "" || st.LastRenew.Counts["revoked"] != 1 {
		t.Fatalf("status after revocation: phase %q, revoked %q, counts %v", st.Phase, st.Revoked, st.LastRenew.Counts)
	}
	// Terminal: the next renewal on demand does not go to the CA.
	if out := renew(); !strings.Contains(out, "revoked") {
		t.Fatalf("second renewal answered %s", out)
	}
	if st := fetchStatus(t, api); st.LastRenew.Counts["revoked"] != 1 || st.LastRenew.Counts["error"] != 0 {
		t.Fatalf("a renewal went to the CA after the revocation: counts %v", st.LastRenew.Counts)
	}
}
