package agent

import (
	"context"
	"encoding/json"
	"log/slog"
)

// maxPendingSamples bounds the collector samples kept while the spools
// refuse them (a full disk): at the default interval of a minute, an hour.
const maxPendingSamples = 60

// sampleQueue stores the collector's samples through submit and keeps the
// ones it refused for the next try, oldest first, so the agent retries its
// own writes and the samples of an outage arrive once space returns. It is
// bounded: past maxPendingSamples the oldest is dropped, and counted.
type sampleQueue struct {
	submit  func(context.Context, []json.RawMessage) ([]string, error)
	log     *slog.Logger
	pending []json.RawMessage
	dropped uint64 // samples dropped past the bound, since start
	failing bool   // the last try was refused: log once per outage
}

// add queues one sample and tries to store every pending one, all or none.
func (q *sampleQueue) add(ctx context.Context, sample json.RawMessage) {
	if len(q.pending) == maxPendingSamples {
		q.pending = append(q.pending[:0], q.pending[1:]...)
		q.dropped++
	}
	q.pending = append(q.pending, sample)
	ids, err := q.submit(ctx, q.pending)
	if err != nil {
		if !q.failing {
			q.log.Warn("collector: cannot queue samples; keeping them for the next interval", "err", err, "pending", len(q.pending), "max_pending", maxPendingSamples)
		}
		q.failing = true
		return
	}
	if q.failing {
		q.log.Info("collector: samples queued again", "count", len(ids), "dropped_total", q.dropped)
	}
	if len(ids) > 0 {
		q.log.Debug("collector: sample queued", "id", ids[len(ids)-1])
	}
	q.failing, q.pending = false, q.pending[:0]
}
