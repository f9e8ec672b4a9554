package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Inventory: what an operator asks of a fleet (which devices, in which
// state, expiring when, running which agent, renewing or not) and a short
// certificate history per device. Kept in tables of its own
// (device_inventory, cert_history) next to devices, so that the registry's
// rows and their statements stay as they are; Issue writes both in its
// transaction, so the history never misses a certificate the CA handed out.

// Renewal results.
const (
	RenewalOK      = "ok"
	RenewalRefused = "refused"
)

// RenewalResult is the outcome of a device's last renewal attempt.
type RenewalResult struct {
	Result string    // RenewalOK, RenewalRefused, or "" when it never tried
	Code   string    // the stable error code of a refusal
	Reason string    // the precise reason of a refusal, for operators
	At     time.Time // when
}

// DeviceInfo is a device with its inventory facts. Device.Cert is left
// empty by listings (DeviceInfo fills it).
type DeviceInfo struct {
	Device
	// Agent is the sanitized User-Agent product of its last contact
	// ("edgeagent/1.4.0"), "" when unknown.
	Agent string
	// NotBefore of its newest certificate; zero for devices enrolled
	// before the inventory existed (the caller may parse Device.Cert).
	NotBefore time.Time
	// IssuedAt is when its newest certificate was issued (zero: unknown).
	IssuedAt time.Time
	Renewal  RenewalResult
}

// CertRecord is one certificate issued to a device.
type CertRecord struct {
	Serial    string
	Op        string // the EST operation that issued it (simpleenroll, simplereenroll, ...)
	NotBefore time.Time
	NotAfter  time.Time
	IssuedAt  time.Time
}

// CertHistoryMax is how many certificates per device the history keeps
// (the newest): a device renewing every few minutes must not grow it
// without bound.
const CertHistoryMax = 20

// Sort orders of DeviceFilter.
const (
	SortID       = "id"
	SortExpiry   = "expiry"    // soonest NotAfter first
	SortLastSeen = "last-seen" // most recently seen first
)

// DeviceFilter selects devices for Inventory; zero fields match all.
type DeviceFilter struct {
	Status  string // StatusActive or StatusRevoked
	TokenID string // enrolled (last) with this token
	// NotAfterFrom and NotAfterBefore bound the newest certificate's
	// NotAfter: From <= NotAfter < Before.
	NotAfterFrom, NotAfterBefore time.Time
	// RenewalRefused keeps devices whose last renewal attempt was
	// refused after their newest certificate was issued.
	RenewalRefused bool
	// Labels keeps devices that carry every one of these labels.
	Labels map[string]string
	Sort   string // SortID when ""
	Limit  int    // all when <= 0
}

// Contact is one authenticated contact of a device with the CA.
type Contact struct {
	DeviceID string
	At       time.Time
	Agent    string // "" leaves the recorded agent as it is
}

// InventoryStore answers fleet questions. Both backends implement it.
type InventoryStore interface {
	// Inventory lists the devices matching f, in f.Sort order.
	Inventory(ctx context.Context, f DeviceFilter) ([]DeviceInfo, error)
	// DeviceInfo returns one device (Cert included), or ErrNotFound.
	DeviceInfo(ctx context.Context, id string) (DeviceInfo, error)
	// CertHistory lists the device's newest certificates (at most
	// CertHistoryMax), newest first.
	CertHistory(ctx context.Context, id string) ([]CertRecord, error)
	// RecordContact moves the device's last-seen time forward to c.At
	// (never back) and records c.Agent; nothing for an unknown device.
	// It is kept with the inventory: the registry row (Device) says when
	// the device was last issued a certificate, DeviceInfo.LastSeen the
	// later of the two.
	RecordContact(ctx context.Context, c Contact) error
	// RecordRenewalRefused records a refused renewal of a known device
	// (and counts as a contact).
	RecordRenewalRefused(ctx context.Context, deviceID, agent string, r RenewalResult) error
}

var (
	_ InventoryStore = (*SQLite)(nil)
	_ InventoryStore = (*Postgres)(nil)
)

// inventoryMigration (SQLite) is appended to migrations.
const inventoryMigration = `CREATE TABLE device_inventory (
		device_id     TEXT PRIMARY KEY,
		agent         TEXT NOT NULL DEFAULT '',
		not_before    INTEGER NOT NULL DEFAULT 0,
		issued_at     INTEGER NOT NULL DEFAULT 0,
		renew_result  TEXT NOT NULL DEFAULT '',
		renew_code    TEXT NOT NULL DEFAULT '',
		renew_reason  TEXT NOT NULL DEFAULT '',
		renew_at      INTEGER NOT NULL DEFAULT 0,
		last_contact  INTEGER NOT NULL DEFAULT 0
	) WITHOUT ROWID;
	CREATE TABLE cert_history (
		device_id  TEXT NOT NULL,
		serial     TEXT NOT NULL,
		op         TEXT NOT NULL,
		not_before INTEGER NOT NULL,
		not_after  INTEGER NOT NULL,
		issued_at  INTEGER NOT NULL,
		PRIMARY KEY (device_id, serial)
	) WITHOUT ROWID;
	CREATE INDEX devices_not_after ON devices (not_after);`

// inventoryCols reads devices d left-joined with device_inventory i; the
// certificate itself is not read by listings (the first %s), and last seen
// is the later of the registry's (issuance) and the inventory's (other
// contacts) (the second %s: the backend's two-argument max).
const inventoryCols = `d.id, d.status, d.serial, d.prev_serial, d.not_after, d.first_seen, %s, d.token_id, d.enrollments, d.revoked_at, %s, d.key_hash, d.cert_token, d.confirmed_serial,
	COALESCE(i.agent, ''), COALESCE(i.not_before, 0), COALESCE(i.issued_at, 0), COALESCE(i.renew_result, ''), COALESCE(i.renew_code, ''), COALESCE(i.renew_reason, ''), COALESCE(i.renew_at, 0)`

func scanDeviceInfo(sc scanner) (DeviceInfo, error) {
	var di DeviceInfo
	d := &di.Device
	var notAfter, first, last, revoked, notBefore, issued, renewAt int64
	var keyHash []byte
	if err := sc.Scan(&d.ID, &d.Status, &d.Serial, &d.PrevSerial, &notAfter, &first, &last, &d.TokenID, &d.Enrollments, &revoked,
		&d.Cert, &keyHash, &d.CertToken, &d.Confirmed,
		&di.Agent, &notBefore, &issued, &di.Renewal.Result, &di.Renewal.Code, &di.Renewal.Reason, &renewAt); err != nil {
		return DeviceInfo{}, err
	}
	if len(keyHash) != 0 && len(keyHash) != len(d.KeyHash) {
		return DeviceInfo{}, fmt.Errorf("device %s: stored key hash has %d bytes, want %d", d.ID, len(keyHash), len(d.KeyHash))
	}
	copy(d.KeyHash[:], keyHash)
	d.NotAfter, d.FirstSeen, d.LastSeen, d.RevokedAt = fromUnixNano(notAfter), fromUnixNano(first), fromUnixNano(last), fromUnixNano(revoked)
	di.NotBefore, di.IssuedAt, di.Renewal.At = fromUnixNano(notBefore), fromUnixNano(issued), fromUnixNano(renewAt)
	if len(d.Cert) == 0 {
		d.Cert = nil
	}
	return di, nil
}

func scanCertRecord(sc scanner) (CertRecord, error) {
	var r CertRecord
	var nb, na, at int64
	if err := sc.Scan(&r.Serial, &r.Op, &nb, &na, &at); err != nil {
		return CertRecord{}, err
	}
	r.NotBefore, r.NotAfter, r.IssuedAt = fromUnixNano(nb), fromUnixNano(na), fromUnixNano(at)
	return r, nil
}

// filterSQL renders f as a WHERE clause and an ORDER BY, with ph(n) the
// backend's n-th placeholder.
func filterSQL(f DeviceFilter, ph func(int) string, lastSeen string) (string, []any, error) {
	var conds []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "?", ph(len(args))))
	}
	switch f.Status {
	case "":
	case StatusActive, StatusRevoked:
		add("d.status = ?", f.Status)
	default:
		return "", nil, fmt.Errorf("device filter: unknown status %q", f.Status)
	}
	if f.TokenID != "" {
		add("d.token_id = ?", f.TokenID)
	}
	if !f.NotAfterFrom.IsZero() {
		add("d.not_after >= ?", unixNano(f.NotAfterFrom))
	}
	if !f.NotAfterBefore.IsZero() {
		add("d.not_after < ?", unixNano(f.NotAfterBefore))
	}
	for _, k := range slices.Sorted(maps.Keys(f.Labels)) {
		args = append(args, k, f.Labels[k])
		conds = append(conds, "EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = d.id AND l.key = "+ph(len(args)-1)+" AND l.value = "+ph(len(args))+")")
	}
	if f.RenewalRefused {
		conds = append(conds, "i.renew_result = '"+RenewalRefused+"' AND i.renew_at >= i.issued_at")
	}
	q := ""
	if len(conds) > 0 {
		q = " WHERE " + strings.Join(conds, " AND ")
	}
	switch f.Sort {
	case "", SortID:
		q += " ORDER BY d.id"
	case SortExpiry:
		q += " ORDER BY d.not_after, d.id"
	case SortLastSeen:
		q += " ORDER BY " + lastSeen + " DESC, d.id"
	default:
		return "", nil, fmt.Errorf("device filter: unknown sort %q (id, expiry, last-seen)", f.Sort)
	}
	if f.Limit > 0 {
		args = append(args, f.Limit)
		q += " LIMIT " + ph(len(args))
	}
	return q, args, nil
}

