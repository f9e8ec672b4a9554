package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/ca"
)

// TestManagementWithoutTheSigningKey: a management host holds a copy of
// the CA's certificates and the database URL, not the issuing key. Reading
// and recording commands work there; one that must sign says the key is
// not on this host and what to do, and changes nothing.
func TestManagementWithoutTheSigningKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir, "--url", "https://ca.example:8443")
	db := filepath.Join(dir, ca.DBFile)
	mgmt := filepath.Join(t.TempDir(), "mgmt")
	if err := os.Mkdir(mgmt, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		f := e.Name()
		if strings.Contains(f, "key") || strings.HasPrefix(f, ca.DBFile) || e.IsDir() {
			continue // the keys stay with serve, the store is reached by --db
		}
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mgmt, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(mgmt, ca.IntermediateKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("the management copy holds the key: %v", err)
	}

	tok := mustRun(t, "token", "create", "--dir", mgmt, "--db", db, "--device", "pump-1")
	if !strings.HasPrefix(strings.TrimSpace(tok), "edgetok1.") {
		t.Fatalf("token create printed %q", tok)
	}
	var toks []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, "token", "list", "--dir", mgmt, "--db", db, "--json")), &toks); err != nil || len(toks) != 1 {
		t.Fatalf("token list --json: %v %v", toks, err)
	}
	if out := mustRun(t, "device", "list", "--dir", mgmt, "--db", db, "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("device list --json: %q", out)
	}

	code, _, errOut := edgeca(t, "enforcer", "create", "--dir", mgmt, "--db", db, "--out", t.TempDir(), "sink")
	if code == 0 || !strings.Contains(errOut, "issuing key is not on this host") || !strings.Contains(errOut, "edgeca serve runs") {
		t.Fatalf("enforcer create without the key: exit %d: %s", code, errOut)
	}
	// serve needs the key and says which file is missing.
	code, _, errOut = edgeca(t, "serve", "--dir", mgmt, "--db", db, "--listen", "127.0.0.1:0")
	if code == 0 || !strings.Contains(errOut, ca.IntermediateKeyFile) {
		t.Fatalf("serve without the key: exit %d: %s", code, errOut)
	}
}
