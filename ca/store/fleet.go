package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Fleet operations: labels on tokens and devices, renew-now requests, and
// the webhook outbox. Both backends implement FleetStore with the same SQL
// (fleetOps below), run in a transaction of each.

// Bounds on what an operator's command or an enrollment can make us store.
const (
	MaxLabels        = 32     // labels on one token or device
	MaxLabelKey      = 63     // characters of a label key
	MaxLabelValue    = 63     // characters of a label value
	MaxTokenBatch    = 100000 // tokens CreateTokens takes at once
	DefaultOutboxMax = 100000 // events kept in the outbox before the oldest are dropped
)

// OutboxEvent is one webhook event waiting for delivery.
type OutboxEvent struct {
	Seq      int64  // assigned by the store, increasing
	ID       string // stable event id receivers deduplicate by
	Kind     string
	Created  time.Time
	Body     []byte // the JSON posted
	Attempts int    // failed deliveries so far
}

// FleetStore is the fleet side of the store.
type FleetStore interface {
	// CreateTokens stores tokens, each with labels, in one transaction:
	// all or none (ErrExists if an id is taken).
	CreateTokens(ctx context.Context, toks []Token, labels map[string]string) error
	// TokenLabels returns a token's labels (empty when none).
	TokenLabels(ctx context.Context, id string) (map[string]string, error)
	// DeviceLabels returns a device's labels (empty when none). A device
	// enrolled with a token got the token's labels in Issue's
	// transaction (a label it already had keeps its value).
	DeviceLabels(ctx context.Context, id string) (map[string]string, error)
	// LabelDevice sets and removes labels of a device; ErrNotFound if
	// there is no such device.
	LabelDevice(ctx context.Context, id string, set map[string]string, remove []string) error
	// DevicesWithLabel lists the ids of devices labelled key=value.
	DevicesWithLabel(ctx context.Context, key, value string) ([]string, error)
	// RequestRenewal marks devices to renew at their next contact; an
	// Issue for the device at or after at clears the mark. It returns how
	// many of ids are known devices (unknown ones are skipped).
	RequestRenewal(ctx context.Context, ids []string, at time.Time) (int, error)
	// RenewalRequested is the time of a device's pending renew-now mark,
	// zero when none.
	RenewalRequested(ctx context.Context, id string) (time.Time, error)
	// Enqueue appends events to the webhook outbox (an id already queued
	// is skipped). The outbox keeps about the newest max events; older
	// ones are dropped and counted (OutboxDropped).
	Enqueue(ctx context.Context, evs []OutboxEvent, max int) error
	// ClaimEvents leases up to limit due events to owner until now+lease:
	// of replicas claiming at once each event goes to one.
	ClaimEvents(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) ([]OutboxEvent, error)
	// AckEvent deletes a delivered event, if owner still holds it.
	AckEvent(ctx context.Context, id, owner string) error
	// RetryEvent releases an event, counting a failed attempt, due again
	// at next, if owner still holds it.
	RetryEvent(ctx context.Context, id, owner string, next time.Time) error
	// OutboxDropped is how many events were dropped for space, ever.
	OutboxDropped(ctx context.Context) (int64, error)
	// NoteExpired finds up to limit active devices whose newest
	// certificate expired at or before now without a renewal and not yet
	// noted, notes them and enqueues mk's event for each, in one
	// transaction: each expiry is reported once, whichever replica looks.
	NoteExpired(ctx context.Context, now time.Time, limit, max int, mk func(Device) OutboxEvent) (int, error)
}

var (
	_ FleetStore = (*SQLite)(nil)
	_ FleetStore = (*Postgres)(nil)
)

// ErrBadLabel is wrapped by label validation errors.
var ErrBadLabel = errors.New("bad label")

