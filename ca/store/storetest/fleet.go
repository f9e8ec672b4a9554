package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
)

// fleetTests are the FleetStore cases of the suite.
var fleetTests = []struct {
	name string
	fn   func(*testing.T, Backend)
}{
	{"FleetBulkTokensAndLabels", fleetBulkTokensAndLabels},
	{"FleetRenewNow", fleetRenewNow},
	{"FleetOutboxClaimedOnceAcrossReplicas", fleetOutboxClaimOnce},
	{"FleetOutboxBoundedAndInIssue", fleetOutboxBounded},
	{"FleetNoteExpiredOnce", fleetNoteExpired},
}

func fleets(t *testing.T, b Backend, n int) ([]store.Store, []store.FleetStore) {
	t.Helper()
	ss := replicas(t, b, n)
	fs := make([]store.FleetStore, n)
	for i, s := range ss {
		f, ok := s.(store.FleetStore)
		if !ok {
			t.Fatalf("the store %T is not a store.FleetStore", s)
		}
		fs[i] = f
	}
	return ss, fs
}

func fleetBulkTokensAndLabels(t *testing.T, b Backend) {
	ss, fs := fleets(t, b, 2)
	ctx := context.Background()
	labels := map[string]string{"site": "berlin", "hw": "rev-b"}
	var toks []store.Token
	for i := range 500 {
		toks = append(toks, store.Token{ID: fmt.Sprintf("bulk-%03d", i), SecretHash: secret, MaxUses: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	}
	if err := fs[0].CreateTokens(ctx, toks, labels); err != nil {
		t.Fatal(err)
	}
	all, err := ss[1].Tokens(ctx)
	if err != nil || len(all) != 500 {
		t.Fatalf("%d tokens listed (%v), want 500", len(all), err)
	}
	// All or none: a batch with one taken id stores nothing.
	dup := []store.Token{{ID: "fresh-1", SecretHash: [32]byte{9}, MaxUses: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, toks[7]}
	if err := fs[1].CreateTokens(ctx, dup, nil); !errors.Is(err, store.ErrExists) {
		t.Fatalf("a batch with a taken id: %v, want ErrExists", err)
	}
	if _, err := ss[0].Token(ctx, "fresh-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a failed batch left a token behind: %v", err)
	}
	if err := fs[0].CreateTokens(ctx, dup[:1], map[string]string{"Bad Key": "x"}); !errors.Is(err, store.ErrBadLabel) {
		t.Fatalf("bad label: %v, want ErrBadLabel", err)
	}
	if got, _ := fs[1].TokenLabels(ctx, "bulk-042"); !maps.Equal(got, labels) {
		t.Fatalf("token labels %v, want %v", got, labels)
	}
	// The device inherits the token's labels in Issue's transaction.
	if _, err := ss[1].IssueWithToken(ctx, enrollReq("bulk-042", "dev-a", "S1")); err != nil {
		t.Fatal(err)
	}
	if got, _ := fs[0].DeviceLabels(ctx, "dev-a"); !maps.Equal(got, labels) {
		t.Fatalf("device labels %v, want %v", got, labels)
	}
	if err := fs[0].LabelDevice(ctx, "dev-a", map[string]string{"ring": "canary", "site": "paris"}, []string{"hw"}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"site": "paris", "ring": "canary"}
	if got, _ := fs[1].DeviceLabels(ctx, "dev-a"); !maps.Equal(got, want) {
		t.Fatalf("after label: %v, want %v", got, want)
	}
	if err := fs[0].LabelDevice(ctx, "nobody", map[string]string{"a": "b"}, nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("label an unknown device: %v, want ErrNotFound", err)
	}
	if _, err := ss[0].IssueWithToken(ctx, enrollReq("bulk-043", "dev-b", "S2")); err != nil {
		t.Fatal(err)
	}
	if ids, _ := fs[1].DevicesWithLabel(ctx, "site", "berlin"); !slices.Equal(ids, []string{"dev-b"}) {
		t.Fatalf("site=berlin: %v", ids)
	}
	if ids, _ := fs[1].DevicesWithLabel(ctx, "ring", "canary"); !slices.Equal(ids, []string{"dev-a"}) {
		t.Fatalf("ring=canary: %v", ids)
	}
	// The inventory filters by labels too: every label given must match.
	inv, ok := ss[1].(store.InventoryStore)
	if !ok {
		t.Fatalf("the store %T is not a store.InventoryStore", ss[1])
	}
	for _, tc := range []struct {
		labels map[string]string
		want   []string
	}{
		{map[string]string{"site": "berlin"}, []string{"dev-b"}},
		{map[string]string{"site": "paris"}, []string{"dev-a"}},
		{map[string]string{"site": "paris", "ring": "canary"}, []string{"dev-a"}},
		{map[string]string{"site": "paris", "ring": "stable"}, nil},
		{map[string]string{"hw": "rev-b"}, []string{"dev-b"}},
	} {
		got, err := inv.Inventory(ctx, store.DeviceFilter{Labels: tc.labels})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range got {
			ids = append(ids, d.ID)
		}
		if !slices.Equal(ids, tc.want) {
			t.Errorf("Inventory(labels %v) = %v, want %v", tc.labels, ids, tc.want)
		}
	}
	too := map[string]string{}
	for i := range store.MaxLabels + 1 {
		too[fmt.Sprintf("k%d", i)] = "v"
	}
	if err := fs[0].LabelDevice(ctx, "dev-a", too, nil); !errors.Is(err, store.ErrBadLabel) {
		t.Fatalf("%d labels: %v, want ErrBadLabel", len(too), err)
	}
}

func fleetRenewNow(t *testing.T, b Backend) {
	ss, fs := fleets(t, b, 2)
	ctx := context.Background()
	issueCert(t, ss[0], "dev-r", "R1", time.Hour)
	n, err := fs[0].RequestRenewal(ctx, []string{"dev-r", "nobody"}, now.Add(time.Minute))
	if err != nil || n != 1 {
		t.Fatalf("RequestRenewal = %d, %v; want 1 known device", n, err)
	}
	if at, _ := fs[1].RenewalRequested(ctx, "dev-r"); !at.Equal(now.Add(time.Minute)) {
		t.Fatalf("mark at %v", at)
	}
	if at, _ := fs[1].RenewalRequested(ctx, "nobody"); !at.IsZero() {
		t.Fatalf("unknown device marked at %v", at)
	}
	// A renewal from before the request does not fulfil it; one after does.
	early := store.Renewal{DeviceID: "dev-r", Time: now, Presented: "R1", Issuance: store.Issuance{Serial: "R2", NotAfter: now.Add(time.Hour), KeyHash: [32]byte{0xe2}}}
	if _, err := ss[1].Reissue(ctx, early); err != nil {
		t.Fatal(err)
	}
	if at, _ := fs[0].RenewalRequested(ctx, "dev-r"); at.IsZero() {
		t.Fatal("an earlier renewal cleared the mark")
	}
	late := store.Renewal{DeviceID: "dev-r", Time: now.Add(2 * time.Minute), Presented: "R2", Issuance: store.Issuance{Serial: "R3", NotAfter: now.Add(time.Hour), KeyHash: [32]byte{0xe3}}}
	if _, err := ss[1].Reissue(ctx, late); err != nil {
		t.Fatal(err)
	}
	if at, _ := fs[0].RenewalRequested(ctx, "dev-r"); !at.IsZero() {
		t.Fatalf("the renewal after the request left the mark at %v", at)
	}
}

func events(prefix string, n int) []store.OutboxEvent {
	var evs []store.OutboxEvent
	for i := range n {
		evs = append(evs, store.OutboxEvent{ID: fmt.Sprintf("%s-%03d", prefix, i), Kind: "test", Created: now, Body: []byte(fmt.Sprintf(`{"i":%d}`, i))})
	}
	return evs
}

func fleetOutboxClaimOnce(t *testing.T, b Backend) {
	_, fs := fleets(t, b, 3)
	ctx := context.Background()
	const n = 60
	if err := fs[0].Enqueue(ctx, events("ev", n), 0); err != nil {
		t.Fatal(err)
	}
	// Enqueue is idempotent per id.
	if err := fs[1].Enqueue(ctx, events("ev", 5), 0); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	claimed := map[string]string{}
	var wg sync.WaitGroup
	for i, f := range fs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("replica-%d", i)
			for {
				evs, err := f.ClaimEvents(ctx, owner, now, time.Minute, 7)
				if err != nil {
					t.Error(err)
					return
				}
				if len(evs) == 0 {
					return
				}
				mu.Lock()
				for _, ev := range evs {
					if prev, dup := claimed[ev.ID]; dup {
						t.Errorf("event %s claimed by %s and %s", ev.ID, prev, owner)
					}
					claimed[ev.ID] = owner
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(claimed) != n {
		t.Fatalf("%d events claimed, want %d", len(claimed), n)
	}
	// Leased: nobody else gets them before the lease ends; after, they
	// come back (the holder died), and only the holder can ack or retry.
	if evs, _ := fs[0].ClaimEvents(ctx, "late", now.Add(30*time.Second), time.Minute, 100); len(evs) != 0 {
		t.Fatalf("%d leased events claimed again", len(evs))
	}
	evs, err := fs[1].ClaimEvents(ctx, "heir", now.Add(2*time.Minute), time.Minute, 100)
	if err != nil || len(evs) != n {
		t.Fatalf("after the lease: %d events (%v), want %d", len(evs), err, n)
	}
	if evs[0].ID != "ev-000" || string(evs[0].Body) != `{"i":0}` {
		t.Fatalf("first event %+v", evs[0])
	}
	later := now.Add(2 * time.Minute)
	if err := fs[2].AckEvent(ctx, "ev-000", "replica-0"); err != nil { // a stale holder: no effect
		t.Fatal(err)
	}
	for i, ev := range evs {
		switch {
		case i < 50:
			err = fs[2].AckEvent(ctx, ev.ID, "heir")
		default:
			err = fs[2].RetryEvent(ctx, ev.ID, "heir", later.Add(time.Hour))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if evs, _ := fs[0].ClaimEvents(ctx, "x", later.Add(time.Minute), time.Minute, 100); len(evs) != 0 {
		t.Fatalf("%d events due before their retry time", len(evs))
	}
	evs, _ = fs[0].ClaimEvents(ctx, "x", later.Add(time.Hour), time.Minute, 100)
	if len(evs) != 10 || evs[0].Attempts != 1 {
		t.Fatalf("retried: %d events, attempts %d; want 10 with 1 attempt", len(evs), evs[0].Attempts)
	}
}

func fleetOutboxBounded(t *testing.T, b Backend) {
	ss, fs := fleets(t, b, 1)
	ctx := context.Background()
	if err := fs[0].Enqueue(ctx, events("b", 15), 10); err != nil {
		t.Fatal(err)
	}
	evs, _ := fs[0].ClaimEvents(ctx, "o", now, time.Minute, 100)
	if len(evs) != 10 || evs[0].ID != "b-005" {
		t.Fatalf("bounded outbox: %d events from %v, want the newest 10", len(evs), evs)
	}
	if d, err := fs[0].OutboxDropped(ctx); err != nil || d != 5 {
		t.Fatalf("dropped %d (%v), want 5", d, err)
	}
	// Events of an enrollment are queued with it, and not when refused.
	mkToken(t, ss[0], "t-ob", 1)
	req := enrollReq("t-ob", "dev-ob", "OB1")
	req.Outbox = []store.OutboxEvent{{ID: "enrolled-OB1", Kind: "device.enrolled", Created: now, Body: []byte("{}")}}
	wrong := req
	wrong.SecretHash = [32]byte{7}
	var r *store.Refusal
	if _, err := ss[0].IssueWithToken(ctx, wrong); !errors.As(err, &r) || r.Kind != store.RefuseTokenSecret {
		t.Fatalf("wrong secret: %v, want a RefuseTokenSecret refusal", err)
	}
	if evs, _ := fs[0].ClaimEvents(ctx, "o2", now.Add(time.Hour), time.Minute, 100); len(evs) != 10 {
		t.Fatalf("a refused enrollment queued its event: %d", len(evs))
	}
	if _, err := ss[0].IssueWithToken(ctx, req); err != nil {
		t.Fatal(err)
	}
	evs, _ = fs[0].ClaimEvents(ctx, "o3", now.Add(2*time.Hour), time.Minute, 100)
	if len(evs) != 11 || evs[10].ID != "enrolled-OB1" {
		t.Fatalf("after an enrollment: %d events, want 11 ending with its own", len(evs))
	}
}

func fleetNoteExpired(t *testing.T, b Backend) {
	ss, fs := fleets(t, b, 3)
	ctx := context.Background()
	issueCert(t, ss[0], "dev-x1", "X1", time.Minute)
	issueCert(t, ss[0], "dev-x2", "X2", time.Hour)
	mk := func(d store.Device) store.OutboxEvent {
		return store.OutboxEvent{ID: "expired-" + d.ID + "-" + d.Serial, Kind: "certificate.expired", Created: now, Body: []byte(`{}`)}
	}
	var wg sync.WaitGroup
	counts := make([]int, len(fs))
	for i, f := range fs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := f.NoteExpired(ctx, now.Add(2*time.Minute), 100, 0, mk)
			if err != nil {
				t.Error(err)
			}
			counts[i] = n
		}()
	}
	wg.Wait()
	if total := counts[0] + counts[1] + counts[2]; total != 1 {
		t.Fatalf("expiry reported %d times across replicas (%v), want once", total, counts)
	}
	if n, _ := fs[0].NoteExpired(ctx, now.Add(3*time.Minute), 100, 0, mk); n != 0 {
		t.Fatalf("reported again: %d", n)
	}
	evs, _ := fs[1].ClaimEvents(ctx, "o", now.Add(3*time.Minute), time.Minute, 100)
	if len(evs) != 1 || evs[0].ID != "expired-dev-x1-X1" {
		t.Fatalf("events %+v", evs)
	}
}
