package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent"
	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestOneWriterPerStateDir: while `run` holds the state dir, a second
// `run` refuses with the holder named, `enroll` refuses, and `renew` asks
// the running agent over its API instead of writing under its feet (the
// agent's status shows that renewal).
func TestOneWriterPerStateDir(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	tok := c.Token(t, "locked-1")
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(tok.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")
	cfgFile := filepath.Join(dir, "edgeagent.yaml")
	cfg := fmt.Sprintf("device_id: locked-1\nstate_dir: %s\napi:\n  socket: %s\nmetrics:\n  listen: \"\"\ncollector:\n  interval: 0s\nenroll:\n  token_file: %s\n", state, sock, tokFile)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var runErr bytes.Buffer
	go func() {
		done <- run(ctx, []string{"run", "--config", cfgFile}, &bytes.Buffer{}, &runErr, func(string) string { return "" })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	api := localapi.Client(sock, 5*time.Second)
	var before agent.Status
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequest(http.MethodGet, "http://agent/v1/status", nil)
		if resp, err := api.Do(req); err == nil {
			resp.Body.Close()
			before = statusOf(t, api)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not start:\n%s", runErr.String())
		}
		<-tick.C // the agent is still enrolling or creating its socket
	}

	_, _, err := edgeagent(t, "run", "--config", cfgFile)
	if !errors.Is(err, agent.ErrStateLocked) || !strings.Contains(err.Error(), fmt.Sprintf("process %d", os.Getpid())) {
		t.Fatalf("second run: %v", err)
	}
	_, _, err = edgeagent(t, "enroll", "--state-dir", state, "--token-file", tokFile, "--force")
	if !errors.Is(err, agent.ErrStateLocked) {
		t.Fatalf("enroll while the agent runs: %v", err)
	}
	out, errOut, err := edgeagent(t, "renew", "--state-dir", state, "--config", cfgFile)
	if err != nil {
		t.Fatalf("renew while the agent runs: %v\n%s", err, errOut)
	}
	after := statusOf(t, api)
	if !strings.Contains(errOut, "asking it to renew") || after.Serial == before.Serial || after.LastRenew.Counts["ok"] != 1 ||
		!strings.HasPrefix(out, "renewed device locked-1 serial "+after.Serial) {
		t.Fatalf("renew through the agent: stdout %q stderr %q, serial %s -> %s", out, errOut, before.Serial, after.Serial)
	}
	if _, _, err := edgeagent(t, "renew", "--state-dir", state, "--config", cfgFile, "--rekey"); err == nil || !strings.Contains(err.Error(), "renew.rekey") {
		t.Fatalf("renew --rekey while the agent runs: %v", err)
	}
}

func statusOf(t *testing.T, api *http.Client) agent.Status {
	t.Helper()
	resp, err := api.Get("http://agent/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st agent.Status
	if err := jsonDecode(resp.Body, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }
