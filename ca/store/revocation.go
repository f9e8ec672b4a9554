package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Revocation reasons (RFC 5280 §5.3.1 CRLReason) edgeca records.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
)

// Revocation event kinds in the feed.
const (
	EventRevoke   = "revoke"
	EventUnrevoke = "unrevoke"
)

// RevokedCert is one certificate on the CRL.
type RevokedCert struct {
	Serial    string
	DeviceID  string
	NotAfter  time.Time
	RevokedAt time.Time
	Reason    int
}

// RevocationEvent is one change to the set of revoked certificates, in the
// order of Seq (the feed's cursor).
type RevocationEvent struct {
	Seq      int64
	Kind     string // EventRevoke or EventUnrevoke
	Serial   string
	DeviceID string
	NotAfter time.Time
	At       time.Time
	Reason   int
}

// RevocationStore keeps issued and revoked certificates. Every certificate
// the CA issues is recorded (RecordIssued) so that revoking a device
// reaches all the certificates it may hold, not only the newest.
type RevocationStore interface {
	RecordIssued(ctx context.Context, serial, deviceID string, notAfter, at time.Time) error
	// RevokeDeviceCerts puts every unexpired certificate of the device
	// but except on the CRL; with markRevoked the device is also marked
	// revoked (no renewal, no token enrollment). It returns the newly
	// revoked certificates; ErrNotFound when markRevoked and the device
	// is unknown.
	RevokeDeviceCerts(ctx context.Context, deviceID, except string, reason int, markRevoked bool, at time.Time) ([]RevokedCert, error)
	// RevokeSerial puts one issued certificate on the CRL; ErrNotFound if
	// the CA has no record of it.
	RevokeSerial(ctx context.Context, serial string, reason int, at time.Time) (RevokedCert, error)
	// UnrevokeDevice marks the device active and takes its certificates
	// off the CRL, except the superseded ones.
	UnrevokeDevice(ctx context.Context, deviceID string, at time.Time) ([]RevokedCert, error)
	// DeleteDevice revokes every certificate of the device and forgets
	// the device, so that its id can enroll again with a new token.
	DeleteDevice(ctx context.Context, deviceID string, at time.Time) ([]RevokedCert, error)
	// Revoked lists the revoked certificates that have not expired at now.
	Revoked(ctx context.Context, now time.Time) ([]RevokedCert, error)
	// IsRevoked reports whether serial is on the CRL.
	IsRevoked(ctx context.Context, serial string) (bool, error)
	// RevocationEvents returns up to limit events after seq since.
	RevocationEvents(ctx context.Context, since int64, limit int) ([]RevocationEvent, error)
	// RevocationSeq is the newest event's Seq, 0 when none.
	RevocationSeq(ctx context.Context) (int64, error)
	// PruneRevocations forgets certificates (issued, revoked and their
	// events) that expired before now.
	PruneRevocations(ctx context.Context, now time.Time) error
}

var _ RevocationStore = (*SQLite)(nil)

// revocationSchema is created idempotently at Open, next to the numbered
// migrations (kept apart so that it merges with changes to those).
const revocationSchema = `
CREATE TABLE IF NOT EXISTS issued_certs (
	serial    TEXT PRIMARY KEY,
	device_id TEXT NOT NULL,
	not_after INTEGER NOT NULL,
	issued_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS issued_certs_device ON issued_certs (device_id);
CREATE TABLE IF NOT EXISTS revoked_certs (
	serial     TEXT PRIMARY KEY,
	device_id  TEXT NOT NULL,
	not_after  INTEGER NOT NULL,
	revoked_at INTEGER NOT NULL,
	reason     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS revoked_certs_device ON revoked_certs (device_id);
CREATE TABLE IF NOT EXISTS revocation_events (
	seq       INTEGER PRIMARY KEY AUTOINCREMENT,
	kind      TEXT NOT NULL,
	serial    TEXT NOT NULL,
	device_id TEXT NOT NULL,
	not_after INTEGER NOT NULL,
	at        INTEGER NOT NULL,
	reason    INTEGER NOT NULL
);`

