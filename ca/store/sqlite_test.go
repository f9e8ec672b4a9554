package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func openTest(t *testing.T, path string) *SQLite {
	t.Helper()
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	a := openTest(t, path)
	b := openTest(t, path) // a second opener applies nothing twice
	for _, s := range []*SQLite{a, b} {
		var n, max int
		if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&n, &max); err != nil {
			t.Fatal(err)
		}
		if n != SchemaVersion() || max != SchemaVersion() {
			t.Fatalf("schema_migrations has %d rows, max %d; want %d", n, max, SchemaVersion())
		}
	}
	var mode string
	if err := a.r.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode %q %v, want wal", mode, err)
	}
	// A database from a newer edgeca is refused, not silently misread.
	if _, err := a.w.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)`, SchemaVersion()+1); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, path); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("open of a newer schema: %v", err)
	}
}

func TestTokensDevicesAudit(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "db"))
	now := time.Now().UTC().Truncate(time.Microsecond)
	tok := Token{ID: "t1", SecretHash: [32]byte{1, 2, 3}, Pattern: "a-*", MaxUses: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := s.CreateToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateToken(ctx, tok); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate token: %v", err)
	}
	issue := func(id, serial string) error {
		_, err := s.IssueWithToken(ctx, TokenEnrollment{TokenID: "t1", SecretHash: [32]byte{1, 2, 3}, DeviceID: id, Time: now, Issuance: Issuance{Serial: serial, NotAfter: now.Add(time.Hour)},
			Audit: AuditRecord{Time: now, Op: "simpleenroll", Result: ResultOK}})
		return err
	}
	if err := issue("a-1", "01"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reissue(ctx, Renewal{DeviceID: "a-1", Presented: "01", Time: now, Issuance: Issuance{Serial: "02", NotAfter: now.Add(time.Hour)},
		Audit: AuditRecord{Time: now, Op: "simplereenroll", Result: ResultOK}}); err != nil {
		t.Fatal(err)
	}
	var r *Refusal
	if err := issue("a-2", "03"); !errors.As(err, &r) || r.Kind != RefuseTokenUsedUp {
		t.Fatalf("second use: %v", err)
	}
	d, err := s.Device(ctx, "a-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Serial != "02" || d.PrevSerial != "01" || d.Enrollments != 2 || d.Status != StatusActive || d.TokenID != "t1" || !d.FirstSeen.Equal(now) {
		t.Fatalf("device %+v", d)
	}
	if _, err := s.Device(ctx, "a-2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("failed issue recorded a device: %v", err)
	}
	toks, err := s.Tokens(ctx)
	if err != nil || len(toks) != 1 || toks[0].Uses != 1 || toks[0].SecretHash != tok.SecretHash || !toks[0].ExpiresAt.Equal(tok.ExpiresAt) {
		t.Fatalf("tokens %+v %v", toks, err)
	}
	if err := s.RevokeDevice(ctx, "a-1", now); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Device(ctx, "a-1"); d.Status != StatusRevoked || !d.RevokedAt.Equal(now) {
		t.Fatalf("revoked device %+v", d)
	}
	recs, err := s.Audit(ctx, 0)
	if err != nil || len(recs) != 2 || recs[0].Serial != "02" || recs[1].Serial != "01" {
		t.Fatalf("audit %+v %v", recs, err)
	}
	if err := s.SetSetting(ctx, "url", "https://x"); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Setting(ctx, "url"); err != nil || v != "https://x" {
		t.Fatalf("setting %q %v", v, err)
	}
	if v, err := s.Setting(ctx, "nope"); err != nil || v != "" {
		t.Fatalf("unset setting %q %v", v, err)
	}
}

// TestTwoOpeners uses one database file through two independent Store
// values, as `edgeca serve` and a CLI command in another process do:
// writes from both interleave without SQLITE_BUSY errors and each sees the
// other's data.
func TestTwoOpeners(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	server, cli := openTest(t, path), openTest(t, path)
	now := time.Now()
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range n {
			errs <- cli.CreateToken(ctx, Token{ID: fmt.Sprintf("t%d", i), MaxUses: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
		}
	}()
	go func() {
		defer wg.Done()
		for i := range n {
			_, err := server.issue(ctx, issueReq{DeviceID: fmt.Sprintf("d%d", i), Time: now, Issuance: Issuance{Serial: "aa", NotAfter: now},
				Audit: AuditRecord{Time: now, Op: "x", Result: ResultOK}}, alwaysIssue)
			errs <- err
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	toks, err := server.Tokens(ctx)
	if err != nil || len(toks) != n {
		t.Fatalf("server sees %d tokens (%v), want %d", len(toks), err, n)
	}
	devs, err := cli.Devices(ctx)
	if err != nil || len(devs) != n {
		t.Fatalf("cli sees %d devices (%v), want %d", len(devs), err, n)
	}
}

// TestDurableCommits: every connection runs in WAL mode with
// synchronous=FULL, so SQLite fsyncs the WAL at each commit itself (the
// durability does not rest on a handle of ours on its files).
func TestDurableCommits(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "db"))
	for name, db := range map[string]*sql.DB{"writer": s.w, "reader": s.r} {
		var mode string
		var sync int
		if err := db.QueryRowContext(context.Background(), `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
			t.Errorf("%s: journal_mode %q %v, want wal", name, mode, err)
		}
		if err := db.QueryRowContext(context.Background(), `PRAGMA synchronous`).Scan(&sync); err != nil || sync != 2 {
			t.Errorf("%s: synchronous %d %v, want 2 (FULL)", name, sync, err)
		}
	}
}

