package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent"
	"github.com/edgeagent/edgeagent/agent/localapi"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/edgeagent -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs (go test -update rewrites it after a deliberate change)\n--- got\n%s\n--- want\n%s", p, got, want)
	}
}

// TestStatusGolden runs `edgeagent status` and `status --json` against
// the agent's real local API serving fixed snapshots: a healthy agent, and
// one in trouble (clock corrected, certificate expired with the wait
// policy, an uplink down with its error, drops).
func TestStatusGolden(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	healthy := agent.Status{
		Now: now, DeviceID: "sensor-17", Keystore: "tpm", KeystoreInfo: map[string]string{"manufacturer": "IBM", "firmware": "8217.4131"},
		Serial: "5f3a9c", NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(16 * time.Hour),
		NextRenew: now.Add(10*time.Hour + 30*time.Minute), Phase: "valid", ExpiredPolicy: "rebootstrap",
		LastRenew: agent.RenewStatus{At: now.Add(-8 * time.Hour), Result: "ok", Counts: map[string]uint64{"ok": 41, "error": 2}},
		ClockSkew: "0s", ClockMeasured: "-312ms", Clock: "ok",
		Uplinks: map[string]agent.UplinkStatus{
			"mqtt":  {Connected: true, Acked: 120433, SpoolDepth: 3, SpoolBytes: 4096},
			"https": {Connected: true, Acked: 120436},
		},
		Healthy: true,
	}
	troubled := agent.Status{
		Now: now, DeviceID: "sensor-18", Keystore: "file",
		Serial: "01ab", NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-10 * time.Minute),
		NextRenew: now.Add(20 * time.Second), Phase: "expired",
		Expired:       "waiting for the operator or the CA; renewal retried with backoff (renew.expired_policy: wait)",
		ExpiredPolicy: "wait",
		LastRenew: agent.RenewStatus{At: now.Add(-40 * time.Second), Result: "error",
			Error: "enroll: POST simplereenroll: dial tcp 10.0.0.5:8443: connect: connection refused", Counts: map[string]uint64{"ok": 3, "error": 17}},
		ClockSkew: "498729h56m49.5s", ClockSkewSeconds: 1795427809.5, ClockMeasured: "498729h56m49.5s",
		Clock: "corrected from the CA's time: system clock 1970-01-01T00:03:12Z is before this agent was built (2026-11-20T08:00:00Z)",
		Uplinks: map[string]agent.UplinkStatus{
			"mqtt": {LastError: "network Error : dial tcp 127.0.0.1:8883: connect:\nconnection refused", Acked: 52, SpoolDepth: 1800, SpoolBytes: 262144, SpoolDropped: 12,
				SpoolRefused: 40, SpoolError: "cannot store messages since 2026-11-23T10:00:00Z: write: no space left on device"},
		},
		CommandsDropped: 1,
		Problems: []string{"the certificate expired at 2026-11-23T09:50:00Z",
			"uplink mqtt delivered nothing for 12m0s while 1800 messages wait (health.stall_after 10m0s)"},
	}
	for _, c := range []struct {
		name string
		st   agent.Status
	}{{"healthy", healthy}, {"troubled", troubled}} {
		t.Run(c.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "api.sock")
			srv := localapi.New(nil, func() any { return c.st }, localapi.NewHub(), nil)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx, sock) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Error(err)
				}
			}()
			env := func(string) string { return "" }
			var out, errOut bytes.Buffer
			deadline := time.Now().Add(10 * time.Second)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				out.Reset()
				err := run(context.Background(), []string{"status", "--socket", sock}, &out, &errOut, env)
				var ue unhealthyError
				if err == nil && c.st.Healthy || errors.As(err, &ue) && !c.st.Healthy {
					break // an unhealthy agent's status exits 1
				}
				if time.Now().After(deadline) {
					t.Fatalf("status: %v", err)
				}
				<-tick.C // the server is still creating its socket
			}
			golden(t, "status-"+c.name+".golden", out.Bytes())
			out.Reset()
			err := run(context.Background(), []string{"status", "--socket", sock, "--json"}, &out, &errOut, env)
			if (err == nil) != c.st.Healthy || exitCode(err) != map[bool]int{true: 0, false: 1}[c.st.Healthy] {
				t.Fatalf("status --json of a healthy=%v agent: %v (exit %d)", c.st.Healthy, err, exitCode(err))
			}
			golden(t, "status-"+c.name+".json.golden", out.Bytes())
		})
	}
}
