package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/ca/store/storetest"
	"github.com/edgeagent/edgeagent/testkit/postgres"
)

func TestConformanceSQLite(t *testing.T) {
	storetest.Run(t, storetest.Backend{
		New: func(t *testing.T) string { return filepath.Join(t.TempDir(), "edgeca.db") },
		Open: func(t *testing.T, loc string) store.Store {
			s, err := store.Open(context.Background(), loc)
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	})
}

// TestConformancePostgres runs the suite on a real PostgreSQL, each
// handle a pool of its own (a replica).
func TestConformancePostgres(t *testing.T) {
	pg := postgres.Start(t)
	var n atomic.Int64
	storetest.Run(t, storetest.Backend{
		New: func(t *testing.T) string { return pg.CreateDB(fmt.Sprintf("conf%d", n.Add(1))) },
		Open: func(t *testing.T, loc string) store.Store {
			s, err := store.OpenPostgres(context.Background(), loc)
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	})
}