// inventoryOp is the history's operation for an Issue.
func inventoryOp(req issueReq) string {
	if req.Audit.Op != "" {
		return req.Audit.Op
	}
	if req.Presented != "" {
		return "simplereenroll"
	}
	return "simpleenroll"
}

// inventoryStmts are recordInventoryTx's statements, prepared once on
// the writer connection: preparing costs more than running them.
type inventoryStmts struct {
	addHistory, trimHistory, upsert *sql.Stmt
}

const (
	sqlAddHistory = `INSERT OR IGNORE INTO cert_history (device_id, serial, op, not_before, not_after, issued_at) VALUES (?, ?, ?, ?, ?, ?)`
	// Deletes nothing (the subquery is NULL) until the device has more
	// than CertHistoryMax certificates.
	sqlTrimHistory = `DELETE FROM cert_history WHERE device_id = ?1 AND issued_at <
		(SELECT issued_at FROM cert_history WHERE device_id = ?1 ORDER BY issued_at DESC LIMIT 1 OFFSET ?2)`
	sqlUpsertInventory = `INSERT INTO device_inventory (device_id, agent, not_before, issued_at, renew_result, renew_at)
		VALUES (?1, ?2, ?3, ?4, CASE WHEN ?5 THEN 'ok' ELSE '' END, CASE WHEN ?5 THEN ?4 ELSE 0 END)
		ON CONFLICT (device_id) DO UPDATE SET
			agent = CASE WHEN ?2 = '' THEN device_inventory.agent ELSE ?2 END,
			not_before = ?3,
			issued_at = ?4,
			renew_result = CASE WHEN ?5 THEN 'ok' ELSE device_inventory.renew_result END,
			renew_code = CASE WHEN ?5 THEN '' ELSE device_inventory.renew_code END,
			renew_reason = CASE WHEN ?5 THEN '' ELSE device_inventory.renew_reason END,
			renew_at = CASE WHEN ?5 THEN ?4 ELSE device_inventory.renew_at END`
)

