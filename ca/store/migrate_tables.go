package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// TableRows is the content of one table copied verbatim by `edgeca
// migrate`: the fleet tables (inventory, certificate history, labels,
// renew-now marks, expiry notices, the webhook outbox) have the same
// columns and value kinds (integers, text, bytes) in both backends, so
// they need no per-table code.
type TableRows struct {
	Table   string
	Columns []string
	Rows    [][]any
}

// copiedTables are the tables TableRows carries, with their order; a
// generated key (the outbox's seq) is left for the target to number, in
// the same order.
var copiedTables = []struct{ name, order, skip string }{
	{"device_inventory", "device_id", ""},
	{"cert_history", "device_id, issued_at, serial", ""},
	{"token_labels", "token_id, key", ""},
	{"device_labels", "device_id, key", ""},
	{"renew_requests", "device_id", ""},
	{"expiry_notices", "device_id, serial", ""},
	{"webhook_outbox", "seq", "seq"},
}

// snapshotTables reads copiedTables in tx.
func snapshotTables(ctx context.Context, tx *sql.Tx) ([]TableRows, error) {
	var out []TableRows
	for _, t := range copiedTables {
		rows, err := tx.QueryContext(ctx, `SELECT * FROM `+t.name+` ORDER BY `+t.order)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", t.name, err)
		}
		cols, err := rows.Columns()
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("snapshot %s: %w", t.name, err)
		}
		tr := TableRows{Table: t.name}
		keep := make([]bool, len(cols))
		for i, c := range cols {
			if keep[i] = c != t.skip; keep[i] {
				tr.Columns = append(tr.Columns, c)
			}
		}
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				rows.Close()
				return nil, fmt.Errorf("snapshot %s: %w", t.name, err)
			}
			row := make([]any, 0, len(tr.Columns))
			for i, v := range vals {
				if keep[i] {
					row = append(row, v)
				}
			}
			tr.Rows = append(tr.Rows, row)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", t.name, err)
		}
		out = append(out, tr)
	}
	return out, nil
}

// importTables writes snap's tables into tx; only the tables and columns
// this package copies are accepted (their names go into SQL).
func importTables(ctx context.Context, tx pgx.Tx, tables []TableRows) error {
	known := map[string]bool{}
	for _, t := range copiedTables {
		known[t.name] = true
	}
	for _, tr := range tables {
		if !known[tr.Table] {
			return fmt.Errorf("import: table %q is not one edgeca copies", tr.Table)
		}
		ph := make([]string, len(tr.Columns))
		for i, c := range tr.Columns {
			if strings.Trim(c, "abcdefghijklmnopqrstuvwxyz_") != "" {
				return fmt.Errorf("import %s: column name %q", tr.Table, c)
			}
			ph[i] = fmt.Sprintf("$%d", i+1)
		}
		q := `INSERT INTO ` + tr.Table + ` (` + strings.Join(tr.Columns, ", ") + `) VALUES (` + strings.Join(ph, ", ") + `)`
		for _, r := range tr.Rows {
			if len(r) != len(tr.Columns) {
				return fmt.Errorf("import %s: a row of %d values for %d columns", tr.Table, len(r), len(tr.Columns))
			}
			if _, err := tx.Exec(ctx, q, r...); err != nil {
				return fmt.Errorf("import %s: %w", tr.Table, err)
			}
		}
	}
	return nil
}
