package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var _ RevocationStore = (*Postgres)(nil)

// pgRevocationSchema is the SQLite revocationSchema in PostgreSQL types
// (times in Unix nanoseconds, as everywhere in this schema). It is created
// idempotently under the migration lock, next to the numbered migrations,
// as SQLite does, so that it merges with changes to those.
const pgRevocationSchema = `
CREATE TABLE IF NOT EXISTS issued_certs (
	serial    TEXT PRIMARY KEY,
	device_id TEXT NOT NULL,
	not_after BIGINT NOT NULL,
	issued_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS issued_certs_device ON issued_certs (device_id);
CREATE TABLE IF NOT EXISTS revoked_certs (
	serial     TEXT PRIMARY KEY,
	device_id  TEXT NOT NULL,
	not_after  BIGINT NOT NULL,
	revoked_at BIGINT NOT NULL,
	reason     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS revoked_certs_device ON revoked_certs (device_id);
CREATE TABLE IF NOT EXISTS revocation_events (
	seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	kind      TEXT NOT NULL,
	serial    TEXT NOT NULL,
	device_id TEXT NOT NULL,
	not_after BIGINT NOT NULL,
	at        BIGINT NOT NULL,
	reason    INTEGER NOT NULL
);`

// revocationLock is the pg_advisory_xact_lock key every transaction that
// writes revocation events holds until it commits ("edgerv" in ASCII). A
// sequence hands out numbers in the order transactions ask, not the order
// they commit: without the lock a replica's feed reader could see event
// N+1 committed, advance its cursor past N, and never see N. Holding it,
// events commit in Seq order, so every replica's feed is the same list.
const revocationLock = 0x656467657276

// migrateRevocation runs on the connection that holds the migration lock.
func (p *Postgres) migrateRevocation(ctx context.Context, conn *pgxpool.Conn) error {
	if _, err := conn.Exec(ctx, pgRevocationSchema); err != nil {
		return fmt.Errorf("create revocation tables: %w", unavailable(err))
	}
	return nil
}

// RecordIssued implements RevocationStore. The issuing intents record
// their certificates themselves; this is for certificates issued outside it (enforcers).
func (p *Postgres) RecordIssued(ctx context.Context, serial, deviceID string, notAfter, at time.Time) error {
	if _, err := p.pool.Exec(ctx, `INSERT INTO issued_certs (serial, device_id, not_after, issued_at) VALUES ($1, $2, $3, $4) ON CONFLICT (serial) DO NOTHING`,
		serial, deviceID, unixNano(notAfter), unixNano(at)); err != nil {
		return fmt.Errorf("record issued certificate %s: %w", serial, unavailable(err))
	}
	return nil
}