func (s *SQLite) prepareInventory(ctx context.Context) error {
	for _, p := range []struct {
		dst **sql.Stmt
		q   string
	}{{&s.inv.addHistory, sqlAddHistory}, {&s.inv.trimHistory, sqlTrimHistory}, {&s.inv.upsert, sqlUpsertInventory}} {
		st, err := s.w.PrepareContext(ctx, p.q)
		if err != nil {
			return fmt.Errorf("prepare inventory: %w", err)
		}
		*p.dst = st
	}
	return nil
}

func (s *SQLite) closeInventory() {
	for _, st := range []*sql.Stmt{s.inv.addHistory, s.inv.trimHistory, s.inv.upsert} {
		if st != nil {
			st.Close()
		}
	}
}

// recordInventoryTx writes the inventory of an enrollment in Issue's
// transaction: the certificate in the history (keeping the newest
// CertHistoryMax), and the device's agent, NotBefore and, for a renewal,
// its result.
func (s *SQLite) recordInventoryTx(ctx context.Context, tx *sql.Tx, req issueReq) error {
	iss := req.Issuance
	if iss.Serial == "" {
		return nil
	}
	now := unixNano(req.Time)
	if _, err := tx.StmtContext(ctx, s.inv.addHistory).ExecContext(ctx,
		req.DeviceID, iss.Serial, inventoryOp(req), unixNano(iss.NotBefore), unixNano(iss.NotAfter), now); err != nil {
		return fmt.Errorf("issue: record certificate history: %w", err)
	}
	if _, err := tx.StmtContext(ctx, s.inv.trimHistory).ExecContext(ctx, req.DeviceID, CertHistoryMax-1); err != nil {
		return fmt.Errorf("issue: trim certificate history: %w", err)
	}
	if _, err := tx.StmtContext(ctx, s.inv.upsert).ExecContext(ctx, req.DeviceID, req.Agent, unixNano(iss.NotBefore), now, req.Presented != ""); err != nil {
		return fmt.Errorf("issue: record inventory: %w", err)
	}
	return nil
}

