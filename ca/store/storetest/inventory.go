package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
)

// inventoryTests are the InventoryStore cases of the suite.
var inventoryTests = []struct {
	name string
	fn   func(*testing.T, Backend)
}{
	{"InventoryHistoryAndRenewal", inventoryHistory},
	{"InventoryFilters", inventoryFilters},
	{"InventoryContact", inventoryContact},
}

func invs(t *testing.T, b Backend, n int) ([]store.Store, []store.InventoryStore) {
	t.Helper()
	ss := replicas(t, b, n)
	is := make([]store.InventoryStore, n)
	for i, s := range ss {
		v, ok := s.(store.InventoryStore)
		if !ok {
			t.Fatalf("the store %T is not a store.InventoryStore", s)
		}
		is[i] = v
	}
	return ss, is
}

// inventoryHistory: an enrollment and renewals fill the history (bounded,
// newest first, with their operations), the agent and the renewal result
// follow, a refused renewal marks the device until the next issuance.
func inventoryHistory(t *testing.T, b Backend) {
	ss, is := invs(t, b, 2)
	ctx := context.Background()
	mkToken(t, ss[0], "t1", 1)
	at := func(i int) time.Time { return now.Add(time.Duration(i) * time.Minute) }
	issue := func(i int, tok, presented, agent string) {
		t.Helper()
		op := "simplereenroll"
		if tok != "" {
			op = "simpleenroll"
		}
		iss := store.Issuance{Serial: fmt.Sprintf("s%02d", i), NotBefore: at(i).Add(-time.Minute), NotAfter: at(i).Add(time.Hour), KeyHash: [32]byte{byte(i + 1)}}
		audit := store.AuditRecord{Time: at(i), Op: op, DeviceID: "d1", Result: store.ResultOK}
		var err error
		if tok != "" {
			_, err = ss[i%2].IssueWithToken(ctx, store.TokenEnrollment{TokenID: tok, SecretHash: secret, DeviceID: "d1", Time: at(i), Agent: agent, Issuance: iss, Audit: audit})
		} else {
			_, err = ss[i%2].Reissue(ctx, store.Renewal{DeviceID: "d1", Presented: presented, Time: at(i), Agent: agent, Issuance: iss, Audit: audit})
		}
		if err != nil {
			t.Fatalf("issue %d: %v", i, err)
		}
	}
	issue(0, "t1", "", "edgeagent/1.0")
	d, err := is[1].DeviceInfo(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Agent != "edgeagent/1.0" || d.Renewal.Result != "" || !d.NotBefore.Equal(at(0).Add(-time.Minute)) || !d.IssuedAt.Equal(at(0)) || d.Serial != "s00" {
		t.Fatalf("after enrollment: %+v", d)
	}
	n := store.CertHistoryMax + 5
	for i := 1; i < n; i++ {
		agent := ""
		if i == 3 {
			agent = "edgeagent/1.1"
		}
		issue(i, "", fmt.Sprintf("s%02d", i-1), agent)
	}
	d, err = is[0].DeviceInfo(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Agent != "edgeagent/1.1" || d.Renewal.Result != store.RenewalOK || !d.Renewal.At.Equal(at(n-1)) {
		t.Errorf("after renewals: agent %q renewal %+v", d.Agent, d.Renewal)
	}
	h, err := is[1].CertHistory(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != store.CertHistoryMax {
		t.Fatalf("history has %d records, want %d", len(h), store.CertHistoryMax)
	}
	for k, r := range h {
		i := n - 1 - k
		want := store.CertRecord{Serial: fmt.Sprintf("s%02d", i), Op: "simplereenroll", NotBefore: at(i).Add(-time.Minute), NotAfter: at(i).Add(time.Hour), IssuedAt: at(i)}
		if r != want {
			t.Errorf("history[%d] = %+v, want %+v", k, r, want)
		}
	}
	// A refusal marks the device failing; the next issuance clears it.
	if err := is[0].RecordRenewalRefused(ctx, "d1", "edgeagent/1.2", store.RenewalResult{Code: "bad-csr", Reason: "no", At: at(n)}); err != nil {
		t.Fatal(err)
	}
	failing, err := is[1].Inventory(ctx, store.DeviceFilter{RenewalRefused: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(failing) != 1 || failing[0].Renewal != (store.RenewalResult{Result: store.RenewalRefused, Code: "bad-csr", Reason: "no", At: at(n)}) ||
		failing[0].Agent != "edgeagent/1.2" || !failing[0].LastSeen.Equal(at(n)) || failing[0].Cert != nil {
		t.Fatalf("failing = %+v", failing)
	}
	issue(n+1, "", fmt.Sprintf("s%02d", n-1), "")
	if failing, err = is[1].Inventory(ctx, store.DeviceFilter{RenewalRefused: true}); err != nil || len(failing) != 0 {
		t.Fatalf("after a renewal: failing = %+v, %v", failing, err)
	}
	// Unknown devices: nothing recorded, no error.
	if err := is[0].RecordRenewalRefused(ctx, "nobody", "", store.RenewalResult{Code: "x", At: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := is[0].DeviceInfo(ctx, "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("DeviceInfo(nobody) = %v, want ErrNotFound", err)
	}
}

func ids(ds []store.DeviceInfo) []string {
	out := []string{}
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}

func inventoryFilters(t *testing.T, b Backend) {
	ss, is := invs(t, b, 2)
	ctx := context.Background()
	mkToken(t, ss[0], "ta", 10)
	mkToken(t, ss[0], "tb", 10)
	devs := []struct {
		id, tok  string
		ttl      time.Duration
		seen     time.Duration // contact after now
		revoked  bool
		refusedB bool
	}{
		{"a1", "ta", 3 * time.Hour, 5 * time.Minute, false, false},
		{"a2", "ta", 1 * time.Hour, 1 * time.Minute, false, true},
		{"b1", "tb", 2 * time.Hour, 9 * time.Minute, true, false},
		{"b2", "tb", -time.Minute, 0, false, false}, // expired
	}
	for _, d := range devs {
		_, err := ss[0].IssueWithToken(ctx, store.TokenEnrollment{TokenID: d.tok, SecretHash: secret, DeviceID: d.id, Time: now,
			Issuance: store.Issuance{Serial: "s-" + d.id, NotBefore: now, NotAfter: now.Add(d.ttl), KeyHash: [32]byte{byte(len(d.id)), d.id[0], d.id[1]}},
			Audit:    store.AuditRecord{Time: now, Op: "simpleenroll", DeviceID: d.id, Result: store.ResultOK}})
		if err != nil {
			t.Fatal(err)
		}
		if d.seen > 0 {
			if err := is[1].RecordContact(ctx, store.Contact{DeviceID: d.id, At: now.Add(d.seen)}); err != nil {
				t.Fatal(err)
			}
		}
		if d.revoked {
			if err := ss[1].RevokeDevice(ctx, d.id, now); err != nil {
				t.Fatal(err)
			}
		}
		if d.refusedB {
			if err := is[0].RecordRenewalRefused(ctx, d.id, "", store.RenewalResult{Code: "c", At: now.Add(time.Second)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name string
		f    store.DeviceFilter
		want []string
	}{
		{"all", store.DeviceFilter{}, []string{"a1", "a2", "b1", "b2"}},
		{"active", store.DeviceFilter{Status: store.StatusActive}, []string{"a1", "a2", "b2"}},
		{"revoked", store.DeviceFilter{Status: store.StatusRevoked}, []string{"b1"}},
		{"token", store.DeviceFilter{TokenID: "tb"}, []string{"b1", "b2"}},
		{"expired", store.DeviceFilter{NotAfterBefore: now}, []string{"b2"}},
		{"expiring 2h", store.DeviceFilter{NotAfterFrom: now, NotAfterBefore: now.Add(2*time.Hour + time.Second), Sort: store.SortExpiry}, []string{"a2", "b1"}},
		{"by expiry", store.DeviceFilter{Sort: store.SortExpiry}, []string{"b2", "a2", "b1", "a1"}},
		{"by last seen", store.DeviceFilter{Sort: store.SortLastSeen}, []string{"b1", "a1", "a2", "b2"}},
		{"limit", store.DeviceFilter{Sort: store.SortExpiry, Limit: 2}, []string{"b2", "a2"}},
		{"renewal refused", store.DeviceFilter{RenewalRefused: true}, []string{"a2"}},
		{"combined", store.DeviceFilter{Status: store.StatusActive, TokenID: "ta", Sort: store.SortLastSeen}, []string{"a1", "a2"}},
	}
	for _, tc := range cases {
		got, err := is[1].Inventory(ctx, tc.f)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !slices.Equal(ids(got), tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, ids(got), tc.want)
		}
	}
	for _, f := range []store.DeviceFilter{{Sort: "nope"}, {Status: "lost"}} {
		if _, err := is[0].Inventory(ctx, f); err == nil {
			t.Errorf("Inventory(%+v) accepted a bad filter", f)
		}
	}
}

// inventoryContact: last seen moves forward only; the agent is recorded.
func inventoryContact(t *testing.T, b Backend) {
	ss, is := invs(t, b, 2)
	ctx := context.Background()
	issueCert(t, ss[0], "d1", "s1", time.Hour)
	steps := []struct {
		at       time.Duration
		agent    string
		wantSeen time.Duration
		wantAg   string
	}{
		{time.Minute, "edgeagent/2.0", time.Minute, "edgeagent/2.0"},
		{30 * time.Second, "", time.Minute, "edgeagent/2.0"}, // earlier: ignored, agent kept
		{2 * time.Minute, "curl/8.1", 2 * time.Minute, "curl/8.1"},
	}
	for i, st := range steps {
		if err := is[i%2].RecordContact(ctx, store.Contact{DeviceID: "d1", At: now.Add(st.at), Agent: st.agent}); err != nil {
			t.Fatal(err)
		}
		d, err := is[(i+1)%2].DeviceInfo(ctx, "d1")
		if err != nil {
			t.Fatal(err)
		}
		if !d.LastSeen.Equal(now.Add(st.wantSeen)) || d.Agent != st.wantAg {
			t.Errorf("step %d: last seen %s agent %q, want %s %q", i, d.LastSeen, d.Agent, now.Add(st.wantSeen), st.wantAg)
		}
	}
	// The registry row keeps saying when the device was last issued a
	// certificate: contacts are the inventory's.
	if reg, err := ss[1].Device(ctx, "d1"); err != nil || !reg.LastSeen.Equal(now) {
		t.Errorf("registry last seen %v (%v), want the issuance %s", reg.LastSeen, err, now)
	}
	if err := is[0].RecordContact(ctx, store.Contact{DeviceID: "ghost", At: now, Agent: "x/1"}); err != nil {
		t.Fatal(err)
	}
	all, err := is[1].Inventory(ctx, store.DeviceFilter{})
	if err != nil || !slices.Equal(ids(all), []string{"d1"}) {
		t.Fatalf("a contact of an unknown device made one: %v %v", ids(all), err)
	}
}