// pgRecordIssuedTx records an enrollment's certificate in the issuing intent's
// transaction, so that revoking the device reaches it.
func pgRecordIssuedTx(ctx context.Context, tx pgx.Tx, req issueReq) error {
	if req.Issuance.Serial == "" {
		return nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO issued_certs (serial, device_id, not_after, issued_at) VALUES ($1, $2, $3, $4) ON CONFLICT (serial) DO NOTHING`,
		req.Issuance.Serial, req.DeviceID, unixNano(req.Issuance.NotAfter), unixNano(req.Time)); err != nil {
		return fmt.Errorf("record issued certificate %s: %w", req.Issuance.Serial, err)
	}
	return nil
}

// revocationTx runs fn in one transaction holding revocationLock.
func (p *Postgres) revocationTx(ctx context.Context, what string, fn func(tx pgx.Tx) error) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(revocationLock)); err != nil {
			return fmt.Errorf("take the revocation lock: %w", err)
		}
		return fn(tx)
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound):
		return fmt.Errorf("%s: %w", what, err)
	default:
		return fmt.Errorf("%s: %w", what, unavailable(err))
	}
}

// pgDeviceCerts lists the unexpired certificates a device may hold, as
// deviceCerts does for SQLite. The device row is locked so that an issuing intent
// for the device is ordered before or after the revocation.
func pgDeviceCerts(ctx context.Context, tx pgx.Tx, deviceID string, at time.Time) (map[string]time.Time, error) {
	var serial, prev, confirmed string
	var devNA int64
	err := tx.QueryRow(ctx, `SELECT serial, prev_serial, confirmed_serial, not_after FROM devices WHERE id = $1 FOR UPDATE`, deviceID).Scan(&serial, &prev, &confirmed, &devNA)
	known := true
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		known = false
	case err != nil:
		return nil, err
	}
	out := map[string]time.Time{}
	rows, err := tx.Query(ctx, `SELECT serial, not_after FROM issued_certs WHERE device_id = $1 AND not_after > $2`, deviceID, unixNano(at))
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var sn string
		var na int64
		if err := rows.Scan(&sn, &na); err != nil {
			rows.Close()
			return nil, err
		}
		out[sn] = fromUnixNano(na)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if !known {
		return out, nil
	}
	// Certificates issued before issued_certs existed count valid for
	// MaxCertTTL, as in SQLite.
	legacy := at.Add(30 * 24 * time.Hour)
	for _, sn := range []string{serial, prev, confirmed} {
		if _, ok := out[sn]; sn != "" && !ok {
			out[sn] = legacy
			if sn == serial {
				out[sn] = fromUnixNano(devNA)
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

func pgInsertRevoked(ctx context.Context, tx pgx.Tx, rc RevokedCert) (bool, error) {
	tag, err := tx.Exec(ctx, `INSERT INTO revoked_certs (serial, device_id, not_after, revoked_at, reason) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (serial) DO NOTHING`,
		rc.Serial, rc.DeviceID, unixNano(rc.NotAfter), unixNano(rc.RevokedAt), rc.Reason)
	if err != nil {
		return false, err
	}
	if tag.RowsAffected() == 0 {
		return false, nil // already revoked: keep the first time and reason
	}
	return true, pgAddEvent(ctx, tx, EventRevoke, rc)
}

func pgAddEvent(ctx context.Context, tx pgx.Tx, kind string, rc RevokedCert) error {
	_, err := tx.Exec(ctx, `INSERT INTO revocation_events (kind, serial, device_id, not_after, at, reason) VALUES ($1, $2, $3, $4, $5, $6)`,
		kind, rc.Serial, rc.DeviceID, unixNano(rc.NotAfter), unixNano(rc.RevokedAt), rc.Reason)
	return err
}

func pgRevokeAll(ctx context.Context, tx pgx.Tx, deviceID, except string, reason int, at time.Time) ([]RevokedCert, error) {
	certs, err := pgDeviceCerts(ctx, tx, deviceID, at)
	if err != nil {
		return nil, err
	}
	var out []RevokedCert
	for sn, na := range certs {
		if sn == except {
			continue
		}
		rc := RevokedCert{Serial: sn, DeviceID: deviceID, NotAfter: na, RevokedAt: at, Reason: reason}
		added, err := pgInsertRevoked(ctx, tx, rc)
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
func (p *Postgres) RevokeDeviceCerts(ctx context.Context, deviceID, except string, reason int, markRevoked bool, at time.Time) ([]RevokedCert, error) {
	var out []RevokedCert
	err := p.revocationTx(ctx, "revoke certificates of device "+deviceID, func(tx pgx.Tx) error {
		out = nil
		if markRevoked {
			tag, err := tx.Exec(ctx, `UPDATE devices SET status = 'revoked', revoked_at = CASE WHEN revoked_at = 0 THEN $1 ELSE revoked_at END WHERE id = $2`, unixNano(at), deviceID)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return ErrNotFound
			}
		}
		var err error
		out, err = pgRevokeAll(ctx, tx, deviceID, except, reason, at)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// RevokeSerial implements RevocationStore.
func (p *Postgres) RevokeSerial(ctx context.Context, serial string, reason int, at time.Time) (RevokedCert, error) {
	var rc RevokedCert
	err := p.revocationTx(ctx, "revoke certificate "+serial, func(tx pgx.Tx) error {
		var dev string
		var na int64
		err := tx.QueryRow(ctx, `SELECT device_id, not_after FROM issued_certs WHERE serial = $1`, serial).Scan(&dev, &na)
		if errors.Is(err, pgx.ErrNoRows) {
			err = tx.QueryRow(ctx, `SELECT id, not_after FROM devices WHERE serial = $1`, serial).Scan(&dev, &na)
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		rc = RevokedCert{Serial: serial, DeviceID: dev, NotAfter: fromUnixNano(na), RevokedAt: at, Reason: reason}
		_, err = pgInsertRevoked(ctx, tx, rc)
		return err
	})
	if err != nil {
		return RevokedCert{}, err
	}
	return rc, nil
}

// UnrevokeDevice implements RevocationStore.
func (p *Postgres) UnrevokeDevice(ctx context.Context, deviceID string, at time.Time) ([]RevokedCert, error) {
	var out []RevokedCert
	err := p.revocationTx(ctx, "unrevoke device "+deviceID, func(tx pgx.Tx) error {
		out = nil
		tag, err := tx.Exec(ctx, `UPDATE devices SET status = 'active', revoked_at = 0 WHERE id = $1`, deviceID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		rows, err := tx.Query(ctx, `DELETE FROM revoked_certs WHERE device_id = $1 AND reason <> $2 RETURNING serial, not_after, reason`, deviceID, ReasonSuperseded)
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
			if err := pgAddEvent(ctx, tx, EventUnrevoke, rc); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteDevice implements RevocationStore.
func (p *Postgres) DeleteDevice(ctx context.Context, deviceID string, at time.Time) ([]RevokedCert, error) {
	var out []RevokedCert
	err := p.revocationTx(ctx, "delete device "+deviceID, func(tx pgx.Tx) error {
		var one int
		if err := tx.QueryRow(ctx, `SELECT 1 FROM devices WHERE id = $1 FOR UPDATE`, deviceID).Scan(&one); errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		} else if err != nil {
			return err
		}
		var err error
		if out, err = pgRevokeAll(ctx, tx, deviceID, "", ReasonCessationOfOperation, at); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM devices WHERE id = $1`, deviceID)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Revoked implements RevocationStore.
func (p *Postgres) Revoked(ctx context.Context, now time.Time) ([]RevokedCert, error) {
	return pgList(ctx, p, "list revoked certificates",
		`SELECT serial, device_id, not_after, revoked_at, reason FROM revoked_certs WHERE not_after > $1 ORDER BY revoked_at, serial`,
		func(r scanner) (RevokedCert, error) {
			var rc RevokedCert
			var na, ra int64
			err := r.Scan(&rc.Serial, &rc.DeviceID, &na, &ra, &rc.Reason)
			rc.NotAfter, rc.RevokedAt = fromUnixNano(na), fromUnixNano(ra)
			return rc, err
		}, unixNano(now))
}

// IsRevoked implements RevocationStore.
func (p *Postgres) IsRevoked(ctx context.Context, serial string) (bool, error) {
	var one int
	err := p.pool.QueryRow(ctx, `SELECT 1 FROM revoked_certs WHERE serial = $1`, serial).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("is certificate %s revoked: %w", serial, unavailable(err))
	}
	return true, nil
}