// TestConfirmedSerial walks a device through the renewals of
// issueReq.Presented (the record of every intent): a renewal presenting the newest certificate
// confirms it; one presenting the confirmed certificate (an answer was
// lost) keeps it confirmed however often it happens; a token enrollment
// clears it. Cert, KeyHash and CertToken follow the newest certificate.
func TestConfirmedSerial(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "db"))
	now := time.Now().UTC()
	if err := s.CreateToken(ctx, Token{ID: "t1", MaxUses: 2, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		token, presented, serial string
		wantConfirmed            string
	}{
		{"t1", "", "A", ""},
		{"", "A", "B", "A"}, // renewed with the newest: A confirmed
		{"", "A", "C", "A"}, // B's answer was lost: A still good
		{"", "A", "D", "A"}, // and again
		{"", "D", "E", "D"}, // the device shows D: A is done
		{"t1", "", "F", ""}, // a token enrollment starts over
	}
	for i, st := range steps {
		der := []byte("cert " + st.serial)
		_, err := s.issue(ctx, issueReq{TokenID: st.token, DeviceID: "d1", Time: now, Presented: st.presented,
			Issuance: Issuance{Serial: st.serial, NotAfter: now.Add(time.Hour), DER: der, KeyHash: [32]byte{byte(i)}}}, alwaysIssue)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		d, err := s.Device(ctx, "d1")
		if err != nil {
			t.Fatal(err)
		}
		if d.Serial != st.serial || d.Confirmed != st.wantConfirmed || string(d.Cert) != string(der) || d.KeyHash != [32]byte{byte(i)} || d.CertToken != st.token {
			t.Errorf("step %d (%+v): device %+v", i, st, d)
		}
	}
}

// TestMigrationKeepsRenewals opens a version 1 database: a device then may
// renew with either serial it could hold.
func TestMigrationKeepsRenewals(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	s := openTest(t, path)
	if _, err := s.w.ExecContext(ctx, `INSERT INTO devices (id, status, serial, prev_serial, not_after, first_seen, last_seen, confirmed_serial) VALUES ('d1', 'active', 'B', 'A', 0, 0, 0, '')`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.ExecContext(ctx, migrations[1][strings.Index(migrations[1], "UPDATE"):]); err != nil {
		t.Fatal(err)
	}
	d, err := s.Device(ctx, "d1")
	if err != nil || d.Confirmed != "A" || d.Serial != "B" {
		t.Fatalf("%+v %v", d, err)
	}
}

func TestPruneAudit(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "db"))
	base := time.Now().UTC().Add(-10 * time.Hour)
	for i := range 10 { // one record an hour, seq 1..10
		if err := s.AddAudit(ctx, AuditRecord{Time: base.Add(time.Duration(i) * time.Hour), Op: "x", Result: ResultDenied, Reason: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name      string
		before    time.Time
		keep      int
		deleted   int64
		oldestNow string
	}{
		{"nothing to do", time.Time{}, 0, 0, "0"},
		{"keep more than there are", time.Time{}, 100, 0, "0"},
		{"older than 3h into the log", base.Add(150 * time.Minute), 0, 3, "3"},
		{"keep the newest 5", time.Time{}, 5, 2, "5"},
		{"both", base.Add(7 * time.Hour), 2, 3, "8"},
	} {
		n, err := s.PruneAudit(ctx, tc.before, tc.keep)
		if err != nil || n != tc.deleted {
			t.Fatalf("%s: deleted %d %v, want %d", tc.name, n, err, tc.deleted)
		}
		recs, err := s.Audit(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if recs[len(recs)-1].Reason != tc.oldestNow || recs[0].Reason != "9" {
			t.Fatalf("%s: oldest left %q, newest %q", tc.name, recs[len(recs)-1].Reason, recs[0].Reason)
		}
	}
	// New records still sort after the kept ones.
	if err := s.AddAudit(ctx, AuditRecord{Time: time.Now(), Op: "x", Result: ResultOK, Reason: "new"}); err != nil {
		t.Fatal(err)
	}
	if recs, _ := s.Audit(ctx, 1); recs[0].Reason != "new" {
		t.Fatalf("newest after prune: %+v", recs)
	}
}

func TestTokenByID(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "db"))
	now := time.Now().UTC().Truncate(time.Microsecond)
	want := Token{ID: "t1", SecretHash: [32]byte{9}, Device: "d", MaxUses: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := s.CreateToken(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Token(ctx, "t1")
	if err != nil || got != want {
		t.Fatalf("Token(t1) = %+v, %v; want %+v", got, err, want)
	}
	if _, err := s.Token(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Token(nope): %v", err)
	}
}

// TestSyncNormalBaseline: the benchmark's baseline store really runs
// synchronous=NORMAL (1), so the bench's FULL/NORMAL ratio compares what
// it says.
func TestSyncNormalBaseline(t *testing.T) {
	s, err := OpenSyncNormal(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var sync int
	if err := s.w.QueryRowContext(context.Background(), `PRAGMA synchronous`).Scan(&sync); err != nil || sync != 1 {
		t.Errorf("synchronous %d %v, want 1 (NORMAL)", sync, err)
	}
}

// alwaysIssue is a decision for tests of the recording itself.
func alwaysIssue(*Token, *Device) (bool, *Refusal) { return false, nil }
