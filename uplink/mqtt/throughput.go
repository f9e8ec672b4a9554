package mqtt

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Throughput measures the uplink end to end for `make bench`: it appends
// n messages of a typical telemetry size to o.Spool (which should be
// empty) while a Publisher built from o sends them, and returns messages
// per second from the first append until the broker acknowledged the last
// one. Appends and publishing overlap, as they do in the agent.
func Throughput(ctx context.Context, o Options, n int) (msgsPerSec float64, err error) {
	if n <= 0 {
		return 0, errors.New("mqtt throughput: n must be positive")
	}
	p, err := New(o)
	if err != nil {
		return 0, err
	}
	sp := o.Spool
	base := sp.Stats().Acked
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	defer func() {
		cancel()
		if rerr := <-runErr; rerr != nil && err == nil {
			err = rerr
		}
	}()
	start := time.Now()
	const batch = 100
	appendErr := make(chan error, 1)
	go func() {
		var recs [][]byte
		for i := 0; i < n; i++ {
			recs = append(recs, fmt.Appendf(nil, `{"id":"%s-%08d","device_id":%q,"time":%q,"data":{"temp_c":21.5,"seq":%d}}`,
				o.ClientID, i, o.ClientID, start.UTC().Format(time.RFC3339Nano), i))
			if len(recs) == batch || i == n-1 {
				if _, err := sp.AppendBatch(recs); err != nil {
					appendErr <- fmt.Errorf("mqtt throughput: append: %w", err)
					return
				}
				recs = recs[:0]
			}
		}
		appendErr <- nil
	}()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for sp.Stats().Acked-base < uint64(n) {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("mqtt throughput: %d of %d acknowledged: %w (last error: %s)", sp.Stats().Acked-base, n, ctx.Err(), p.LastError())
		case err := <-appendErr:
			if err != nil {
				return 0, err
			}
			appendErr = nil
		case <-tick.C:
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
