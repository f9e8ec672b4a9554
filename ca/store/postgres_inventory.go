package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// pgInventoryMigration is inventoryMigration in PostgreSQL types.
const pgInventoryMigration = `CREATE TABLE device_inventory (
		device_id     TEXT PRIMARY KEY,
		agent         TEXT NOT NULL DEFAULT '',
		not_before    BIGINT NOT NULL DEFAULT 0,
		issued_at     BIGINT NOT NULL DEFAULT 0,
		renew_result  TEXT NOT NULL DEFAULT '',
		renew_code    TEXT NOT NULL DEFAULT '',
		renew_reason  TEXT NOT NULL DEFAULT '',
		renew_at      BIGINT NOT NULL DEFAULT 0,
		last_contact  BIGINT NOT NULL DEFAULT 0
	);
	CREATE TABLE cert_history (
		device_id  TEXT NOT NULL,
		serial     TEXT NOT NULL,
		op         TEXT NOT NULL,
		not_before BIGINT NOT NULL,
		not_after  BIGINT NOT NULL,
		issued_at  BIGINT NOT NULL,
		PRIMARY KEY (device_id, serial)
	);
	CREATE INDEX devices_not_after ON devices (not_after);`

func pgPH(n int) string { return "$" + strconv.Itoa(n) }

// pgLastSeen is sqliteLastSeen.
const pgLastSeen = "GREATEST(d.last_seen, COALESCE(i.last_contact, 0))"

// pgRecordInventoryTx is recordInventoryTx in Issue's transaction (the
// device row is locked, so the inventory row is written by one Issue at a
// time).
func pgRecordInventoryTx(ctx context.Context, tx pgx.Tx, req issueReq) error {
	iss := req.Issuance
	if iss.Serial == "" {
		return nil
	}
	now := unixNano(req.Time)
	if _, err := tx.Exec(ctx, `INSERT INTO cert_history (device_id, serial, op, not_before, not_after, issued_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`,
		req.DeviceID, iss.Serial, inventoryOp(req), unixNano(iss.NotBefore), unixNano(iss.NotAfter), now); err != nil {
		return fmt.Errorf("record certificate history: %w", err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM cert_history WHERE device_id = $1 AND issued_at <
		(SELECT issued_at FROM cert_history WHERE device_id = $1 ORDER BY issued_at DESC LIMIT 1 OFFSET $2)`, req.DeviceID, CertHistoryMax-1); err != nil {
		return fmt.Errorf("trim certificate history: %w", err)
	}
	renewed := req.Presented != ""
	if _, err := tx.Exec(ctx, `INSERT INTO device_inventory (device_id, agent, not_before, issued_at, renew_result, renew_at)
		VALUES ($1, $2, $3, $4::bigint, CASE WHEN $5::boolean THEN 'ok' ELSE '' END, CASE WHEN $5::boolean THEN $4::bigint ELSE 0::bigint END)
		ON CONFLICT (device_id) DO UPDATE SET
			agent = CASE WHEN $2::text = '' THEN device_inventory.agent ELSE $2 END,
			not_before = $3,
			issued_at = $4,
			renew_result = CASE WHEN $5 THEN 'ok' ELSE device_inventory.renew_result END,
			renew_code = CASE WHEN $5 THEN '' ELSE device_inventory.renew_code END,
			renew_reason = CASE WHEN $5 THEN '' ELSE device_inventory.renew_reason END,
			renew_at = CASE WHEN $5 THEN $4 ELSE device_inventory.renew_at END`,
		req.DeviceID, req.Agent, unixNano(iss.NotBefore), now, renewed); err != nil {
		return fmt.Errorf("record inventory: %w", err)
	}
	return nil
}

// Inventory implements InventoryStore.
func (p *Postgres) Inventory(ctx context.Context, f DeviceFilter) ([]DeviceInfo, error) {
	where, args, err := filterSQL(f, pgPH, pgLastSeen)
	if err != nil {
		return nil, err
	}
	return pgList(ctx, p, "list devices", `SELECT `+fmt.Sprintf(inventoryCols, pgLastSeen, "''::bytea")+` FROM devices d LEFT JOIN device_inventory i ON i.device_id = d.id`+where, scanDeviceInfo, args...)
}

// DeviceInfo implements InventoryStore.
func (p *Postgres) DeviceInfo(ctx context.Context, id string) (DeviceInfo, error) {
	d, err := scanDeviceInfo(p.pool.QueryRow(ctx, `SELECT `+fmt.Sprintf(inventoryCols, pgLastSeen, "d.cert")+` FROM devices d LEFT JOIN device_inventory i ON i.device_id = d.id WHERE d.id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return DeviceInfo{}, fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return DeviceInfo{}, fmt.Errorf("device %s: %w", id, unavailable(err))
	}
	return d, nil
}

// CertHistory implements InventoryStore.
func (p *Postgres) CertHistory(ctx context.Context, id string) ([]CertRecord, error) {
	return pgList(ctx, p, "certificate history of "+id, `SELECT serial, op, not_before, not_after, issued_at FROM cert_history WHERE device_id = $1 ORDER BY issued_at DESC, serial DESC LIMIT $2`, scanCertRecord, id, CertHistoryMax)
}

func pgContactTx(ctx context.Context, tx pgx.Tx, id, agent string, at int64) (known bool, _ error) {
	var one int
	if err := tx.QueryRow(ctx, `SELECT 1 FROM devices WHERE id = $1`, id).Scan(&one); errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	_, err := tx.Exec(ctx, `INSERT INTO device_inventory (device_id, agent, last_contact) VALUES ($1, $2::text, $3::bigint)
		ON CONFLICT (device_id) DO UPDATE SET
			agent = CASE WHEN $2::text = '' THEN device_inventory.agent ELSE $2::text END,
			last_contact = GREATEST(device_inventory.last_contact, $3::bigint)`, id, agent, at)
	return true, err
}

// RecordContact implements InventoryStore.
func (p *Postgres) RecordContact(ctx context.Context, c Contact) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		_, err := pgContactTx(ctx, tx, c.DeviceID, c.Agent, unixNano(c.At))
		return err
	})
	if err != nil {
		return fmt.Errorf("record contact of %s: %w", c.DeviceID, unavailable(err))
	}
	return nil
}

// RecordRenewalRefused implements InventoryStore.
func (p *Postgres) RecordRenewalRefused(ctx context.Context, deviceID, agent string, r RenewalResult) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		known, err := pgContactTx(ctx, tx, deviceID, agent, unixNano(r.At))
		if err != nil || !known {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO device_inventory (device_id, renew_result, renew_code, renew_reason, renew_at) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (device_id) DO UPDATE SET renew_result = $2, renew_code = $3, renew_reason = $4, renew_at = $5`,
			deviceID, RenewalRefused, r.Code, r.Reason, unixNano(r.At))
		return err
	})
	if err != nil {
		return fmt.Errorf("record refused renewal of %s: %w", deviceID, unavailable(err))
	}
	return nil
}
