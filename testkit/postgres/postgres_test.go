package postgres

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestStartRestartKill: the cluster answers, survives a kill -9 and a
// restart with what it committed.
func TestStartRestartKill(t *testing.T) {
	s := Start(t)
	url := s.CreateDB("t")
	ctx := context.Background()
	exec := func(sql string) {
		t.Helper()
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	exec(`CREATE TABLE x (v int); INSERT INTO x VALUES (1)`)
	s.Kill()
	s.Restart()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var v int
	if err := c.QueryRow(ctx, `SELECT v FROM x`).Scan(&v); err != nil || v != 1 {
		t.Fatalf("after kill and restart: %d %v", v, err)
	}
}
