package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the pure Go "sqlite" driver
)

// busyTimeout is how long a connection waits for another process's write
// transaction (a CLI command next to a busy server) before giving up.
const busyTimeout = 10 * time.Second

// SQLite is the Store on a SQLite database file in WAL mode. All writes of
// this process go through one connection (so they never contend with each
// other for the file lock); reads use a small pool and, thanks to WAL, never
// wait for a writer. Write transactions start with BEGIN IMMEDIATE, so a
// transaction that reads then writes cannot fail half way with SQLITE_BUSY
// when another process writes too: it waits up to busyTimeout at BEGIN.
//
// Durability is SQLite's own: synchronous=FULL makes every COMMIT fsync
// the WAL before it returns, so a commit the CA answers for survives a
// power cut, whatever SQLite does with its files.
//
// Enrollments (the Issuer intents) go through one writer goroutine that commits them in
// groups (group commit, private to this implementation): while one group
// commits (and fsyncs), the next requests queue up and then share one
// transaction and one fsync. A lone request never waits for company; a
// request is answered only after its group's COMMIT returned.
type SQLite struct {
	w, r *sql.DB

	getToken, getDevice, useToken, upsertDevice, addAudit, recordIssued *sql.Stmt      // on w
	readDevice, readToken, readSetting                                  *sql.Stmt      // on r
	inv                                                                 inventoryStmts // on w (inventory.go)

	jobs       chan *issueJob // unbuffered: a sent job is always taken by the writer
	mu         sync.RWMutex   // held for reading while sending to jobs, for writing by Close
	closed     bool
	started    bool // the writer goroutine runs
	stop       chan struct{}
	writerDone chan struct{}

	fleetStmts sync.Map // fleet.go: prepared statements on w
}

// maxGroup bounds how many enrollments share one transaction.
const maxGroup = 64

type issueJob struct {
	req    issueReq
	decide decision
	done   chan error
	// out is set by the writer before it sends on done.
	out Outcome
}

var _ Store = (*SQLite)(nil)

// Open opens (creating if needed) the database at path and applies pending
// schema migrations.
func Open(ctx context.Context, path string) (*SQLite, error) {
	return openSQLite(ctx, path, "FULL")
}

// OpenSyncNormal opens the database like Open but with
// synchronous=NORMAL: a commit is not fsynced, so a power cut can lose
// answered enrollments. It exists only as the benchmark's baseline for
// what FULL costs (tools/bench); edgeca never opens its store so.
func OpenSyncNormal(ctx context.Context, path string) (*SQLite, error) {
	return openSQLite(ctx, path, "NORMAL")
}

