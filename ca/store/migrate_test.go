package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/testkit/postgres"
)

// TestMigrateCopiesRevocations copies a SQLite store with issued, revoked
// and unrevoked certificates and a revoked device into a real PostgreSQL:
// the CRL, the issued certificates, the device marks and the feed (with
// its Seq) are the same there, and the next revocation continues the feed
// after the copied events.
func TestMigrateCopiesRevocations(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	src, err := store.Open(ctx, filepath.Join(t.TempDir(), "edgeca.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.CreateToken(ctx, store.Token{ID: "fleet", MaxUses: 2, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	issue := func(dev, serial string) {
		t.Helper()
		iss := store.Issuance{Serial: serial, NotAfter: now.Add(24 * time.Hour)}
		audit := store.AuditRecord{Time: now, Op: "simpleenroll", DeviceID: dev, Result: store.ResultOK}
		var err error
		if d, derr := src.Device(ctx, dev); derr == nil {
			_, err = src.Reissue(ctx, store.Renewal{DeviceID: dev, Presented: d.Serial, Time: now, Issuance: iss, Audit: audit})
		} else {
			_, err = src.IssueWithToken(ctx, store.TokenEnrollment{TokenID: "fleet", DeviceID: dev, Time: now, Issuance: iss, Audit: audit})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	issue("pump-1", "a1")
	issue("pump-1", "a2")
	issue("pump-2", "b1")
	if err := src.RecordIssued(ctx, "e1", "enforcer:sink", now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	if _, err := src.RevokeSerial(ctx, "a1", store.ReasonSuperseded, now); err != nil {
		t.Fatal(err)
	}
	if _, err := src.RevokeDeviceCerts(ctx, "pump-2", "", store.ReasonKeyCompromise, true, now); err != nil {
		t.Fatal(err)
	}
	if _, err := src.UnrevokeDevice(ctx, "pump-2", now); err != nil {
		t.Fatal(err)
	}
	if _, err := src.RevokeDeviceCerts(ctx, "pump-2", "", store.ReasonKeyCompromise, true, now); err != nil {
		t.Fatal(err)
	}
	snap, err := src.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Issued) != 4 || len(snap.Revoked) != 2 || len(snap.Events) != 4 {
		t.Fatalf("snapshot holds %d issued, %d revoked, %d events; want 4, 2, 4", len(snap.Issued), len(snap.Revoked), len(snap.Events))
	}

	pg := postgres.Start(t)
	dst, err := store.OpenPostgres(ctx, pg.CreateDB("migrate"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.Import(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if err := dst.Import(ctx, store.Snapshot{Issued: snap.Issued}); err == nil {
		t.Error("a second import into a database holding certificates was accepted")
	}
	for _, rs := range []struct {
		name string
		fn   func(store.RevocationStore) (any, error)
	}{
		{"revoked", func(r store.RevocationStore) (any, error) { return r.Revoked(ctx, now) }},
		{"events", func(r store.RevocationStore) (any, error) { return r.RevocationEvents(ctx, 0, 100) }},
		{"seq", func(r store.RevocationStore) (any, error) { return r.RevocationSeq(ctx) }},
		{"a1 revoked", func(r store.RevocationStore) (any, error) { return r.IsRevoked(ctx, "a1") }},
		{"a2 revoked", func(r store.RevocationStore) (any, error) { return r.IsRevoked(ctx, "a2") }},
		{"pump-2 status", func(r store.RevocationStore) (any, error) {
			d, err := r.(store.Store).Device(ctx, "pump-2")
			return d.Status, err
		}},
	} {
		want, err := rs.fn(src)
		if err != nil {
			t.Fatalf("%s on SQLite: %v", rs.name, err)
		}
		got, err := rs.fn(dst)
		if err != nil {
			t.Fatalf("%s on PostgreSQL: %v", rs.name, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s after migrate: %v, want %v", rs.name, got, want)
		}
	}
	// issued_certs came along: revoking pump-1 reaches a2 (and a1 stays
	// as it was), and the feed continues after the copied events.
	out, err := dst.RevokeDeviceCerts(ctx, "pump-1", "", store.ReasonKeyCompromise, true, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Serial != "a2" {
		t.Errorf("revoking pump-1 after migrate revoked %v, want a2", out)
	}
	last := snap.Events[len(snap.Events)-1].Seq
	evs, err := dst.RevocationEvents(ctx, last, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Seq != last+1 || evs[0].Serial != "a2" {
		t.Errorf("events after the copied ones: %+v, want one for a2 with seq %d", evs, last+1)
	}
}

// TestMigrateCopiesFleetTables: the inventory (agent, certificate
// history), the labels of tokens and devices, a renew-now mark and a
// queued webhook event arrive in a real PostgreSQL as they were, and a new
// event queues after the copied one.
func TestMigrateCopiesFleetTables(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	src, err := store.Open(ctx, filepath.Join(t.TempDir(), "edgeca.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	labels := map[string]string{"site": "berlin"}
	if err := src.CreateTokens(ctx, []store.Token{{ID: "fleet", MaxUses: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}}, labels); err != nil {
		t.Fatal(err)
	}
	audit := store.AuditRecord{Time: now, Op: "simpleenroll", DeviceID: "pump-1", Result: store.ResultOK}
	if _, err := src.IssueWithToken(ctx, store.TokenEnrollment{TokenID: "fleet", DeviceID: "pump-1", Time: now, Agent: "edgeagent/1.2.3",
		Issuance: store.Issuance{Serial: "a1", NotBefore: now, NotAfter: now.Add(time.Hour), KeyHash: [32]byte{1}}, Audit: audit}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Reissue(ctx, store.Renewal{DeviceID: "pump-1", Presented: "a1", Time: now.Add(time.Minute),
		Issuance: store.Issuance{Serial: "a2", NotBefore: now, NotAfter: now.Add(2 * time.Hour), KeyHash: [32]byte{2}}, Audit: audit}); err != nil {
		t.Fatal(err)
	}
	if err := src.LabelDevice(ctx, "pump-1", map[string]string{"ring": "canary"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := src.RequestRenewal(ctx, []string{"pump-1"}, now.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := src.Enqueue(ctx, []store.OutboxEvent{{ID: "evt-1", Kind: "device.enrolled", Created: now, Body: []byte(`{"a":1}`)}}, 0); err != nil {
		t.Fatal(err)
	}
	snap, err := src.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}

	pg := postgres.Start(t)
	dst, err := store.OpenPostgres(ctx, pg.CreateDB("migratefleet"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.Import(ctx, snap); err != nil {
		t.Fatal(err)
	}
	for _, s := range []interface {
		store.InventoryStore
		store.FleetStore
	}{src, dst} {
		name := fmt.Sprintf("%T", s)
		d, err := s.DeviceInfo(ctx, "pump-1")
		if err != nil || d.Agent != "edgeagent/1.2.3" || d.Renewal.Result != store.RenewalOK {
			t.Errorf("%s: device info %+v, %v", name, d, err)
		}
		if h, err := s.CertHistory(ctx, "pump-1"); err != nil || len(h) != 2 || h[0].Serial != "a2" || h[1].Serial != "a1" {
			t.Errorf("%s: history %+v, %v", name, h, err)
		}
		if l, err := s.DeviceLabels(ctx, "pump-1"); err != nil || !reflect.DeepEqual(l, map[string]string{"site": "berlin", "ring": "canary"}) {
			t.Errorf("%s: device labels %v, %v", name, l, err)
		}
		if l, err := s.TokenLabels(ctx, "fleet"); err != nil || !reflect.DeepEqual(l, labels) {
			t.Errorf("%s: token labels %v, %v", name, l, err)
		}
		if at, err := s.RenewalRequested(ctx, "pump-1"); err != nil || !at.Equal(now.Add(2*time.Minute)) {
			t.Errorf("%s: renew-now mark %v, %v", name, at, err)
		}
	}
	if err := dst.Enqueue(ctx, []store.OutboxEvent{{ID: "evt-2", Kind: "device.renewed", Created: now, Body: []byte(`{}`)}}, 0); err != nil {
		t.Fatal(err)
	}
	evs, err := dst.ClaimEvents(ctx, "r1", now.Add(time.Hour), time.Minute, 10)
	if err != nil || len(evs) != 2 || evs[0].ID != "evt-1" || string(evs[0].Body) != `{"a":1}` || evs[1].ID != "evt-2" {
		t.Fatalf("outbox after the move: %+v, %v", evs, err)
	}
}