// ValidateLabel checks a label: the key 1 to 63 of [a-z0-9._/-] starting
// and ending with a letter or digit, the value 0 to 63 of [A-Za-z0-9._-].
func ValidateLabel(k, v string) error {
	if k == "" || len(k) > MaxLabelKey {
		return fmt.Errorf("%w: key %q must be 1 to %d characters", ErrBadLabel, k, MaxLabelKey)
	}
	for i, c := range k {
		// Punctuation neither first nor last: "key-" means "remove key"
		// on the command line.
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && i < len(k)-1 && strings.ContainsRune("._/-", c)
		if !ok {
			return fmt.Errorf("%w: key %q: lower-case letters, digits and . _ / - (not first or last) only", ErrBadLabel, k)
		}
	}
	if len(v) > MaxLabelValue {
		return fmt.Errorf("%w: value of %s is longer than %d characters", ErrBadLabel, k, MaxLabelValue)
	}
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._-", c)) {
			return fmt.Errorf("%w: value %q of %s: letters, digits and . _ - only", ErrBadLabel, v, k)
		}
	}
	return nil
}

// ParseLabel splits "key=value".
func ParseLabel(s string) (string, string, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return "", "", fmt.Errorf("%w: %q: want key=value", ErrBadLabel, s)
	}
	if err := ValidateLabel(k, v); err != nil {
		return "", "", err
	}
	return k, v, nil
}

func validateLabels(m map[string]string) error {
	if len(m) > MaxLabels {
		return fmt.Errorf("%w: %d labels, at most %d", ErrBadLabel, len(m), MaxLabels)
	}
	for k, v := range m {
		if err := ValidateLabel(k, v); err != nil {
			return err
		}
	}
	return nil
}

// fleetSQL sets fleetSchema apart for each backend: SQLite migration and
// PostgreSQL migration differ in types only.
const (
	fleetSchemaSQLite = `CREATE TABLE token_labels (
		token_id TEXT NOT NULL,
		key      TEXT NOT NULL,
		value    TEXT NOT NULL,
		PRIMARY KEY (token_id, key)
	) WITHOUT ROWID;
	CREATE TABLE device_labels (
		device_id TEXT NOT NULL,
		key       TEXT NOT NULL,
		value     TEXT NOT NULL,
		PRIMARY KEY (device_id, key)
	) WITHOUT ROWID;
	CREATE INDEX device_labels_kv ON device_labels (key, value);
	CREATE TABLE renew_requests (
		device_id    TEXT PRIMARY KEY,
		requested_at INTEGER NOT NULL
	) WITHOUT ROWID;
	CREATE TABLE expiry_notices (
		device_id TEXT NOT NULL,
		serial    TEXT NOT NULL,
		PRIMARY KEY (device_id, serial)
	) WITHOUT ROWID;
	CREATE TABLE webhook_outbox (
		seq         INTEGER PRIMARY KEY AUTOINCREMENT,
		id          TEXT NOT NULL UNIQUE,
		kind        TEXT NOT NULL,
		created_at  INTEGER NOT NULL,
		body        BLOB NOT NULL,
		attempts    INTEGER NOT NULL DEFAULT 0,
		next_at     INTEGER NOT NULL DEFAULT 0,
		lease_owner TEXT NOT NULL DEFAULT '',
		lease_until INTEGER NOT NULL DEFAULT 0
	);`
	fleetSchemaPostgres = `CREATE TABLE token_labels (
		token_id TEXT NOT NULL,
		key      TEXT NOT NULL,
		value    TEXT NOT NULL,
		PRIMARY KEY (token_id, key)
	);
	CREATE TABLE device_labels (
		device_id TEXT NOT NULL,
		key       TEXT NOT NULL,
		value     TEXT NOT NULL,
		PRIMARY KEY (device_id, key)
	);
	CREATE INDEX device_labels_kv ON device_labels (key, value);
	CREATE TABLE renew_requests (
		device_id    TEXT PRIMARY KEY,
		requested_at BIGINT NOT NULL
	);
	CREATE TABLE expiry_notices (
		device_id TEXT NOT NULL,
		serial    TEXT NOT NULL,
		PRIMARY KEY (device_id, serial)
	);
	CREATE TABLE webhook_outbox (
		seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		id          TEXT NOT NULL UNIQUE,
		kind        TEXT NOT NULL,
		created_at  BIGINT NOT NULL,
		body        BYTEA NOT NULL,
		attempts    INTEGER NOT NULL DEFAULT 0,
		next_at     BIGINT NOT NULL DEFAULT 0,
		lease_owner TEXT NOT NULL DEFAULT '',
		lease_until BIGINT NOT NULL DEFAULT 0
	);`
)

const settingOutboxDropped = "webhook.outbox_dropped"

