package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/testkit/postgres"
)

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := e.Info()
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPostgresBackupAndRotation: the documented PostgreSQL backup (edgeca
// backup --db runs Debian's pg_dump beside copying the keys) restored into
// a fresh database serves every device and renews them; and an
// intermediate rotation reaches the other replicas as the CA directory
// copied to them: a replica restarted with the old copy refuses to start,
// one given the new copy serves devices of both intermediates.
func TestPostgresBackupAndRotation(t *testing.T) {
	pg := postgres.Start(t)
	db := pg.CreateDB("backup")
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir, "--db", db)
	replica2 := filepath.Join(t.TempDir(), "replica2")
	copyDir(t, dir, replica2)
	u := serveStoppable(t, dir, "--db", db)
	tok := newToken(t, dir, "--db", db, "--url", u.url, "--uses", "10", "--pattern", "dev-*")
	root := readRoot(t, dir)
	var devs []*testDevice
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		d, err := enrollDevice(u.url, tok, root, id)
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
	}

	backup := filepath.Join(t.TempDir(), "backup")
	var m ca.Manifest
	if err := json.Unmarshal([]byte(mustRun(t, "backup", "--dir", dir, "--db", db, "--out", backup, "--json")), &m); err != nil {
		t.Fatal(err)
	}
	if m.Store != "postgres" || m.PGDump != "pg_dump" {
		t.Fatalf("manifest %+v: want a pg_dump of the database", m)
	}
	fresh := pg.CreateDB("restored")
	restored := filepath.Join(t.TempDir(), "restored")
	mustRun(t, "restore", "--from", backup, "--dir", restored, "--db", fresh)
	u2 := serveStoppable(t, restored, "--db", fresh)
	var listed []deviceJSON
	if err := json.Unmarshal([]byte(mustRun(t, "device", "list", "--dir", restored, "--db", fresh, "--json")), &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed) != len(devs) {
		t.Errorf("restored database holds %d devices, want %d", len(listed), len(devs))
	}
	if err := devs[0].renew(u2.url); err != nil {
		t.Fatalf("renew against the restored CA: %v", err)
	}
	u2.stop()

	// Rotation on the first replica's host, with the shared database.
	u.stop()
	mustRun(t, "rotate", "intermediate", "--dir", dir, "--db", db)
	code, _, errOut := edgeca(t, "device", "list", "--dir", replica2, "--db", db)
	if code == 0 || !strings.Contains(errOut, "another intermediate") {
		t.Fatalf("a replica with the pre-rotation directory opened the shared database: %d %s", code, errOut)
	}
	copyDir(t, dir, replica2)
	r1 := serveStoppable(t, dir, "--db", db)
	r2 := serveStoppable(t, replica2, "--db", db)
	if err := devs[1].renew(r2.url); err != nil {
		t.Fatalf("a device of the old intermediate renews on the other replica: %v", err)
	}
	if err := devs[1].renew(r1.url); err != nil {
		t.Fatalf("and then on the first with the new intermediate's certificate: %v", err)
	}
	if devs[1].chain[0].Issuer.CommonName == devs[2].chain[0].Issuer.CommonName {
		t.Errorf("renewed certificate issued by %q, the old intermediate", devs[1].chain[0].Issuer.CommonName)
	}
}