// RevocationEvents implements RevocationStore. A negative limit means no
// limit, as SQLite's LIMIT -1 does.
func (p *Postgres) RevocationEvents(ctx context.Context, since int64, limit int) ([]RevocationEvent, error) {
	var lim any = limit
	if limit < 0 {
		lim = nil // LIMIT NULL is LIMIT ALL
	}
	return pgList(ctx, p, "read revocation events",
		`SELECT seq, kind, serial, device_id, not_after, at, reason FROM revocation_events WHERE seq > $1 ORDER BY seq LIMIT $2`,
		func(r scanner) (RevocationEvent, error) {
			var e RevocationEvent
			var na, at int64
			err := r.Scan(&e.Seq, &e.Kind, &e.Serial, &e.DeviceID, &na, &at, &e.Reason)
			e.NotAfter, e.At = fromUnixNano(na), fromUnixNano(at)
			return e, err
		}, since, lim)
}

// RevocationSeq implements RevocationStore.
func (p *Postgres) RevocationSeq(ctx context.Context) (int64, error) {
	var seq int64
	if err := p.pool.QueryRow(ctx, `SELECT COALESCE(MAX(seq), 0) FROM revocation_events`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read revocation sequence: %w", unavailable(err))
	}
	return seq, nil
}

// PruneRevocations implements RevocationStore.
func (p *Postgres) PruneRevocations(ctx context.Context, now time.Time) error {
	return p.revocationTx(ctx, "prune revocations", func(tx pgx.Tx) error {
		for _, q := range []string{
			`DELETE FROM issued_certs WHERE not_after <= $1`,
			`DELETE FROM revoked_certs WHERE not_after <= $1`,
			// The newest event stays, so the sequence never goes back
			// (the identity never does either, but MAX(seq) is the cursor).
			`DELETE FROM revocation_events WHERE not_after <= $1 AND seq < (SELECT MAX(seq) FROM revocation_events)`,
		} {
			if _, err := tx.Exec(ctx, q, unixNano(now)); err != nil {
				return err
			}
		}
		return nil
	})
}

// importRevocations copies the revocation state of a snapshot in Import's
// transaction. Events keep their Seq, and the identity continues after the
// newest, so that an enforcer following the feed by cursor across the
// move neither skips nor repeats one.
func importRevocations(ctx context.Context, tx pgx.Tx, snap Snapshot) error {
	for _, c := range snap.Issued {
		if _, err := tx.Exec(ctx, `INSERT INTO issued_certs (serial, device_id, not_after, issued_at) VALUES ($1, $2, $3, $4)`,
			c.Serial, c.DeviceID, unixNano(c.NotAfter), unixNano(c.IssuedAt)); err != nil {
			return fmt.Errorf("import issued certificate %s: %w", c.Serial, err)
		}
	}
	for _, c := range snap.Revoked {
		if _, err := tx.Exec(ctx, `INSERT INTO revoked_certs (serial, device_id, not_after, revoked_at, reason) VALUES ($1, $2, $3, $4, $5)`,
			c.Serial, c.DeviceID, unixNano(c.NotAfter), unixNano(c.RevokedAt), c.Reason); err != nil {
			return fmt.Errorf("import revoked certificate %s: %w", c.Serial, err)
		}
	}
	for _, e := range snap.Events {
		if _, err := tx.Exec(ctx, `INSERT INTO revocation_events (seq, kind, serial, device_id, not_after, at, reason) OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			e.Seq, e.Kind, e.Serial, e.DeviceID, unixNano(e.NotAfter), unixNano(e.At), e.Reason); err != nil {
			return fmt.Errorf("import revocation event %d: %w", e.Seq, err)
		}
	}
	if _, err := tx.Exec(ctx, `SELECT setval(pg_get_serial_sequence('revocation_events', 'seq'), GREATEST((SELECT COALESCE(MAX(seq), 0) FROM revocation_events), 1), (SELECT COUNT(*) > 0 FROM revocation_events))`); err != nil {
		return fmt.Errorf("import: revocation event sequence: %w", err)
	}
	return nil
}