func sqlitePH(int) string { return "?" }

// sqliteLastSeen is the later of the two last-seen times (SQLite's
// two-argument max).
const sqliteLastSeen = "MAX(d.last_seen, COALESCE(i.last_contact, 0))"

// Inventory implements InventoryStore, on the read pool.
func (s *SQLite) Inventory(ctx context.Context, f DeviceFilter) ([]DeviceInfo, error) {
	where, args, err := filterSQL(f, sqlitePH, sqliteLastSeen)
	if err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT `+fmt.Sprintf(inventoryCols, sqliteLastSeen, "x''")+` FROM devices d LEFT JOIN device_inventory i ON i.device_id = d.id`+where, args...)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []DeviceInfo
	for rows.Next() {
		d, err := scanDeviceInfo(rows)
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

// DeviceInfo implements InventoryStore.
func (s *SQLite) DeviceInfo(ctx context.Context, id string) (DeviceInfo, error) {
	d, err := scanDeviceInfo(s.r.QueryRowContext(ctx, `SELECT `+fmt.Sprintf(inventoryCols, sqliteLastSeen, "d.cert")+` FROM devices d LEFT JOIN device_inventory i ON i.device_id = d.id WHERE d.id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return DeviceInfo{}, fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return DeviceInfo{}, fmt.Errorf("device %s: %w", id, err)
	}
	return d, nil
}

// CertHistory implements InventoryStore.
func (s *SQLite) CertHistory(ctx context.Context, id string) ([]CertRecord, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT serial, op, not_before, not_after, issued_at FROM cert_history WHERE device_id = ? ORDER BY issued_at DESC, serial DESC LIMIT ?`, id, CertHistoryMax)
	if err != nil {
		return nil, fmt.Errorf("certificate history of %s: %w", id, err)
	}
	defer rows.Close()
	var out []CertRecord
	for rows.Next() {
		r, err := scanCertRecord(rows)
		if err != nil {
			return nil, fmt.Errorf("certificate history of %s: %w", id, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("certificate history of %s: %w", id, err)
	}
	return out, nil
}

// RecordContact implements InventoryStore.
func (s *SQLite) RecordContact(ctx context.Context, c Contact) error {
	return s.writeTx(ctx, "record contact of "+c.DeviceID, func(tx *sql.Tx) error {
		return contactTx(ctx, tx, c.DeviceID, c.Agent, c.At)
	})
}

func contactTx(ctx context.Context, tx *sql.Tx, id, agent string, at time.Time) error {
	var one int
	if err := tx.QueryRowContext(ctx, `SELECT 1 FROM devices WHERE id = ?`, id).Scan(&one); errors.Is(err, sql.ErrNoRows) {
		return nil // unknown device: nothing to record
	} else if err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO device_inventory (device_id, agent, last_contact) VALUES (?1, ?2, ?3)
		ON CONFLICT (device_id) DO UPDATE SET
			agent = CASE WHEN ?2 = '' THEN device_inventory.agent ELSE ?2 END,
			last_contact = MAX(device_inventory.last_contact, ?3)`, id, agent, unixNano(at))
	return err
}

// RecordRenewalRefused implements InventoryStore.
func (s *SQLite) RecordRenewalRefused(ctx context.Context, deviceID, agent string, r RenewalResult) error {
	return s.writeTx(ctx, "record refused renewal of "+deviceID, func(tx *sql.Tx) error {
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM devices WHERE id = ?`, deviceID).Scan(&one); errors.Is(err, sql.ErrNoRows) {
			return nil
		} else if err != nil {
			return err
		}
		if err := contactTx(ctx, tx, deviceID, agent, r.At); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO device_inventory (device_id, renew_result, renew_code, renew_reason, renew_at) VALUES (?1, ?2, ?3, ?4, ?5)
			ON CONFLICT (device_id) DO UPDATE SET renew_result = ?2, renew_code = ?3, renew_reason = ?4, renew_at = ?5`,
			deviceID, RenewalRefused, r.Code, r.Reason, unixNano(r.At))
		return err
	})
}