func openSQLite(ctx context.Context, path, synchronous string) (*SQLite, error) {
	if strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("open store %s: the path must not contain '?' or '#'", path)
	}
	// synchronous=FULL: in WAL mode SQLite fsyncs the WAL at every
	// commit, so every commit the CA answers for (an enrollment, a
	// revocation, a new token) is on disk before the answer, and a used
	// single-use token stays used after a power cut or kernel crash, not
	// only after a crash of edgeca. Group commit (writer) pays for it.
	params := fmt.Sprintf("_busy_timeout=%d&_journal_mode=WAL&_synchronous=%s&_foreign_keys=1", busyTimeout.Milliseconds(), synchronous)
	w, err := sql.Open("sqlite", path+"?"+params+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	r, err := sql.Open("sqlite", path+"?"+params+"&_query_only=1")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	r.SetMaxIdleConns(4)
	s := &SQLite{w: w, r: r, jobs: make(chan *issueJob), stop: make(chan struct{}), writerDone: make(chan struct{})}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := s.migrateRevocation(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := s.prepareInventory(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := s.prepareFleet(ctx); err != nil { // fleet.go
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s.started = true
	go s.writer()
	return s, nil
}

// pointRead is the context of a read of one row by its primary key, which
// every enrollment does twice before signing (Token, Setting). Given a
// cancelable context, database/sql and the driver each start a goroutine
// per query to watch it, four per enrollment, a few percent of edgeca's CPU
// (perf of `edgeca serve` under tools/bench/peer); a one-row lookup ends
// sooner than a cancellation would, and busy_timeout bounds its wait for a
// lock, so it runs without one.
func pointRead(ctx context.Context) context.Context {
	return context.WithoutCancel(ctx)
}

// Close stops the writer and closes the database.
func (s *SQLite) Close() error {
	s.mu.Lock()
	wasClosed := s.closed
	s.closed = true
	s.mu.Unlock()
	if wasClosed {
		return nil
	}
	close(s.stop)
	if s.started {
		<-s.writerDone
	}
	for _, st := range []*sql.Stmt{s.getToken, s.getDevice, s.useToken, s.upsertDevice, s.addAudit, s.recordIssued, s.readDevice, s.readToken, s.readSetting} {
		if st != nil {
			st.Close()
		}
	}
	s.closeInventory()
	return errors.Join(s.w.Close(), s.r.Close())
}

// migrations are applied in order; migration i brings the schema to version
// i+1. Never edit one that has shipped: append a new one.
//
// Every enrollment writes one row in each of tokens, devices and audit in
// one transaction, so the schema keeps that to three b-tree pages: tokens
// and devices are WITHOUT ROWID (the primary key is the table, no separate
// index), and audit has no secondary index and no AUTOINCREMENT (seq
// still grows, as rows are never deleted).
var migrations = []string{
	`CREATE TABLE settings (
		key   TEXT PRIMARY KEY,
		value TEXT NOT NULL
	);
	CREATE TABLE tokens (
		id           TEXT PRIMARY KEY,
		secret_hash  BLOB NOT NULL,
		device       TEXT NOT NULL DEFAULT '',
		pattern      TEXT NOT NULL DEFAULT '',
		max_uses     INTEGER NOT NULL CHECK (max_uses > 0),
		uses         INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
		created_at   INTEGER NOT NULL,
		expires_at   INTEGER NOT NULL,
		revoked_at   INTEGER NOT NULL DEFAULT 0,
		last_used_at INTEGER NOT NULL DEFAULT 0
	) WITHOUT ROWID;
	CREATE TABLE devices (
		id          TEXT PRIMARY KEY,
		status      TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
		serial      TEXT NOT NULL,
		prev_serial TEXT NOT NULL DEFAULT '',
		not_after   INTEGER NOT NULL,
		first_seen  INTEGER NOT NULL,
		last_seen   INTEGER NOT NULL,
		token_id    TEXT NOT NULL DEFAULT '',
		enrollments INTEGER NOT NULL DEFAULT 0,
		revoked_at  INTEGER NOT NULL DEFAULT 0
	) WITHOUT ROWID;
	CREATE TABLE audit (
		seq       INTEGER PRIMARY KEY,
		time      INTEGER NOT NULL,
		op        TEXT NOT NULL,
		peer      TEXT NOT NULL DEFAULT '',
		token_id  TEXT NOT NULL DEFAULT '',
		device_id TEXT NOT NULL DEFAULT '',
		result    TEXT NOT NULL,
		code      TEXT NOT NULL DEFAULT '',
		reason    TEXT NOT NULL DEFAULT '',
		serial    TEXT NOT NULL DEFAULT ''
	);`,
	// Idempotent enrollment: the newest certificate itself (for a retry
	// whose answer was lost), its key, the token that issued it, and the
	// newest certificate the device has shown it holds. Devices enrolled
	// before may renew with either of the two serials they could hold.
	`ALTER TABLE devices ADD COLUMN cert BLOB NOT NULL DEFAULT x'';
	ALTER TABLE devices ADD COLUMN key_hash BLOB NOT NULL DEFAULT x'';
	ALTER TABLE devices ADD COLUMN cert_token TEXT NOT NULL DEFAULT '';
	ALTER TABLE devices ADD COLUMN confirmed_serial TEXT NOT NULL DEFAULT '';
	UPDATE devices SET confirmed_serial = prev_serial;`,
	// Device ids are case-insensitive (package deviceid): the registry,
	// token bindings and patterns are keyed by the lower-case form. Two
	// devices whose ids differed in case only (the bug this fixes) keep
	// the lower-case one under it; the other keeps its old key, listed
	// but no longer found by id.
	`UPDATE OR IGNORE devices SET id = lower(id) WHERE id <> lower(id);
	UPDATE tokens SET device = lower(device), pattern = lower(pattern);`,
	// Inventory (issue 16): agent version, renewal result and a short
	// certificate history per device (inventory.go).
	inventoryMigration,
	// Fleet: labels, renew-now marks, expiry notices, webhook outbox.
	fleetSchemaSQLite, // fleet.go
}

// SchemaVersion is the schema version this code writes.
func SchemaVersion() int { return len(migrations) }

func (s *SQLite) migrate(ctx context.Context) error {
	if _, err := s.w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		applied_at INTEGER NOT NULL
	)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	// One IMMEDIATE transaction: two processes opening a new database at
	// once apply each migration exactly once.
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback()
	var cur int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&cur); err != nil {
		return fmt.Errorf("migrate: read version: %w", err)
	}
	if cur > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this edgeca understands (%d): upgrade edgeca", cur, len(migrations))
	}
	for v := cur + 1; v <= len(migrations); v++ {
		if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, v, time.Now().UnixNano()); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

const (
	tokenCols  = `id, secret_hash, device, pattern, max_uses, uses, created_at, expires_at, revoked_at, last_used_at`
	deviceCols = `id, status, serial, prev_serial, not_after, first_seen, last_seen, token_id, enrollments, revoked_at, cert, key_hash, cert_token, confirmed_serial`
	auditCols  = `seq, time, op, peer, token_id, device_id, result, code, reason, serial`
)

func (s *SQLite) prepare(ctx context.Context) error {
	for _, p := range []struct {
		dst   **sql.Stmt
		query string
	}{
		{&s.readDevice, `SELECT ` + deviceCols + ` FROM devices WHERE id = ?`},
		{&s.readToken, `SELECT ` + tokenCols + ` FROM tokens WHERE id = ?`},
		// Prepared once: every enrollment reads a setting (the token's
		// TPM policy) and records its certificate, and compiling the SQL
		// each time cost more than running it (make bench, pprof).
		{&s.readSetting, `SELECT value FROM settings WHERE key = ?`},
		{&s.recordIssued, `INSERT OR IGNORE INTO issued_certs (serial, device_id, not_after, issued_at) VALUES (?, ?, ?, ?)`},
		{&s.getToken, `SELECT ` + tokenCols + ` FROM tokens WHERE id = ?`},
		{&s.getDevice, `SELECT ` + deviceCols + ` FROM devices WHERE id = ?`},
		{&s.useToken, `UPDATE tokens SET uses = uses + 1, last_used_at = ? WHERE id = ? AND uses < max_uses`},
		// Every right-hand side reads the row as it was before the
		// update: confirmed_serial compares the presented certificate
		// with the serial being replaced.
		{&s.upsertDevice, `INSERT INTO devices (id, status, serial, not_after, first_seen, last_seen, token_id, enrollments, cert, key_hash, cert_token, confirmed_serial)
			VALUES (?1, 'active', ?2, ?3, ?4, ?4, ?5, 1, ?6, ?7, ?5, '')
			ON CONFLICT (id) DO UPDATE SET
				prev_serial = devices.serial,
				serial = excluded.serial,
				not_after = excluded.not_after,
				last_seen = excluded.last_seen,
				token_id = CASE WHEN excluded.token_id = '' THEN devices.token_id ELSE excluded.token_id END,
				enrollments = devices.enrollments + 1,
				cert = excluded.cert,
				key_hash = excluded.key_hash,
				cert_token = excluded.cert_token,
				confirmed_serial = CASE
					WHEN ?8 = '' THEN ''
					WHEN ?8 = devices.serial THEN devices.serial
					ELSE devices.confirmed_serial END`},
		{&s.addAudit, `INSERT INTO audit (time, op, peer, token_id, device_id, result, code, reason, serial) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`},
	} {
		db := s.w
		if p.dst == &s.readDevice || p.dst == &s.readToken || p.dst == &s.readSetting {
			db = s.r
		}
		st, err := db.PrepareContext(ctx, p.query)
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		*p.dst = st
	}
	return nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

type scanner interface{ Scan(dest ...any) error }

func scanToken(sc scanner) (Token, error) {
	var t Token
	var hash []byte
	var created, expires, revoked, lastUsed int64
	if err := sc.Scan(&t.ID, &hash, &t.Device, &t.Pattern, &t.MaxUses, &t.Uses, &created, &expires, &revoked, &lastUsed); err != nil {
		return Token{}, err
	}
	if len(hash) != len(t.SecretHash) {
		return Token{}, fmt.Errorf("token %s: stored hash has %d bytes, want %d", t.ID, len(hash), len(t.SecretHash))
	}
	copy(t.SecretHash[:], hash)
	t.CreatedAt, t.ExpiresAt, t.RevokedAt, t.LastUsedAt = fromUnixNano(created), fromUnixNano(expires), fromUnixNano(revoked), fromUnixNano(lastUsed)
	return t, nil
}

func scanDevice(sc scanner) (Device, error) {
	var d Device
	var notAfter, first, last, revoked int64
	var keyHash []byte
	if err := sc.Scan(&d.ID, &d.Status, &d.Serial, &d.PrevSerial, &notAfter, &first, &last, &d.TokenID, &d.Enrollments, &revoked,
		&d.Cert, &keyHash, &d.CertToken, &d.Confirmed); err != nil {
		return Device{}, err
	}
	if len(keyHash) != 0 && len(keyHash) != len(d.KeyHash) {
		return Device{}, fmt.Errorf("device %s: stored key hash has %d bytes, want %d", d.ID, len(keyHash), len(d.KeyHash))
	}
	copy(d.KeyHash[:], keyHash)
	d.NotAfter, d.FirstSeen, d.LastSeen, d.RevokedAt = fromUnixNano(notAfter), fromUnixNano(first), fromUnixNano(last), fromUnixNano(revoked)
	return d, nil
}

func scanAudit(sc scanner) (AuditRecord, error) {
	var a AuditRecord
	var at int64
	if err := sc.Scan(&a.Seq, &at, &a.Op, &a.Peer, &a.TokenID, &a.DeviceID, &a.Result, &a.Code, &a.Reason, &a.Serial); err != nil {
		return AuditRecord{}, err
	}
	a.Time = fromUnixNano(at)
	return a, nil
}

// CreateToken stores a new token; ErrExists if the id is taken.
func (s *SQLite) CreateToken(ctx context.Context, t Token) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO tokens (`+tokenCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		t.ID, t.SecretHash[:], t.Device, t.Pattern, t.MaxUses, t.Uses,
		unixNano(t.CreatedAt), unixNano(t.ExpiresAt), unixNano(t.RevokedAt), unixNano(t.LastUsedAt))
	if err != nil {
		if strings.Contains(err.Error(), "UNIQUE constraint failed") {
			return fmt.Errorf("create token %s: %w", t.ID, ErrExists)
		}
		return fmt.Errorf("create token %s: %w", t.ID, err)
	}
	return nil
}

// Tokens lists every token, oldest first.
func (s *SQLite) Tokens(ctx context.Context) ([]Token, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+tokenCols+` FROM tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, fmt.Errorf("list tokens: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return out, nil
}

// Token implements TokenStore, on the read pool.
func (s *SQLite) Token(ctx context.Context, id string) (Token, error) {
	t, err := scanToken(s.readToken.QueryRowContext(pointRead(ctx), id))
	if errors.Is(err, sql.ErrNoRows) {
		return Token{}, fmt.Errorf("token %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Token{}, fmt.Errorf("token %s: %w", id, err)
	}
	return t, nil
}

// RevokeToken marks a token revoked. Revoking twice keeps the first time.
func (s *SQLite) RevokeToken(ctx context.Context, id string, at time.Time) error {
	res, err := s.w.ExecContext(ctx, `UPDATE tokens SET revoked_at = CASE WHEN revoked_at = 0 THEN ? ELSE revoked_at END WHERE id = ?`, unixNano(at), id)
	if err != nil {
		return fmt.Errorf("revoke token %s: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("revoke token %s: %w", id, err)
	} else if n == 0 {
		return fmt.Errorf("revoke token %s: %w", id, ErrNotFound)
	}
	return nil
}

// Devices lists every device by id.
func (s *SQLite) Devices(ctx context.Context) ([]Device, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+deviceCols+` FROM devices ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// Device returns one device.
func (s *SQLite) Device(ctx context.Context, id string) (Device, error) {
	d, err := scanDevice(s.readDevice.QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Device{}, fmt.Errorf("device %s: %w", id, err)
	}
	return d, nil
}

// RevokeDevice marks a device revoked. Revoking twice keeps the first time.
func (s *SQLite) RevokeDevice(ctx context.Context, id string, at time.Time) error {
	res, err := s.w.ExecContext(ctx, `UPDATE devices SET status = 'revoked', revoked_at = CASE WHEN revoked_at = 0 THEN ? ELSE revoked_at END WHERE id = ?`, unixNano(at), id)
	if err != nil {
		return fmt.Errorf("revoke device %s: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("revoke device %s: %w", id, err)
	} else if n == 0 {
		return fmt.Errorf("revoke device %s: %w", id, ErrNotFound)
	}
	return nil
}

// AddAudit appends one record.
func (s *SQLite) AddAudit(ctx context.Context, a AuditRecord) error {
	if _, err := s.addAudit.ExecContext(ctx, auditArgs(a)...); err != nil {
		return fmt.Errorf("write audit record: %w", err)
	}
	return nil
}

func auditArgs(a AuditRecord) []any {
	return []any{unixNano(a.Time), a.Op, a.Peer, a.TokenID, a.DeviceID, a.Result, a.Code, a.Reason, a.Serial}
}

// Audit returns the newest limit records, newest first; limit <= 0 means all.
func (s *SQLite) Audit(ctx context.Context, limit int) ([]AuditRecord, error) {
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	rows, err := s.r.QueryContext(ctx, `SELECT `+auditCols+` FROM audit ORDER BY seq DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	defer rows.Close()
	var out []AuditRecord
	for rows.Next() {
		a, err := scanAudit(rows)
		if err != nil {
			return nil, fmt.Errorf("read audit log: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	return out, nil
}

// PruneAudit implements AuditLog. seq keeps growing after a prune (the
// newest row is never deleted while keep > 0), so listings stay in order.
func (s *SQLite) PruneAudit(ctx context.Context, before time.Time, keep int) (int64, error) {
	var total int64
	if !before.IsZero() {
		res, err := s.w.ExecContext(ctx, `DELETE FROM audit WHERE time < ?`, unixNano(before))
		if err != nil {
			return 0, fmt.Errorf("prune audit log: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
	}
	if keep > 0 {
		res, err := s.w.ExecContext(ctx, `DELETE FROM audit WHERE seq < (SELECT seq FROM audit ORDER BY seq DESC LIMIT 1 OFFSET ?)`, keep-1)
		if err != nil {
			return total, fmt.Errorf("prune audit log: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
	}
	return total, nil
}

// Setting returns a setting, "" when unset.
func (s *SQLite) Setting(ctx context.Context, key string) (string, error) {
	var v string
	err := s.readSetting.QueryRowContext(pointRead(ctx), key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read setting %s: %w", key, err)
	}
	return v, nil
}

// SetSetting stores a setting.
func (s *SQLite) SetSetting(ctx context.Context, key, value string) error {
	if _, err := s.w.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value); err != nil {
		return fmt.Errorf("write setting %s: %w", key, err)
	}
	return nil
}

// IssueWithToken implements Issuer.
func (s *SQLite) IssueWithToken(ctx context.Context, e TokenEnrollment) (Outcome, error) {
	return s.issue(ctx, e.record(), e.decide)
}

// Reissue implements Issuer.
func (s *SQLite) Reissue(ctx context.Context, r Renewal) (Outcome, error) {
	return s.issue(ctx, r.record(), r.decide)
}

// Recover implements Issuer.
func (s *SQLite) Recover(ctx context.Context, r Recovery) (Outcome, error) {
	return s.issue(ctx, r.record(), r.decide)
}

func (s *SQLite) issue(ctx context.Context, req issueReq, decide decision) (Outcome, error) {
	j := &issueJob{req: req, decide: decide, done: make(chan error, 1)}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return Outcome{}, fmt.Errorf("issue: %w", ErrClosed)
	}
	select {
	case s.jobs <- j:
	case <-ctx.Done():
		s.mu.RUnlock()
		return Outcome{}, fmt.Errorf("issue: %w", ctx.Err())
	}
	s.mu.RUnlock()
	// Once taken, the job runs to completion: wait for its outcome even if
	// ctx ends, so the caller never reports failure for a committed issue.
	if err := <-j.done; err != nil {
		return Outcome{}, err
	}
	return j.out, nil
}

// writer takes issue jobs and runs them in groups until Close: a group is
// the first job and whatever queued up behind it while the previous group
// committed.
func (s *SQLite) writer() {
	defer close(s.writerDone)
	group := make([]*issueJob, 0, maxGroup)
	for {
		group = group[:0]
		select {
		case j := <-s.jobs:
			group = append(group, j)
		case <-s.stop:
			return
		}
	more:
		for len(group) < maxGroup {
			select {
			case j := <-s.jobs:
				group = append(group, j)
			default:
				break more
			}
		}
		s.runGroup(group)
	}
}

// runGroup runs jobs in one transaction. A job refused (or replayed) wrote
// nothing (decisions come before writes), so it does not disturb the others.
// If the database itself fails, the whole group is rolled back and every
// job gets the error.
func (s *SQLite) runGroup(group []*issueJob) {
	ctx := context.Background()
	errs := make([]error, len(group))
	fail := func(err error) {
		for _, j := range group {
			j.done <- err
		}
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		fail(fmt.Errorf("issue: begin: %w", err))
		return
	}
	stmts := [...]*sql.Stmt{
		tx.StmtContext(ctx, s.getToken), tx.StmtContext(ctx, s.getDevice),
		tx.StmtContext(ctx, s.useToken), tx.StmtContext(ctx, s.upsertDevice), tx.StmtContext(ctx, s.addAudit),
	}
	recordIssued := tx.StmtContext(ctx, s.recordIssued)
	for i, j := range group {
		var dbErr error
		var wrote bool
		wrote, errs[i], dbErr = issueOne(ctx, stmts, j)
		if dbErr == nil && wrote {
			dbErr = recordIssuedTx(ctx, recordIssued, j.req) // revocation.go
		}
		if dbErr == nil && wrote {
			dbErr = s.recordInventoryTx(ctx, tx, j.req) // inventory.go
		}
		if dbErr == nil && wrote {
			dbErr = fleetIssued(ctx, s.ftx(tx), j.req) // fleet.go
		}
		if dbErr != nil {
			_ = tx.Rollback()
			fail(dbErr)
			return
		}
	}
	if err := tx.Commit(); err != nil {
		fail(fmt.Errorf("issue: commit: %w", err))
		return
	}
	for i, j := range group {
		j.done <- errs[i]
	}
}

// issueOne runs one job inside the group's transaction: wrote says it
// recorded an issue, refusal is the job's *Refusal, dbErr means the
// transaction is broken.
func issueOne(ctx context.Context, st [5]*sql.Stmt, j *issueJob) (wrote bool, refusal, dbErr error) {
	getToken, getDevice, useToken, upsertDevice, addAudit := st[0], st[1], st[2], st[3], st[4]
	req := j.req
	var tok *Token
	if req.TokenID != "" {
		t, err := scanToken(getToken.QueryRowContext(ctx, req.TokenID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return false, nil, fmt.Errorf("issue: read token %s: %w", req.TokenID, err)
		default:
			tok = &t
		}
	}
	var dev *Device
	d, err := scanDevice(getDevice.QueryRowContext(ctx, req.DeviceID))
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return false, nil, fmt.Errorf("issue: read device %s: %w", req.DeviceID, err)
	default:
		dev = &d
	}
	replay, ref := j.decide(tok, dev)
	if ref != nil {
		return false, ref, nil
	}
	if dev != nil {
		j.out = Outcome{Device: *dev, Existed: true}
	}
	if replay {
		j.out.Replayed = true
		return false, nil, nil
	}

	now := unixNano(req.Time)
	tokenID := ""
	if tok != nil {
		tokenID = tok.ID
		res, err := useToken.ExecContext(ctx, now, tok.ID)
		if err != nil {
			return false, nil, fmt.Errorf("issue: count token use: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return false, nil, fmt.Errorf("issue: count token use: %w", err)
		} else if n != 1 {
			// The decision saw a use left in this very transaction.
			return false, &Refusal{Kind: RefuseTokenUsedUp, Token: tok, Device: dev}, nil
		}
	}
	iss := req.Issuance
	der := iss.DER
	if der == nil {
		der = []byte{} // the column is NOT NULL
	}
	if _, err := upsertDevice.ExecContext(ctx, req.DeviceID, iss.Serial, unixNano(iss.NotAfter), now, tokenID, der, iss.KeyHash[:], req.Presented); err != nil {
		return false, nil, fmt.Errorf("issue: record device %s: %w", req.DeviceID, err)
	}
	a := req.Audit
	a.Serial = iss.Serial
	if _, err := addAudit.ExecContext(ctx, auditArgs(a)...); err != nil {
		return false, nil, fmt.Errorf("issue: write audit record: %w", err)
	}
	return true, nil, nil
}

// Ping implements Store: a write transaction that changes nothing proves
// the file can be locked and written (a read-only or vanished database
// fails here).
func (s *SQLite) Ping(ctx context.Context) error {
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return fmt.Errorf("ping store: %w", ErrClosed)
	}
	if _, err := s.w.ExecContext(ctx, `UPDATE settings SET value = value WHERE 0`); err != nil {
		return fmt.Errorf("ping store: %w: %w", ErrUnavailable, err)
	}
	return nil
}

// InitSetting implements Store.
func (s *SQLite) InitSetting(ctx context.Context, key, value string) (string, error) {
	if _, err := s.w.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`, key, value); err != nil {
		return "", fmt.Errorf("write setting %s: %w", key, err)
	}
	var v string
	if err := s.w.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&v); err != nil {
		return "", fmt.Errorf("read setting %s: %w", key, err)
	}
	return v, nil
}

// Snapshot reads the whole state in one read transaction (a consistent
// copy even while a server writes), for `edgeca migrate`.
func (s *SQLite) Snapshot(ctx context.Context) (Snapshot, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	defer tx.Rollback()
	var snap Snapshot
	q := func(query string, each func(scanner) error) error {
		rows, err := tx.QueryContext(ctx, query)
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			if err := each(rows); err != nil {
				return fmt.Errorf("snapshot: %w", err)
			}
		}
		return rows.Err()
	}
	if err := q(`SELECT `+tokenCols+` FROM tokens ORDER BY created_at, id`, func(sc scanner) error {
		t, err := scanToken(sc)
		snap.Tokens = append(snap.Tokens, t)
		return err
	}); err != nil {
		return Snapshot{}, err
	}
	if err := q(`SELECT `+deviceCols+` FROM devices ORDER BY id`, func(sc scanner) error {
		d, err := scanDevice(sc)
		snap.Devices = append(snap.Devices, d)
		return err
	}); err != nil {
		return Snapshot{}, err
	}
	if err := q(`SELECT `+auditCols+` FROM audit ORDER BY seq DESC`, func(sc scanner) error {
		a, err := scanAudit(sc)
		snap.Audit = append(snap.Audit, a)
		return err
	}); err != nil {
		return Snapshot{}, err
	}
	snap.Settings = map[string]string{}
	if err := q(`SELECT key, value FROM settings`, func(sc scanner) error {
		var k, v string
		err := sc.Scan(&k, &v)
		snap.Settings[k] = v
		return err
	}); err != nil {
		return Snapshot{}, err
	}
	if err := q(`SELECT serial, device_id, not_after, issued_at FROM issued_certs ORDER BY issued_at, serial`, func(sc scanner) error {
		var c IssuedCert
		var na, ia int64
		err := sc.Scan(&c.Serial, &c.DeviceID, &na, &ia)
		c.NotAfter, c.IssuedAt = fromUnixNano(na), fromUnixNano(ia)
		snap.Issued = append(snap.Issued, c)
		return err
	}); err != nil {
		return Snapshot{}, err
	}
	if err := q(`SELECT serial, device_id, not_after, revoked_at, reason FROM revoked_certs ORDER BY revoked_at, serial`, func(sc scanner) error {
		var c RevokedCert
		var na, ra int64
		err := sc.Scan(&c.Serial, &c.DeviceID, &na, &ra, &c.Reason)
		c.NotAfter, c.RevokedAt = fromUnixNano(na), fromUnixNano(ra)
		snap.Revoked = append(snap.Revoked, c)
		return err
	}); err != nil {
		return Snapshot{}, err
	}
	if err := q(`SELECT seq, kind, serial, device_id, not_after, at, reason FROM revocation_events ORDER BY seq`, func(sc scanner) error {
		var e RevocationEvent
		var na, at int64
		err := sc.Scan(&e.Seq, &e.Kind, &e.Serial, &e.DeviceID, &na, &at, &e.Reason)
		e.NotAfter, e.At = fromUnixNano(na), fromUnixNano(at)
		snap.Events = append(snap.Events, e)
		return err
	}); err != nil {
		return Snapshot{}, err
	}
	if snap.Tables, err = snapshotTables(ctx, tx); err != nil {
		return Snapshot{}, err
	}
	return snap, nil
}
