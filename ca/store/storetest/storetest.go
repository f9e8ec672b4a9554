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
		{"RefusalChangesNothing", refusalChangesNothing},
		{"ConfirmedSerial", confirmedSerial},
		{"RevokeDeviceVisibleAtOnce", revokeDeviceVisible},
		{"RevokeTokenVisibleAtOnce", revokeTokenVisible},
		{"NewDeviceRaceOneWinner", newDeviceRace},
		{"TokensAndErrors", tokensAndErrors},
		{"Audit", audit},
		{"Settings", settings},
		{"InitSetting", initSetting},
		{"Ping", ping},
	}
	tests = append(tests, revocationTests...) // revocation.go
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

func mkToken(t *testing.T, s store.Store, id string, uses int) {
	t.Helper()
	if err := s.CreateToken(context.Background(), store.Token{ID: id, SecretHash: [32]byte{1}, MaxUses: uses, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
}

// decideToken is what the CA decides for a token enrollment, reduced to
// the parts the store must make exact.
func decideToken(tok *store.Token, dev *store.Device) error {
	switch {
	case tok == nil:
		return errors.New("unknown token")
	case !tok.RevokedAt.IsZero():
		return errors.New("token revoked")
	case tok.Uses >= tok.MaxUses:
		return errors.New("used up")
	case dev != nil && dev.Status == store.StatusRevoked:
		return errors.New("device revoked")
	}
	return nil
}

func enrollReq(tok, dev, serial string) store.IssueRequest {
	return store.IssueRequest{TokenID: tok, DeviceID: dev, Time: now,
		Issuance: store.Issuance{Serial: serial, NotAfter: now.Add(time.Hour), DER: []byte("cert " + serial)},
		Audit:    store.AuditRecord{Time: now, Op: "simpleenroll", TokenID: tok, DeviceID: dev, Result: store.ResultOK}}
}

// tokenUsesExact races 64 callers spread over three handles for a token
// of N uses, for several N: exactly N win, and the token says N uses.
func tokenUsesExact(t *testing.T, b Backend) {
	rs := replicas(t, b, 3)
	ctx := context.Background()
	for _, uses := range []int{1, 5, 64} {
		rounds := 20
		if uses > 1 {
			rounds = 3
		}
		for round := range rounds {
			id := fmt.Sprintf("tok-%d-%d", uses, round)
			mkToken(t, rs[0], id, uses)
			const racers = 64
			var wg sync.WaitGroup
			errs := make([]error, racers)
			for i := range racers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = rs[i%len(rs)].Issue(ctx, enrollReq(id, fmt.Sprintf("%s-dev-%d", id, i), fmt.Sprintf("%s-%d", id, i)), decideToken)
				}()
			}
			wg.Wait()
			won := 0
			for _, err := range errs {
				if err == nil {
					won++
				} else if err.Error() != "used up" {
					t.Fatalf("token %s: an Issue failed with %v, want a win or decide's refusal", id, err)
				}
			}
			tok, err := rs[1].Token(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if want := min(uses, racers); won != want || tok.Uses != want {
				t.Fatalf("token %s of %d uses raced by %d: %d winners, %d uses recorded, want %d", id, uses, racers, won, tok.Uses, want)
			}
		}
	}
}

// refusalChangesNothing: decide's error comes back unchanged and no use,
// device or audit record is written.
func refusalChangesNothing(t *testing.T, b Backend) {
	s := replicas(t, b, 1)[0]
	ctx := context.Background()
	mkToken(t, s, "t", 1)
	sentinel := errors.New("refused by decide")
	err := s.Issue(ctx, enrollReq("t", "d", "A"), func(*store.Token, *store.Device) error { return sentinel })
	if err != sentinel {
		t.Fatalf("Issue returned %v, want decide's error itself", err)
	}
	tok, _ := s.Token(ctx, "t")
	if tok.Uses != 0 {
		t.Errorf("a refused Issue spent a use: %+v", tok)
	}
	if _, err := s.Device(ctx, "d"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused Issue recorded the device: %v", err)
	}
	if recs, _ := s.Audit(ctx, 0); len(recs) != 0 {
		t.Errorf("a refused Issue wrote %d audit records", len(recs))
	}
}

// confirmedSerial walks a device through the renewals of
// IssueRequest.Presented, each step on another handle.
func confirmedSerial(t *testing.T, b Backend) {
	rs := replicas(t, b, 2)
	ctx := context.Background()
	mkToken(t, rs[0], "t1", 2)
	ok := func(*store.Token, *store.Device) error { return nil }
	steps := []struct {
		token, presented, serial string
		wantConfirmed, wantPrev  string
	}{
		{"t1", "", "A", "", ""},
		{"", "A", "B", "A", "A"}, // renewed with the newest: A confirmed
		{"", "A", "C", "A", "B"}, // B's answer was lost: A still good
		{"", "A", "D", "A", "C"}, // and again
		{"", "D", "E", "D", "D"}, // the device shows D: A is done
		{"t1", "", "F", "", "E"}, // a token enrollment starts over
	}
	for i, st := range steps {
		s := rs[i%2]
		der := []byte("cert " + st.serial)
		err := s.Issue(ctx, store.IssueRequest{TokenID: st.token, DeviceID: "d1", Time: now, Presented: st.presented,
			Issuance: store.Issuance{Serial: st.serial, NotAfter: now.Add(time.Hour), DER: der, KeyHash: [32]byte{byte(i)}}}, ok)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		d, err := rs[(i+1)%2].Device(ctx, "d1")
		if err != nil {
			t.Fatal(err)
		}
		if d.Serial != st.serial || d.Confirmed != st.wantConfirmed || d.PrevSerial != st.wantPrev || string(d.Cert) != string(der) ||
			d.KeyHash != [32]byte{byte(i)} || d.CertToken != st.token || d.Enrollments != i+1 || d.Status != store.StatusActive {
			t.Errorf("step %d (%+v): device %+v", i, st, d)
		}
	}
	tok, _ := rs[0].Token(ctx, "t1")
	if tok.Uses != 2 || tok.LastUsedAt.IsZero() {
		t.Errorf("token after two enrollments: %+v", tok)
	}
}

// revokeDeviceVisible: a device revoked through one handle is revoked for
// the next Issue on every other handle.
func revokeDeviceVisible(t *testing.T, b Backend) {
	rs := replicas(t, b, 3)
	ctx := context.Background()
	mkToken(t, rs[0], "t", 10)
	for i := range 10 {
		dev := fmt.Sprintf("d%d", i)
		if err := rs[0].Issue(ctx, enrollReq("t", dev, dev+"-A"), decideToken); err != nil {
			t.Fatal(err)
		}
		if err := rs[1].RevokeDevice(ctx, dev, now); err != nil {
			t.Fatal(err)
		}
		var saw *store.Device
		err := rs[2].Issue(ctx, store.IssueRequest{DeviceID: dev, Time: now, Presented: dev + "-A"}, func(_ *store.Token, d *store.Device) error {
			saw = d
			if d == nil || d.Status == store.StatusRevoked {
				return errors.New("revoked")
			}
			return nil
		})
		if err == nil || saw == nil || saw.Status != store.StatusRevoked || !saw.RevokedAt.Equal(now) {
			t.Fatalf("renewal on another handle right after the revocation: %v, saw %+v", err, saw)
		}
	}
	if err := rs[0].RevokeDevice(ctx, "nobody", now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke an unknown device: %v, want ErrNotFound", err)
	}
	// Revoking twice keeps the first time.
	if err := rs[0].RevokeDevice(ctx, "d0", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if d, _ := rs[2].Device(ctx, "d0"); !d.RevokedAt.Equal(now) {
		t.Errorf("revoked twice: revoked_at %v, want the first %v", d.RevokedAt, now)
	}
}

func revokeTokenVisible(t *testing.T, b Backend) {
	rs := replicas(t, b, 2)
	ctx := context.Background()
	mkToken(t, rs[0], "t", 5)
	if err := rs[0].RevokeToken(ctx, "t", now); err != nil {
		t.Fatal(err)
	}
	if err := rs[1].Issue(ctx, enrollReq("t", "d", "A"), decideToken); err == nil || err.Error() != "token revoked" {
		t.Fatalf("Issue with a token revoked on another handle: %v", err)
	}
	if err := rs[0].RevokeToken(ctx, "none", now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke an unknown token: %v, want ErrNotFound", err)
	}
}

// newDeviceRace: many first enrollments of one device id at once, each
// with its own token, decide refusing an existing device: one wins, the
// others see the winner's device, and only the winner's token is spent.
func newDeviceRace(t *testing.T, b Backend) {
	rs := replicas(t, b, 3)
	ctx := context.Background()
	const racers = 32
	for i := range racers {
		mkToken(t, rs[0], fmt.Sprintf("t%d", i), 1)
	}
	var wg sync.WaitGroup
	errs := make([]error, racers)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = rs[i%3].Issue(ctx, enrollReq(fmt.Sprintf("t%d", i), "same", fmt.Sprintf("S%d", i)), func(tok *store.Token, dev *store.Device) error {
				if dev != nil {
					return errors.New("already enrolled")
				}
				return decideToken(tok, dev)
			})
		}()
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		if err == nil {
			won++
		} else if err.Error() != "already enrolled" {
			t.Errorf("racer %d: %v", i, err)
		}
	}
	toks, err := rs[1].Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spent := 0
	for _, tk := range toks {
		spent += tk.Uses
	}
	d, err := rs[2].Device(ctx, "same")
	if won != 1 || spent != 1 || err != nil || d.Enrollments != 1 {
		t.Fatalf("%d winners, %d token uses, device %+v %v: want one of each", won, spent, d, err)
	}
}

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
	// An Issue's audit record is written with the serial.
	mkToken(t, rs[0], "t", 1)
	if err := rs[0].Issue(ctx, enrollReq("t", "d", "SER"), decideToken); err != nil {
		t.Fatal(err)
	}
	recs, _ = rs[1].Audit(ctx, 1)
	if len(recs) != 1 || recs[0].Serial != "SER" || recs[0].DeviceID != "d" || recs[0].Result != store.ResultOK {
		t.Errorf("Issue's audit record: %+v", recs)
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
