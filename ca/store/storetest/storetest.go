// Package storetest is the conformance suite every store.Store backend
// runs: the guarantees the interface documents, checked against the real
// backend, with several handles on one database standing in for several
// edgeca replicas.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
)

// Backend makes databases for the suite.
type Backend struct {
	// New makes a fresh empty database and returns where it is.
	New func(t *testing.T) string
	// Open opens a handle on the database at loc; each call is a new
	// handle (a replica). The suite closes it.
	Open func(t *testing.T, loc string) store.Store
}

// Run runs the whole suite.
func Run(t *testing.T, b Backend) {
	tests := []struct {
		name string
		fn   func(*testing.T, Backend)
	}{
		{"TokenUsesExactUnderRace", tokenUsesExact},
		{"RefusalsChangeNothing", refusalsChangeNothing},
		{"ConfirmedSerial", confirmedSerial},
		{"RevokeDeviceVisibleAtOnce", revokeDeviceVisible},
		{"RevokeTokenVisibleAtOnce", revokeTokenVisible},
		{"NewDeviceRaceOneWinner", newDeviceRace},
		{"EnrollRetryReplayed", enrollRetryReplayed},
		{"EnrollRetryRace", enrollRetryRace},
		{"RenewalRetryReplayed", renewalRetryReplayed},
		{"RenewalRace", renewalRace},
		{"Recover", recoverDevice},
		{"TokensAndErrors", tokensAndErrors},
		{"Audit", audit},
		{"Settings", settings},
		{"InitSetting", initSetting},
		{"Ping", ping},
	}
	tests = append(tests, revocationTests...) // revocation.go
	tests = append(tests, inventoryTests...)  // inventory.go
	tests = append(tests, fleetTests...)      // fleet.go
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, b) })
	}
}

func open(t *testing.T, b Backend, loc string) store.Store {
	t.Helper()
	s := b.Open(t, loc)
	t.Cleanup(func() { s.Close() })
	return s
}

// replicas opens n handles on one new database.
func replicas(t *testing.T, b Backend, n int) []store.Store {
	t.Helper()
	loc := b.New(t)
	out := make([]store.Store, n)
	for i := range out {
		out[i] = open(t, b, loc)
	}
	return out
}

var now = time.Unix(1_800_000_000, 0).UTC()

func tokensAndErrors(t *testing.T, b Backend) {
	s := replicas(t, b, 1)[0]
	ctx := context.Background()
	want := store.Token{ID: "a", SecretHash: [32]byte{9, 8, 7}, Device: "dev-1", MaxUses: 3, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := s.CreateToken(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateToken(ctx, store.Token{ID: "a", MaxUses: 1, CreatedAt: now, ExpiresAt: now}); !errors.Is(err, store.ErrExists) {
		t.Errorf("second token with one id: %v, want ErrExists", err)
	}
	if err := s.CreateToken(ctx, store.Token{ID: "b", Pattern: "dev-*", MaxUses: 1, CreatedAt: now.Add(time.Second), ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Token(ctx, "a")
	if err != nil || got != want {
		t.Errorf("token a: %+v %v, want %+v", got, err, want)
	}
	if _, err := s.Token(ctx, "zz"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown token: %v, want ErrNotFound", err)
	}
	if _, err := s.Device(ctx, "zz"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown device: %v, want ErrNotFound", err)
	}
	toks, err := s.Tokens(ctx)
	if err != nil || len(toks) != 2 || toks[0].ID != "a" || toks[1].ID != "b" || toks[1].Pattern != "dev-*" {
		t.Errorf("tokens: %+v %v", toks, err)
	}
}

func audit(t *testing.T, b Backend) {
	rs := replicas(t, b, 2)
	ctx := context.Background()
	for i := range 10 {
		if err := rs[i%2].AddAudit(ctx, store.AuditRecord{Time: now.Add(time.Duration(i) * time.Second), Op: "op", Result: store.ResultDenied, Reason: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := rs[0].Audit(ctx, 3)
	if err != nil || len(recs) != 3 || recs[0].Reason != "9" || recs[2].Reason != "7" || recs[0].Seq <= recs[1].Seq {
		t.Fatalf("newest 3: %+v %v", recs, err)
	}
	n, err := rs[1].PruneAudit(ctx, now.Add(2*time.Second), 0)
	if err != nil || n != 2 {
		t.Errorf("prune before t+2s: %d %v, want 2", n, err)
	}
	n, err = rs[1].PruneAudit(ctx, time.Time{}, 5)
	if err != nil || n != 3 {
		t.Errorf("prune to 5: %d %v, want 3", n, err)
	}
	recs, _ = rs[0].Audit(ctx, 0)
	if len(recs) != 5 || recs[4].Reason != "5" {
		t.Errorf("after pruning: %+v", recs)
	}
	// An issue's audit record is written with the serial.
	mkToken(t, rs[0], "t", 1)
	if _, err := rs[0].IssueWithToken(ctx, enrollReq("t", "d", "SER")); err != nil {
		t.Fatal(err)
	}
	recs, _ = rs[1].Audit(ctx, 1)
	if len(recs) != 1 || recs[0].Serial != "SER" || recs[0].DeviceID != "d" || recs[0].Result != store.ResultOK {
		t.Errorf("the issue's audit record: %+v", recs)
	}
}

func settings(t *testing.T, b Backend) {
	rs := replicas(t, b, 2)
	ctx := context.Background()
	if v, err := rs[0].Setting(ctx, "k"); err != nil || v != "" {
		t.Errorf("unset setting: %q %v", v, err)
	}
	for _, v := range []string{"one", "two"} {
		if err := rs[0].SetSetting(ctx, "k", v); err != nil {
			t.Fatal(err)
		}
		if got, err := rs[1].Setting(ctx, "k"); err != nil || got != v {
			t.Errorf("setting on the other handle: %q %v, want %q", got, err, v)
		}
	}
}

// initSetting: of handles racing to set one key first, all get the
// first one's value.
func initSetting(t *testing.T, b Backend) {
	rs := replicas(t, b, 3)
	ctx := context.Background()
	var wg sync.WaitGroup
	got := make([]string, 12)
	errs := make([]error, len(got))
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = rs[i%3].InitSetting(ctx, "first", fmt.Sprint(i))
		}()
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil || got[i] != got[0] || got[i] == "" {
			t.Fatalf("InitSetting racers got %q (errors %v): want one value for all", got, errs)
		}
	}
	if v, _ := rs[0].Setting(ctx, "first"); v != got[0] {
		t.Errorf("stored %q, InitSetting said %q", v, got[0])
	}
}

func ping(t *testing.T, b Backend) {
	s := b.Open(t, b.New(t))
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("ping an open store: %v", err)
	}
	s.Close()
	if err := s.Ping(context.Background()); err == nil {
		t.Fatal("ping a closed store: nil")
	}
}