func (s *SQLite) migrateRevocation(ctx context.Context) error {
	if _, err := s.w.ExecContext(ctx, revocationSchema); err != nil {
		return fmt.Errorf("create revocation tables: %w", err)
	}
	return nil
}

// RecordIssued implements RevocationStore. The issuing intents record
// their certificates themselves; this is for certificates issued outside it (enforcers).
func (s *SQLite) RecordIssued(ctx context.Context, serial, deviceID string, notAfter, at time.Time) error {
	if _, err := s.w.ExecContext(ctx, `INSERT OR IGNORE INTO issued_certs (serial, device_id, not_after, issued_at) VALUES (?, ?, ?, ?)`,
		serial, deviceID, unixNano(notAfter), unixNano(at)); err != nil {
		return fmt.Errorf("record issued certificate %s: %w", serial, err)
	}
	return nil // durable at commit (synchronous=FULL)
}

// recordIssuedTx records an enrollment's certificate in the issuing intent's
// transaction, so that revoking the device reaches it.
func recordIssuedTx(ctx context.Context, recordIssued *sql.Stmt, req issueReq) error {
	if req.Issuance.Serial == "" {
		return nil
	}
	if _, err := recordIssued.ExecContext(ctx, req.Issuance.Serial, req.DeviceID, unixNano(req.Issuance.NotAfter), unixNano(req.Time)); err != nil {
		return fmt.Errorf("issue: record issued certificate %s: %w", req.Issuance.Serial, err)
	}
	return nil
}

// writeTx runs fn in a durable write transaction.
func (s *SQLite) writeTx(ctx context.Context, what string, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: begin: %w", what, err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := tx.Commit(); err != nil { // durable at commit (synchronous=FULL)
		return fmt.Errorf("%s: commit: %w", what, err)
	}
	return nil
}

// deviceCerts lists the unexpired certificates a device may hold: those
// recorded as issued, and the serials of its registry row (certificates
// issued before issued_certs existed, counted valid for MaxCertTTL).
func deviceCerts(ctx context.Context, tx *sql.Tx, deviceID string, at time.Time) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	rows, err := tx.QueryContext(ctx, `SELECT serial, not_after FROM issued_certs WHERE device_id = ? AND not_after > ?`, deviceID, unixNano(at))
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var serial string
		var na int64
		if err := rows.Scan(&serial, &na); err != nil {
			rows.Close()
			return nil, err
		}
		out[serial] = fromUnixNano(na)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var serial, prev, confirmed string
	var na int64
	err = tx.QueryRowContext(ctx, `SELECT serial, prev_serial, confirmed_serial, not_after FROM devices WHERE id = ?`, deviceID).Scan(&serial, &prev, &confirmed, &na)
	if errors.Is(err, sql.ErrNoRows) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	legacy := at.Add(30 * 24 * time.Hour)
	for _, sn := range []string{serial, prev, confirmed} {
		if _, ok := out[sn]; sn != "" && !ok {
			out[sn] = legacy
			if sn == serial {
				out[sn] = fromUnixNano(na)
			}
		}
	}
	for sn, na := range out {
		if !na.After(at) {
			delete(out, sn)
		}
	}
	return out, nil
}

func insertRevoked(ctx context.Context, tx *sql.Tx, rc RevokedCert) (bool, error) {
	res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO revoked_certs (serial, device_id, not_after, revoked_at, reason) VALUES (?, ?, ?, ?, ?)`,
		rc.Serial, rc.DeviceID, unixNano(rc.NotAfter), unixNano(rc.RevokedAt), rc.Reason)
	if err != nil {
		return false, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return false, nil // already revoked: keep the first time and reason
	}
	return true, addEvent(ctx, tx, EventRevoke, rc)
}

func addEvent(ctx context.Context, tx *sql.Tx, kind string, rc RevokedCert) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO revocation_events (kind, serial, device_id, not_after, at, reason) VALUES (?, ?, ?, ?, ?, ?)`,
		kind, rc.Serial, rc.DeviceID, unixNano(rc.NotAfter), unixNano(rc.RevokedAt), rc.Reason)
	return err
}