// ftx is a transaction of either backend, with '?' placeholders.
type ftx interface {
	exec(ctx context.Context, q string, args ...any) (int64, error)
	query(ctx context.Context, q string, args ...any) (frows, error)
	postgres() bool
}

type frows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// sqliteFtx runs statements prepared once per store (stmts), so that the
// few an enrollment adds cost no parsing on the writer's hot path.
type sqliteFtx struct {
	tx    *sql.Tx
	stmts *sync.Map // query -> *sql.Stmt on the write pool (prepareFleet)
}

func (t sqliteFtx) exec(ctx context.Context, q string, args ...any) (int64, error) {
	var res sql.Result
	var err error
	// Only the hot statements are prepared, at Open: preparing here
	// would wait for the write pool's one connection, which tx holds.
	if st, ok := t.stmts.Load(q); ok {
		res, err = t.tx.StmtContext(ctx, st.(*sql.Stmt)).ExecContext(ctx, args...)
	} else {
		res, err = t.tx.ExecContext(ctx, q, args...)
	}
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// The statements every enrollment runs (fleetIssued, enqueueTx).
const (
	qInheritLabels = `INSERT INTO device_labels (device_id, key, value)
			SELECT CAST(? AS TEXT), key, value FROM token_labels WHERE token_id = ? AND true
			ON CONFLICT (device_id, key) DO NOTHING`
	qClearRenew  = `DELETE FROM renew_requests WHERE device_id = ? AND requested_at <= ?`
	qEnqueue     = `INSERT INTO webhook_outbox (id, kind, created_at, body) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`
	qBoundOutbox = `DELETE FROM webhook_outbox WHERE seq <= (SELECT MAX(seq) FROM webhook_outbox) - ?`
)

// prepareFleet prepares the enrollment's fleet statements on the write
// pool, before the writer starts.
func (s *SQLite) prepareFleet(ctx context.Context) error {
	for _, q := range []string{qInheritLabels, qClearRenew, qEnqueue, qBoundOutbox} {
		st, err := s.w.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		s.fleetStmts.Store(q, st)
	}
	return nil
}

type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }

