package store

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestRevocationStore walks one device through issue, revoke, unrevoke,
// supersede, delete and prune, checking the CRL set and the feed after
// each step.
func TestRevocationStore(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "db"))
	now := time.Now().UTC().Truncate(time.Millisecond)
	issue := func(serial string, ttl time.Duration) {
		t.Helper()
		if err := s.Issue(ctx, IssueRequest{DeviceID: "d1", Time: now, Issuance: Issuance{Serial: serial, NotAfter: now.Add(ttl)}},
			func(*Token, *Device) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	revoked := func() []string {
		t.Helper()
		rs, err := s.Revoked(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rs {
			out = append(out, r.Serial)
		}
		slices.Sort(out)
		return out
	}
	issue("a1", time.Hour)
	issue("a2", time.Hour)
	issue("a3", time.Second) // expires first: pruned

	for _, step := range []struct {
		name string
		do   func() error
		want []string
	}{
		{"revoke one serial", func() error { _, err := s.RevokeSerial(ctx, "a2", ReasonKeyCompromise, now); return err }, []string{"a2"}},
		{"revoke the device", func() error {
			_, err := s.RevokeDeviceCerts(ctx, "d1", "", ReasonUnspecified, true, now)
			return err
		}, []string{"a1", "a2", "a3"}},
		{"unrevoke", func() error { _, err := s.UnrevokeDevice(ctx, "d1", now); return err }, nil},
		{"supersede all but a2", func() error {
			_, err := s.RevokeDeviceCerts(ctx, "d1", "a2", ReasonSuperseded, false, now)
			return err
		}, []string{"a1", "a3"}},
		{"unrevoke keeps superseded", func() error { _, err := s.UnrevokeDevice(ctx, "d1", now); return err }, []string{"a1", "a3"}},
		{"delete", func() error { _, err := s.DeleteDevice(ctx, "d1", now); return err }, []string{"a1", "a2", "a3"}},
		{"prune the expired", func() error { return s.PruneRevocations(ctx, now.Add(time.Minute)) }, []string{"a1", "a2"}},
	} {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if got := revoked(); !slices.Equal(got, step.want) {
			t.Fatalf("%s: revoked %v, want %v", step.name, got, step.want)
		}
	}
	if _, err := s.Device(ctx, "d1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted device: %v", err)
	}
	if _, err := s.RevokeSerial(ctx, "ff", 0, now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown serial: %v", err)
	}
	if _, err := s.RevokeDeviceCerts(ctx, "nope", "", 0, true, now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
	// The feed: events in order, the cursor never goes back after a prune.
	evs, err := s.RevocationEvents(ctx, 0, 100)
	if err != nil || len(evs) == 0 {
		t.Fatalf("events: %v %v", evs, err)
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].Seq <= evs[i-1].Seq {
			t.Fatalf("events out of order: %+v", evs)
		}
	}
	seq, err := s.RevocationSeq(ctx)
	if err != nil || seq < evs[len(evs)-1].Seq {
		t.Fatalf("sequence %d after events up to %d: %v", seq, evs[len(evs)-1].Seq, err)
	}
	if ok, err := s.IsRevoked(ctx, "a1"); !ok || err != nil {
		t.Fatalf("IsRevoked(a1) = %v, %v", ok, err)
	}
}