func revokeAll(ctx context.Context, tx *sql.Tx, deviceID, except string, reason int, at time.Time) ([]RevokedCert, error) {
	certs, err := deviceCerts(ctx, tx, deviceID, at)
	if err != nil {
		return nil, err
	}
	var out []RevokedCert
	for sn, na := range certs {
		if sn == except {
			continue
		}
		rc := RevokedCert{Serial: sn, DeviceID: deviceID, NotAfter: na, RevokedAt: at, Reason: reason}
		added, err := insertRevoked(ctx, tx, rc)
		if err != nil {
			return nil, err
		}
		if added {
			out = append(out, rc)
		}
	}
	return out, nil
}

// RevokeDeviceCerts implements RevocationStore.
func (s *SQLite) RevokeDeviceCerts(ctx context.Context, deviceID, except string, reason int, markRevoked bool, at time.Time) ([]RevokedCert, error) {
	var out []RevokedCert
	err := s.writeTx(ctx, "revoke certificates of device "+deviceID, func(tx *sql.Tx) error {
		if markRevoked {
			res, err := tx.ExecContext(ctx, `UPDATE devices SET status = 'revoked', revoked_at = CASE WHEN revoked_at = 0 THEN ? ELSE revoked_at END WHERE id = ?`, unixNano(at), deviceID)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return ErrNotFound
			}
		}
		var err error
		out, err = revokeAll(ctx, tx, deviceID, except, reason, at)
		return err
	})
	return out, err
}

// RevokeSerial implements RevocationStore.
func (s *SQLite) RevokeSerial(ctx context.Context, serial string, reason int, at time.Time) (RevokedCert, error) {
	var rc RevokedCert
	err := s.writeTx(ctx, "revoke certificate "+serial, func(tx *sql.Tx) error {
		var dev string
		var na int64
		err := tx.QueryRowContext(ctx, `SELECT device_id, not_after FROM issued_certs WHERE serial = ?`, serial).Scan(&dev, &na)
		if errors.Is(err, sql.ErrNoRows) {
			err = tx.QueryRowContext(ctx, `SELECT id, not_after FROM devices WHERE serial = ?`, serial).Scan(&dev, &na)
		}
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		rc = RevokedCert{Serial: serial, DeviceID: dev, NotAfter: fromUnixNano(na), RevokedAt: at, Reason: reason}
		_, err = insertRevoked(ctx, tx, rc)
		return err
	})
	return rc, err
}

