package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"testing"
)

// TestSampleQueueRetriesItsOwnWrites: samples refused while the spools
// cannot store are sent, in order and all at once, when they can again;
// past the bound the oldest go first and are counted.
func TestSampleQueueRetriesItsOwnWrites(t *testing.T) {
	cases := []struct {
		name    string
		refuse  int // the first refuse tries fail
		samples int
		stored  []int // sample numbers stored, in order
		dropped uint64
	}{
		{"storing", 0, 3, []int{0, 1, 2}, 0},
		{"refused, then stored", 2, 4, []int{0, 1, 2, 3}, 0},
		{"still refused", 10, 3, nil, 0},
		{"outage past the bound", maxPendingSamples + 5, maxPendingSamples + 6, seq(6, maxPendingSamples+6), 6},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stored []int
			tries := 0
			q := &sampleQueue{log: slog.New(slog.DiscardHandler), submit: func(_ context.Context, msgs []json.RawMessage) ([]string, error) {
				tries++
				if tries <= c.refuse {
					return nil, errors.New("no space left on device")
				}
				ids := make([]string, len(msgs))
				for i, m := range msgs {
					n, _ := strconv.Atoi(string(m))
					stored = append(stored, n)
					ids[i] = string(m)
				}
				return ids, nil
			}}
			for i := range c.samples {
				q.add(t.Context(), json.RawMessage(strconv.Itoa(i)))
			}
			if !slices.Equal(stored, c.stored) {
				t.Errorf("stored %v, want %v", stored, c.stored)
			}
			if q.dropped != c.dropped {
				t.Errorf("dropped %d, want %d", q.dropped, c.dropped)
			}
			if c.refuse < c.samples && len(q.pending) != 0 {
				t.Errorf("%d samples still pending after a stored try", len(q.pending))
			}
		})
	}
}

func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}