func (t sqliteFtx) query(ctx context.Context, q string, args ...any) (frows, error) {
	rows, err := t.tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

func (sqliteFtx) postgres() bool { return false }

type pgFtx struct{ tx pgx.Tx }

// rebind turns '?' placeholders into $1, $2, ... (no query here has a
// literal '?').
func rebind(q string) string {
	var b strings.Builder
	n := 0
	for _, c := range q {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

func (t pgFtx) exec(ctx context.Context, q string, args ...any) (int64, error) {
	tag, err := t.tx.Exec(ctx, rebind(q), args...)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

func (t pgFtx) query(ctx context.Context, q string, args ...any) (frows, error) {
	rows, err := t.tx.Query(ctx, rebind(q), args...)
	if err != nil {
		return nil, err
	}
	return rows, nil
}

func (pgFtx) postgres() bool { return true }

func (s *SQLite) fleet(ctx context.Context, what string, fn func(ftx) error) error {
	return s.writeTx(ctx, what, func(tx *sql.Tx) error { return fn(s.ftx(tx)) })
}

// fleetRead runs a read-only fn in a read transaction on the read pool
// (WAL: it sees the last commit and blocks no writer).
func (s *SQLite) fleetRead(ctx context.Context, what string, fn func(ftx) error) error {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer tx.Rollback()
	// No prepared statements: those are the write pool's.
	if err := fn(sqliteFtx{tx: tx, stmts: new(sync.Map)}); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func (s *SQLite) ftx(tx *sql.Tx) sqliteFtx { return sqliteFtx{tx: tx, stmts: &s.fleetStmts} }

func (p *Postgres) fleet(ctx context.Context, what string, fn func(ftx) error) error {
	if err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error { return fn(pgFtx{tx}) }); err != nil {
		return fmt.Errorf("%s: %w", what, unavailable(err))
	}
	return nil
}

// fleetIssued runs in Issue's transaction after a successful enrollment:
// the device inherits its token's labels, a renew-now mark is fulfilled,
// and the enrollment's webhook events are queued with it (so an event is
// queued if and only if the enrollment committed).
func fleetIssued(ctx context.Context, tx ftx, req issueReq) error {
	if req.TokenID != "" {
		if _, err := tx.exec(ctx, qInheritLabels, req.DeviceID, req.TokenID); err != nil {
			return fmt.Errorf("inherit labels of token %s: %w", req.TokenID, err)
		}
	}
	if _, err := tx.exec(ctx, qClearRenew, req.DeviceID, unixNano(req.Time)); err != nil {
		return fmt.Errorf("clear renew-now mark: %w", err)
	}
	return enqueueTx(ctx, tx, req.Outbox, DefaultOutboxMax)
}

func enqueueTx(ctx context.Context, tx ftx, evs []OutboxEvent, max int) error {
	if len(evs) == 0 {
		return nil
	}
	if max <= 0 {
		max = DefaultOutboxMax
	}
	for _, ev := range evs {
		body := ev.Body
		if body == nil {
			body = []byte{}
		}
		if _, err := tx.exec(ctx, qEnqueue,
			ev.ID, ev.Kind, unixNano(ev.Created), body); err != nil {
			return fmt.Errorf("queue webhook event %s: %w", ev.ID, err)
		}
	}
	// Keep the newest max sequence numbers: a range scan of the primary
	// key that finds nothing in the usual case.
	n, err := tx.exec(ctx, qBoundOutbox, max)
	if err != nil {
		return fmt.Errorf("bound the webhook outbox: %w", err)
	}
	if n > 0 {
		q := `INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(settings.value AS INTEGER) + CAST(excluded.value AS INTEGER) AS TEXT)`
		if tx.postgres() {
			q = `INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = (settings.value::bigint + excluded.value::bigint)::text`
		}
		if _, err := tx.exec(ctx, q, settingOutboxDropped, strconv.FormatInt(n, 10)); err != nil {
			return fmt.Errorf("count dropped webhook events: %w", err)
		}
	}
	return nil
}

func createTokensTx(ctx context.Context, tx ftx, toks []Token, labels map[string]string) error {
	for _, t := range toks {
		n, err := tx.exec(ctx, `INSERT INTO tokens (`+tokenCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
			t.ID, t.SecretHash[:], t.Device, t.Pattern, t.MaxUses, t.Uses,
			unixNano(t.CreatedAt), unixNano(t.ExpiresAt), unixNano(t.RevokedAt), unixNano(t.LastUsedAt))
		if err != nil {
			return fmt.Errorf("token %s: %w", t.ID, err)
		}
		if n != 1 {
			return fmt.Errorf("token %s: %w", t.ID, ErrExists)
		}
		for k, v := range labels {
			if _, err := tx.exec(ctx, `INSERT INTO token_labels (token_id, key, value) VALUES (?, ?, ?)`, t.ID, k, v); err != nil {
				return fmt.Errorf("token %s label %s: %w", t.ID, k, err)
			}
		}
	}
	return nil
}

func labelsTx(ctx context.Context, tx ftx, table, col, id string) (map[string]string, error) {
	rows, err := tx.query(ctx, `SELECT key, value FROM `+table+` WHERE `+col+` = ?`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, rows.Err()
}

func labelDeviceTx(ctx context.Context, tx ftx, id string, set map[string]string, remove []string) error {
	rows, err := tx.query(ctx, `SELECT id FROM devices WHERE id = ?`, id)
	if err != nil {
		return err
	}
	found := rows.Next()
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	for _, k := range remove {
		if _, err := tx.exec(ctx, `DELETE FROM device_labels WHERE device_id = ? AND key = ?`, id, k); err != nil {
			return err
		}
	}
	for k, v := range set {
		if _, err := tx.exec(ctx, `INSERT INTO device_labels (device_id, key, value) VALUES (?, ?, ?)
			ON CONFLICT (device_id, key) DO UPDATE SET value = excluded.value`, id, k, v); err != nil {
			return err
		}
	}
	cur, err := labelsTx(ctx, tx, "device_labels", "device_id", id)
	if err != nil {
		return err
	}
	if len(cur) > MaxLabels {
		return fmt.Errorf("%w: device %s would have %d labels, at most %d", ErrBadLabel, id, len(cur), MaxLabels)
	}
	return nil
}

func claimTx(ctx context.Context, tx ftx, owner string, now time.Time, lease time.Duration, limit int) ([]OutboxEvent, error) {
	lock := ""
	if tx.postgres() {
		lock = " FOR UPDATE SKIP LOCKED" // replicas claiming at once take different rows
	}
	// The lease is taken conditionally (lease_until still past): an event
	// another replica leased in between is not taken twice.
	rows, err := tx.query(ctx, `UPDATE webhook_outbox SET lease_owner = ?, lease_until = ?
		WHERE seq IN (SELECT seq FROM webhook_outbox WHERE next_at <= ? AND lease_until <= ? ORDER BY seq LIMIT ?`+lock+`)
		AND lease_until <= ?
		RETURNING seq, id, kind, created_at, body, attempts`,
		owner, unixNano(now.Add(lease)), unixNano(now), unixNano(now), limit, unixNano(now))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []OutboxEvent
	for rows.Next() {
		var ev OutboxEvent
		var created int64
		if err := rows.Scan(&ev.Seq, &ev.ID, &ev.Kind, &created, &ev.Body, &ev.Attempts); err != nil {
			return nil, err
		}
		ev.Created = fromUnixNano(created)
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out, nil
}

func noteExpiredTx(ctx context.Context, tx ftx, now time.Time, limit, max int, mk func(Device) OutboxEvent) (int, error) {
	rows, err := tx.query(ctx, `SELECT `+deviceCols+` FROM devices d WHERE status = 'active' AND not_after <= ?
		AND NOT EXISTS (SELECT 1 FROM expiry_notices n WHERE n.device_id = d.id AND n.serial = d.serial)
		ORDER BY not_after LIMIT ?`, unixNano(now), limit)
	if err != nil {
		return 0, err
	}
	var devs []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			rows.Close()
			return 0, err
		}
		devs = append(devs, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	var evs []OutboxEvent
	for _, d := range devs {
		n, err := tx.exec(ctx, `INSERT INTO expiry_notices (device_id, serial) VALUES (?, ?) ON CONFLICT DO NOTHING`, d.ID, d.Serial)
		if err != nil {
			return 0, err
		}
		if n == 1 {
			evs = append(evs, mk(d))
		}
	}
	return len(evs), enqueueTx(ctx, tx, evs, max)
}

func checkBatch(toks []Token, labels map[string]string) error {
	if len(toks) > MaxTokenBatch {
		return fmt.Errorf("%d tokens at once, at most %d", len(toks), MaxTokenBatch)
	}
	return validateLabels(labels)
}

// fleetImpl holds the FleetStore methods over a backend's transaction.
type fleetImpl struct {
	run func(ctx context.Context, what string, fn func(ftx) error) error
	// read runs a read-only fn: on SQLite on the read pool, so that a
	// device asking renewal-info, or a label lookup, never waits for (or
	// holds) the one writer that issuance needs.
	read func(ctx context.Context, what string, fn func(ftx) error) error
}

func (f fleetImpl) CreateTokens(ctx context.Context, toks []Token, labels map[string]string) error {
	if err := checkBatch(toks, labels); err != nil {
		return fmt.Errorf("create tokens: %w", err)
	}
	return f.run(ctx, "create tokens", func(tx ftx) error { return createTokensTx(ctx, tx, toks, labels) })
}

func (f fleetImpl) TokenLabels(ctx context.Context, id string) (m map[string]string, err error) {
	err = f.read(ctx, "labels of token "+id, func(tx ftx) error {
		m, err = labelsTx(ctx, tx, "token_labels", "token_id", id)
		return err
	})
	return m, err
}

func (f fleetImpl) DeviceLabels(ctx context.Context, id string) (m map[string]string, err error) {
	err = f.read(ctx, "labels of device "+id, func(tx ftx) error {
		m, err = labelsTx(ctx, tx, "device_labels", "device_id", id)
		return err
	})
	return m, err
}

func (f fleetImpl) LabelDevice(ctx context.Context, id string, set map[string]string, remove []string) error {
	if err := validateLabels(set); err != nil {
		return fmt.Errorf("label device %s: %w", id, err)
	}
	if len(remove) > MaxLabels {
		return fmt.Errorf("label device %s: %w: %d keys to remove, at most %d", id, ErrBadLabel, len(remove), MaxLabels)
	}
	return f.run(ctx, "label device "+id, func(tx ftx) error { return labelDeviceTx(ctx, tx, id, set, remove) })
}

func (f fleetImpl) DevicesWithLabel(ctx context.Context, key, value string) (ids []string, err error) {
	err = f.read(ctx, "devices labelled "+key+"="+value, func(tx ftx) error {
		rows, err := tx.query(ctx, `SELECT device_id FROM device_labels WHERE key = ? AND value = ? ORDER BY device_id`, key, value)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return rows.Err()
	})
	return ids, err
}

func (f fleetImpl) RequestRenewal(ctx context.Context, ids []string, at time.Time) (n int, err error) {
	err = f.run(ctx, "request renewal", func(tx ftx) error {
		n = 0
		for _, id := range ids {
			c, err := tx.exec(ctx, `INSERT INTO renew_requests (device_id, requested_at) SELECT id, CAST(? AS BIGINT) FROM devices WHERE id = ? AND true
				ON CONFLICT (device_id) DO UPDATE SET requested_at = excluded.requested_at`, unixNano(at), id)
			if err != nil {
				return err
			}
			n += int(c)
		}
		return nil
	})
	return n, err
}

func (f fleetImpl) RenewalRequested(ctx context.Context, id string) (at time.Time, err error) {
	err = f.read(ctx, "renewal requested of "+id, func(tx ftx) error {
		rows, err := tx.query(ctx, `SELECT requested_at FROM renew_requests WHERE device_id = ?`, id)
		if err != nil {
			return err
		}
		defer rows.Close()
		if rows.Next() {
			var n int64
			if err := rows.Scan(&n); err != nil {
				return err
			}
			at = fromUnixNano(n)
		}
		return rows.Err()
	})
	return at, err
}

func (f fleetImpl) Enqueue(ctx context.Context, evs []OutboxEvent, max int) error {
	return f.run(ctx, "queue webhook events", func(tx ftx) error { return enqueueTx(ctx, tx, evs, max) })
}

func (f fleetImpl) ClaimEvents(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) (evs []OutboxEvent, err error) {
	err = f.run(ctx, "claim webhook events", func(tx ftx) error {
		evs, err = claimTx(ctx, tx, owner, now, lease, limit)
		return err
	})
	return evs, err
}

func (f fleetImpl) AckEvent(ctx context.Context, id, owner string) error {
	return f.run(ctx, "acknowledge webhook event "+id, func(tx ftx) error {
		_, err := tx.exec(ctx, `DELETE FROM webhook_outbox WHERE id = ? AND lease_owner = ?`, id, owner)
		return err
	})
}

func (f fleetImpl) RetryEvent(ctx context.Context, id, owner string, next time.Time) error {
	return f.run(ctx, "release webhook event "+id, func(tx ftx) error {
		_, err := tx.exec(ctx, `UPDATE webhook_outbox SET attempts = attempts + 1, next_at = ?, lease_owner = '', lease_until = 0
			WHERE id = ? AND lease_owner = ?`, unixNano(next), id, owner)
		return err
	})
}

func (f fleetImpl) OutboxDropped(ctx context.Context) (n int64, err error) {
	err = f.read(ctx, "count dropped webhook events", func(tx ftx) error {
		rows, err := tx.query(ctx, `SELECT value FROM settings WHERE key = ?`, settingOutboxDropped)
		if err != nil {
			return err
		}
		defer rows.Close()
		if rows.Next() {
			var v string
			if err := rows.Scan(&v); err != nil {
				return err
			}
			n, _ = strconv.ParseInt(v, 10, 64)
		}
		return rows.Err()
	})
	return n, err
}

func (f fleetImpl) NoteExpired(ctx context.Context, now time.Time, limit, max int, mk func(Device) OutboxEvent) (n int, err error) {
	err = f.run(ctx, "note expired devices", func(tx ftx) error {
		n, err = noteExpiredTx(ctx, tx, now, limit, max, mk)
		return err
	})
	return n, err
}

// The backends' FleetStore methods delegate to fleetImpl.

func (s *SQLite) fi() fleetImpl   { return fleetImpl{run: s.fleet, read: s.fleetRead} }
func (p *Postgres) fi() fleetImpl { return fleetImpl{run: p.fleet, read: p.fleet} }

func (s *SQLite) CreateTokens(ctx context.Context, toks []Token, labels map[string]string) error {
	return s.fi().CreateTokens(ctx, toks, labels)
}
func (s *SQLite) TokenLabels(ctx context.Context, id string) (map[string]string, error) {
	return s.fi().TokenLabels(ctx, id)
}
func (s *SQLite) DeviceLabels(ctx context.Context, id string) (map[string]string, error) {
	return s.fi().DeviceLabels(ctx, id)
}
func (s *SQLite) LabelDevice(ctx context.Context, id string, set map[string]string, remove []string) error {
	return s.fi().LabelDevice(ctx, id, set, remove)
}
func (s *SQLite) DevicesWithLabel(ctx context.Context, k, v string) ([]string, error) {
	return s.fi().DevicesWithLabel(ctx, k, v)
}
func (s *SQLite) RequestRenewal(ctx context.Context, ids []string, at time.Time) (int, error) {
	return s.fi().RequestRenewal(ctx, ids, at)
}
func (s *SQLite) RenewalRequested(ctx context.Context, id string) (time.Time, error) {
	return s.fi().RenewalRequested(ctx, id)
}
func (s *SQLite) Enqueue(ctx context.Context, evs []OutboxEvent, max int) error {
	return s.fi().Enqueue(ctx, evs, max)
}
func (s *SQLite) ClaimEvents(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) ([]OutboxEvent, error) {
	return s.fi().ClaimEvents(ctx, owner, now, lease, limit)
}
func (s *SQLite) AckEvent(ctx context.Context, id, owner string) error {
	return s.fi().AckEvent(ctx, id, owner)
}
func (s *SQLite) RetryEvent(ctx context.Context, id, owner string, next time.Time) error {
	return s.fi().RetryEvent(ctx, id, owner, next)
}
func (s *SQLite) OutboxDropped(ctx context.Context) (int64, error) { return s.fi().OutboxDropped(ctx) }
func (s *SQLite) NoteExpired(ctx context.Context, now time.Time, limit, max int, mk func(Device) OutboxEvent) (int, error) {
	return s.fi().NoteExpired(ctx, now, limit, max, mk)
}

func (p *Postgres) CreateTokens(ctx context.Context, toks []Token, labels map[string]string) error {
	return p.fi().CreateTokens(ctx, toks, labels)
}
func (p *Postgres) TokenLabels(ctx context.Context, id string) (map[string]string, error) {
	return p.fi().TokenLabels(ctx, id)
}
func (p *Postgres) DeviceLabels(ctx context.Context, id string) (map[string]string, error) {
	return p.fi().DeviceLabels(ctx, id)
}
func (p *Postgres) LabelDevice(ctx context.Context, id string, set map[string]string, remove []string) error {
	return p.fi().LabelDevice(ctx, id, set, remove)
}
func (p *Postgres) DevicesWithLabel(ctx context.Context, k, v string) ([]string, error) {
	return p.fi().DevicesWithLabel(ctx, k, v)
}
func (p *Postgres) RequestRenewal(ctx context.Context, ids []string, at time.Time) (int, error) {
	return p.fi().RequestRenewal(ctx, ids, at)
}
func (p *Postgres) RenewalRequested(ctx context.Context, id string) (time.Time, error) {
	return p.fi().RenewalRequested(ctx, id)
}
func (p *Postgres) Enqueue(ctx context.Context, evs []OutboxEvent, max int) error {
	return p.fi().Enqueue(ctx, evs, max)
}
func (p *Postgres) ClaimEvents(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) ([]OutboxEvent, error) {
	return p.fi().ClaimEvents(ctx, owner, now, lease, limit)
}
func (p *Postgres) AckEvent(ctx context.Context, id, owner string) error {
	return p.fi().AckEvent(ctx, id, owner)
}
func (p *Postgres) RetryEvent(ctx context.Context, id, owner string, next time.Time) error {
	return p.fi().RetryEvent(ctx, id, owner, next)
}
func (p *Postgres) OutboxDropped(ctx context.Context) (int64, error) {
	return p.fi().OutboxDropped(ctx)
}
func (p *Postgres) NoteExpired(ctx context.Context, now time.Time, limit, max int, mk func(Device) OutboxEvent) (int, error) {
	return p.fi().NoteExpired(ctx, now, limit, max, mk)
}