// UnrevokeDevice implements RevocationStore.
func (s *SQLite) UnrevokeDevice(ctx context.Context, deviceID string, at time.Time) ([]RevokedCert, error) {
	var out []RevokedCert
	err := s.writeTx(ctx, "unrevoke device "+deviceID, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE devices SET status = 'active', revoked_at = 0 WHERE id = ?`, deviceID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		rows, err := tx.QueryContext(ctx, `SELECT serial, not_after, reason FROM revoked_certs WHERE device_id = ? AND reason <> ?`, deviceID, ReasonSuperseded)
		if err != nil {
			return err
		}
		for rows.Next() {
			rc := RevokedCert{DeviceID: deviceID, RevokedAt: at}
			var na int64
			if err := rows.Scan(&rc.Serial, &na, &rc.Reason); err != nil {
				rows.Close()
				return err
			}
			rc.NotAfter = fromUnixNano(na)
			out = append(out, rc)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, rc := range out {
			if _, err := tx.ExecContext(ctx, `DELETE FROM revoked_certs WHERE serial = ?`, rc.Serial); err != nil {
				return err
			}
			if err := addEvent(ctx, tx, EventUnrevoke, rc); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// DeleteDevice implements RevocationStore.
func (s *SQLite) DeleteDevice(ctx context.Context, deviceID string, at time.Time) ([]RevokedCert, error) {
	var out []RevokedCert
	err := s.writeTx(ctx, "delete device "+deviceID, func(tx *sql.Tx) error {
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM devices WHERE id = ?`, deviceID).Scan(&one); errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		} else if err != nil {
			return err
		}
		var err error
		if out, err = revokeAll(ctx, tx, deviceID, "", ReasonCessationOfOperation, at); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM devices WHERE id = ?`, deviceID)
		return err
	})
	return out, err
}

// Revoked implements RevocationStore.
func (s *SQLite) Revoked(ctx context.Context, now time.Time) ([]RevokedCert, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT serial, device_id, not_after, revoked_at, reason FROM revoked_certs WHERE not_after > ? ORDER BY revoked_at, serial`, unixNano(now))
	if err != nil {
		return nil, fmt.Errorf("list revoked certificates: %w", err)
	}
	defer rows.Close()
	var out []RevokedCert
	for rows.Next() {
		var rc RevokedCert
		var na, ra int64
		if err := rows.Scan(&rc.Serial, &rc.DeviceID, &na, &ra, &rc.Reason); err != nil {
			return nil, fmt.Errorf("list revoked certificates: %w", err)
		}
		rc.NotAfter, rc.RevokedAt = fromUnixNano(na), fromUnixNano(ra)
		out = append(out, rc)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list revoked certificates: %w", err)
	}
	return out, nil
}

// IsRevoked implements RevocationStore.
func (s *SQLite) IsRevoked(ctx context.Context, serial string) (bool, error) {
	var one int
	err := s.r.QueryRowContext(ctx, `SELECT 1 FROM revoked_certs WHERE serial = ?`, serial).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("is certificate %s revoked: %w", serial, err)
	}
	return true, nil
}

// RevocationEvents implements RevocationStore.
func (s *SQLite) RevocationEvents(ctx context.Context, since int64, limit int) ([]RevocationEvent, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT seq, kind, serial, device_id, not_after, at, reason FROM revocation_events WHERE seq > ? ORDER BY seq LIMIT ?`, since, limit)
	if err != nil {
		return nil, fmt.Errorf("read revocation events: %w", err)
	}
	defer rows.Close()
	var out []RevocationEvent
	for rows.Next() {
		var e RevocationEvent
		var na, at int64
		if err := rows.Scan(&e.Seq, &e.Kind, &e.Serial, &e.DeviceID, &na, &at, &e.Reason); err != nil {
			return nil, fmt.Errorf("read revocation events: %w", err)
		}
		e.NotAfter, e.At = fromUnixNano(na), fromUnixNano(at)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read revocation events: %w", err)
	}
	return out, nil
}

// RevocationSeq implements RevocationStore.
func (s *SQLite) RevocationSeq(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM revocation_events`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read revocation sequence: %w", err)
	}
	return seq, nil
}

// PruneRevocations implements RevocationStore.
func (s *SQLite) PruneRevocations(ctx context.Context, now time.Time) error {
	return s.writeTx(ctx, "prune revocations", func(tx *sql.Tx) error {
		for _, q := range []string{
			`DELETE FROM issued_certs WHERE not_after <= ?`,
			`DELETE FROM revoked_certs WHERE not_after <= ?`,
			// The newest event stays, so the sequence never goes back.
			`DELETE FROM revocation_events WHERE not_after <= ? AND seq < (SELECT MAX(seq) FROM revocation_events)`,
		} {
			if _, err := tx.ExecContext(ctx, q, unixNano(now)); err != nil {
				return err
			}
		}
		return nil
	})
}
