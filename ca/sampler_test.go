package ca

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestRefusalSampler: the first refusals of a peer in a window are
// recorded, the rest summarized once when the window closes (on the
// peer's next refusal or by flush); peers are tracked apart, up to a bound.
func TestRefusalSampler(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newRefusalSampler(3)
	type step struct {
		peer       string
		at         time.Duration
		record     bool
		summaryHas string // "" when no summary
	}
	for i, st := range []step{
		{"a", 0, true, ""},
		{"a", time.Second, true, ""},
		{"b", time.Second, true, ""},
		{"a", 2 * time.Second, true, ""},
		{"a", 3 * time.Second, false, ""},
		{"a", 4 * time.Second, false, ""},
		{"a", 61 * time.Second, true, "2 more refusals"},
		{"a", 62 * time.Second, true, ""},
	} {
		rec, sum := s.note(st.peer, "token_invalid", t0.Add(st.at))
		if rec != st.record || (sum != nil) != (st.summaryHas != "") || sum != nil && !strings.Contains(sum.Reason, st.summaryHas) {
			t.Fatalf("step %d %+v: record %v summary %+v", i, st, rec, sum)
		}
	}
	for range 5 {
		s.note("b", "bad_csr", t0.Add(2*time.Second))
	}
	got := s.flush(t0.Add(3 * time.Minute))
	if len(got) != 1 || got[0].Peer != "b" || !strings.Contains(got[0].Reason, "3 more refusals") || !strings.Contains(got[0].Reason, "bad_csr x3") || got[0].Code != "sampled" {
		t.Fatalf("flush: %+v", got)
	}
	if len(s.peers) != 0 {
		t.Fatalf("flush kept %d peers", len(s.peers))
	}

	// Beyond maxSampledPeers, new peers share one entry.
	s = newRefusalSampler(1)
	for i := range maxSampledPeers + 10 {
		s.note(fmt.Sprint("p", i), "token_invalid", t0)
	}
	if len(s.peers) != maxSampledPeers+1 || s.peers[otherPeers] == nil {
		t.Fatalf("%d peers tracked", len(s.peers))
	}
}
