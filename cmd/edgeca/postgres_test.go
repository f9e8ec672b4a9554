package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/postgres"
)

// waitFile polls for a file written by a server starting in the background.
func waitFile(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(path); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return strings.TrimSpace(string(b))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was not written", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPostgresCommands: a SQLite CA migrated into PostgreSQL keeps its
// tokens and devices; the commands and serve work on it with --db or
// EDGECA_DB; serve's /readyz answers on --health-listen; a second migrate
// into the same database is refused.
func TestPostgresCommands(t *testing.T) {
	pg := postgres.Start(t)
	url := pg.CreateDB("cmd")
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir, "--url", "https://ca.example:8443")
	mustRun(t, "token", "create", "--dir", dir, "--device", "pump-1")
	mustRun(t, "token", "create", "--dir", dir, "--pattern", "sensor-*", "--uses", "5")
	before := mustRun(t, "token", "list", "--dir", dir)

	code, _, errOut := edgeca(t, "migrate", "--from", dir, "--db", url)
	if code != 0 || !strings.Contains(errOut, "copied 2 tokens") {
		t.Fatalf("migrate: %d %s", code, errOut)
	}
	if code, _, errOut := edgeca(t, "migrate", "--from", dir, "--db", url); code == 0 || !strings.Contains(errOut, "already holds") {
		t.Errorf("second migrate into the same database: %d %s", code, errOut)
	}
	if after := mustRun(t, "token", "list", "--dir", dir, "--db", url); after != before {
		t.Errorf("tokens after migrate:\n%s\nwant:\n%s", after, before)
	}
	t.Setenv("EDGECA_DB", url)
	mustRun(t, "token", "create", "--dir", dir, "--device", "pump-2")
	if out := mustRun(t, "token", "list", "--dir", dir); !strings.Contains(out, "pump-2") {
		t.Errorf("EDGECA_DB: token list does not show the token made through it:\n%s", out)
	}
	// The SQLite file is left as it was.
	t.Setenv("EDGECA_DB", "")
	if out := mustRun(t, "token", "list", "--dir", dir); strings.Contains(out, "pump-2") {
		t.Errorf("the SQLite database changed after the migration:\n%s", out)
	}

	healthFile := filepath.Join(t.TempDir(), "health")
	serve(t, dir, "--db", url, "--health-listen", "127.0.0.1:0", "--health-addr-file", healthFile)
	health := "http://" + waitFile(t, healthFile)
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/nothing": 404} {
		resp, err := http.Get(health + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d %s, want %d", path, resp.StatusCode, body, want)
		}
	}

	// init against a shared database: the keys in a new directory, the
	// schema and the URL in the database.
	url2 := pg.CreateDB("cmdinit")
	dir2 := filepath.Join(t.TempDir(), "ca2")
	mustRun(t, "init", "--dir", dir2, "--db", url2, "--url", "https://ca.example:8443")
	mustRun(t, "token", "create", "--dir", dir2, "--db", url2, "--device", "x-1")
	if out := mustRun(t, "token", "list", "--dir", dir2, "--db", url2); !strings.Contains(out, "x-1") {
		t.Errorf("token list on an init'ed shared database:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir2, "edgeca.db")); !os.IsNotExist(err) {
		t.Errorf("init --db postgres:// made a SQLite database too: %v", err)
	}
}
