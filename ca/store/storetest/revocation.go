package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
)

// revocationTests are the RevocationStore cases of the suite.
var revocationTests = []struct {
	name string
	fn   func(*testing.T, Backend)
}{
	{"RevocationWalk", revocationWalk},
	{"RevocationAcrossReplicas", revocationAcrossReplicas},
	{"RevocationFeedUnderRace", revocationFeedUnderRace},
}

// revs opens n handles on one new database as RevocationStores: the CA
// refuses a store that is not one, so every backend must be.
func revs(t *testing.T, b Backend, n int) ([]store.Store, []store.RevocationStore) {
	t.Helper()
	ss := replicas(t, b, n)
	rs := make([]store.RevocationStore, n)
	for i, s := range ss {
		r, ok := s.(store.RevocationStore)
		if !ok {
			t.Fatalf("the store %T is not a store.RevocationStore", s)
		}
		rs[i] = r
	}
	return ss, rs
}

func issueCert(t *testing.T, s store.Store, dev, serial string, ttl time.Duration) {
	t.Helper()
	ctx := context.Background()
	iss := store.Issuance{Serial: serial, NotAfter: now.Add(ttl)}
	// A known device renews with its newest certificate; a new one
	// enrolls with a token of its own.
	if d, err := s.Device(ctx, dev); err == nil {
		if _, err := s.Reissue(ctx, store.Renewal{DeviceID: dev, Presented: d.Serial, Time: now, Issuance: iss}); err != nil {
			t.Fatal(err)
		}
		return
	}
	mkTokenFor(t, s, store.Token{ID: "for-" + dev + "-" + serial, MaxUses: 1, Device: dev})
	if _, err := s.IssueWithToken(ctx, store.TokenEnrollment{TokenID: "for-" + dev + "-" + serial, SecretHash: secret, DeviceID: dev, Time: now, Issuance: iss}); err != nil {
		t.Fatal(err)
	}
}

func revokedSerials(t *testing.T, r store.RevocationStore, at time.Time) []string {
	t.Helper()
	rs, err := r.Revoked(context.Background(), at)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, rc := range rs {
		out = append(out, rc.Serial)
	}
	slices.Sort(out)
	return out
}

// revocationWalk walks one device through issue, revoke, unrevoke,
// supersede, delete and prune, checking the CRL set and the feed after
// each step. a1 is neither the device's serial nor its previous one: only
// the issuing intent's record of it in issued_certs lets the revocation reach it.
func revocationWalk(t *testing.T, b Backend) {
	ctx := context.Background()
	ss, rs := revs(t, b, 1)
	s, r := ss[0], rs[0]
	issueCert(t, s, "d1", "a1", time.Hour)
	issueCert(t, s, "d1", "a2", time.Hour)
	issueCert(t, s, "d1", "a3", time.Second) // expires first: pruned

	for _, step := range []struct {
		name string
		do   func() error
		want []string
	}{
		{"revoke one serial", func() error { _, err := r.RevokeSerial(ctx, "a2", store.ReasonKeyCompromise, now); return err }, []string{"a2"}},
		{"revoke the device", func() error {
			_, err := r.RevokeDeviceCerts(ctx, "d1", "", store.ReasonUnspecified, true, now)
			return err
		}, []string{"a1", "a2", "a3"}},
		{"unrevoke", func() error { _, err := r.UnrevokeDevice(ctx, "d1", now); return err }, nil},
		{"supersede all but a2", func() error {
			_, err := r.RevokeDeviceCerts(ctx, "d1", "a2", store.ReasonSuperseded, false, now)
			return err
		}, []string{"a1", "a3"}},
		{"unrevoke keeps superseded", func() error { _, err := r.UnrevokeDevice(ctx, "d1", now); return err }, []string{"a1", "a3"}},
		{"delete", func() error { _, err := r.DeleteDevice(ctx, "d1", now); return err }, []string{"a1", "a2", "a3"}},
		{"prune the expired", func() error { return r.PruneRevocations(ctx, now.Add(time.Minute)) }, []string{"a1", "a2"}},
	} {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if got := revokedSerials(t, r, now); !slices.Equal(got, step.want) {
			t.Fatalf("%s: revoked %v, want %v", step.name, got, step.want)
		}
	}
	if _, err := s.Device(ctx, "d1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted device: %v", err)
	}
	for _, tc := range []struct {
		name string
		do   func() error
	}{
		{"revoke an unknown serial", func() error { _, err := r.RevokeSerial(ctx, "ff", 0, now); return err }},
		{"revoke an unknown device", func() error { _, err := r.RevokeDeviceCerts(ctx, "nope", "", 0, true, now); return err }},
		{"unrevoke an unknown device", func() error { _, err := r.UnrevokeDevice(ctx, "nope", now); return err }},
		{"delete an unknown device", func() error { _, err := r.DeleteDevice(ctx, "nope", now); return err }},
	} {
		if err := tc.do(); !errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s: %v, want ErrNotFound (and not ErrUnavailable)", tc.name, err)
		}
	}
	// The feed: events in order, the cursor never goes back after a prune.
	evs, err := r.RevocationEvents(ctx, 0, 100)
	if err != nil || len(evs) == 0 {
		t.Fatalf("events: %v %v", evs, err)
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].Seq <= evs[i-1].Seq {
			t.Fatalf("events out of order: %+v", evs)
		}
	}
	seq, err := r.RevocationSeq(ctx)
	if err != nil || seq < evs[len(evs)-1].Seq {
		t.Fatalf("sequence %d after events up to %d: %v", seq, evs[len(evs)-1].Seq, err)
	}
	if ok, err := r.IsRevoked(ctx, "a1"); !ok || err != nil {
		t.Fatalf("IsRevoked(a1) = %v, %v", ok, err)
	}
	if ok, err := r.IsRevoked(ctx, "a3"); ok || err != nil {
		t.Fatalf("IsRevoked(a3) after its prune = %v, %v", ok, err)
	}
}

// revocationAcrossReplicas: a certificate issued through one handle is
// revoked through a second, and a third sees it revoked, the device
// marked, and the same feed, at once.
func revocationAcrossReplicas(t *testing.T, b Backend) {
	ctx := context.Background()
	ss, rs := revs(t, b, 3)
	issueCert(t, ss[0], "d1", "b1", time.Hour)
	issueCert(t, ss[0], "d1", "b2", time.Hour)
	got, err := rs[1].RevokeDeviceCerts(ctx, "d1", "", store.ReasonKeyCompromise, true, now)
	if err != nil || len(got) != 2 {
		t.Fatalf("revoke the device: %v, %v", got, err)
	}
	for _, sn := range []string{"b1", "b2"} {
		if ok, err := rs[2].IsRevoked(ctx, sn); !ok || err != nil {
			t.Errorf("IsRevoked(%s) on another handle = %v, %v", sn, ok, err)
		}
	}
	if d, err := ss[2].Device(ctx, "d1"); err != nil || d.Status != store.StatusRevoked || !d.RevokedAt.Equal(now) {
		t.Errorf("device on another handle: %+v, %v", d, err)
	}
	// Revoking again adds nothing: no new certificate, no new event.
	if again, err := rs[2].RevokeDeviceCerts(ctx, "d1", "", store.ReasonUnspecified, true, now.Add(time.Minute)); err != nil || len(again) != 0 {
		t.Errorf("revoke twice: %v, %v, want nothing newly revoked", again, err)
	}
	feeds := make([][]store.RevocationEvent, len(rs))
	for i, r := range rs {
		if feeds[i], err = r.RevocationEvents(ctx, 0, -1); err != nil {
			t.Fatal(err)
		}
	}
	if len(feeds[0]) != 2 {
		t.Fatalf("feed %+v, want two revoke events", feeds[0])
	}
	for i := range feeds {
		if !slices.Equal(feeds[i], feeds[0]) {
			t.Fatalf("handle %d's feed %+v differs from handle 0's %+v", i, feeds[i], feeds[0])
		}
	}
	for _, e := range feeds[0] {
		if e.Kind != store.EventRevoke || e.Reason != store.ReasonKeyCompromise || e.DeviceID != "d1" || !e.At.Equal(now) || !e.NotAfter.Equal(now.Add(time.Hour)) {
			t.Errorf("event %+v", e)
		}
	}
}

// revocationFeedUnderRace: serials revoked at once through two handles,
// while a third follows the feed by its cursor as a replica's CRL does.
// The follower must end up with every event, none skipped: an event that
// commits after a later one it already read would be lost to it.
func revocationFeedUnderRace(t *testing.T, b Backend) {
	ctx := context.Background()
	ss, rs := revs(t, b, 3)
	const n = 40
	for i := range n {
		issueCert(t, ss[0], fmt.Sprintf("d%d", i), fmt.Sprintf("s%d", i), time.Hour)
	}
	var followed []store.RevocationEvent
	var cursor int64
	follow := func() error {
		evs, err := rs[2].RevocationEvents(ctx, cursor, 1000)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if e.Seq <= cursor {
				return fmt.Errorf("event %d after cursor %d", e.Seq, cursor)
			}
			cursor = e.Seq
			followed = append(followed, e)
		}
		return nil
	}
	done := make(chan struct{})
	followErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-done:
				followErr <- follow() // everything has committed: the last read
				return
			default:
			}
			if err := follow(); err != nil {
				followErr <- err
				return
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = rs[i%2].RevokeSerial(ctx, fmt.Sprintf("s%d", i), store.ReasonKeyCompromise, now)
		}()
	}
	wg.Wait()
	close(done)
	if err := <-followErr; err != nil {
		t.Fatalf("follow the feed: %v", err)
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("revoke s%d: %v", i, err)
		}
	}
	all, err := rs[0].RevocationEvents(ctx, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n || !slices.Equal(followed, all) {
		var missed []int64
		for _, e := range all {
			if !slices.Contains(followed, e) {
				missed = append(missed, e.Seq)
			}
		}
		t.Fatalf("the follower read %d events, the feed holds %d (want %d): it skipped seq %v", len(followed), len(all), n, missed)
	}
	if seq, err := rs[1].RevocationSeq(ctx); err != nil || seq != all[n-1].Seq {
		t.Fatalf("RevocationSeq = %d, %v, want %d", seq, err, all[n-1].Seq)
	}
}
