package ca

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
)

// ShedOptions bound how long an enrollment may wait for the CPU and the
// store before the CA refuses it with 503 + Retry-After (load shedding):
// a CA back after an outage meets the whole fleet at once, and answering
// everyone late (past their timeouts, so they retry and add load) serves
// fewer than answering some now and telling the rest when to come back.
type ShedOptions struct {
	// Off turns shedding off: every request waits its turn (the
	// in-flight bound still holds).
	Off bool
	// Workers is how many enrollments are checked, signed and recorded
	// at once: 4 × GOMAXPROCS when zero (signing is CPU, recording is a
	// wait on the store).
	Workers int
	// MaxWait is the longest an enrollment waits for a worker before it
	// is shed: DefaultShedMaxWait when zero. It is the latency bound the
	// CA keeps for the requests it accepts, beyond their own work.
	MaxWait time.Duration
	// RetrySpread: a shed request's Retry-After is drawn uniformly from
	// [shedRetryMin, shedRetryMin+RetrySpread), DefaultShedRetrySpread
	// when zero, so that the shed part of the fleet comes back spread
	// out instead of in the next wave.
	RetrySpread time.Duration
}

// Shedding defaults.
const (
	DefaultShedMaxWait     = 500 * time.Millisecond
	DefaultShedRetrySpread = 30 * time.Second
	shedRetryMin           = 1 * time.Second
)

// gate admits enrollments to a bounded number of workers.
type gate struct {
	slots       chan struct{}
	off         bool
	maxWait     time.Duration
	retrySpread time.Duration
	shed        atomic.Int64 // requests shed since start
}

func newGate(o ShedOptions) *gate {
	if o.Workers <= 0 {
		o.Workers = 4 * runtime.GOMAXPROCS(0)
	}
	if o.MaxWait <= 0 {
		o.MaxWait = DefaultShedMaxWait
	}
	if o.RetrySpread <= 0 {
		o.RetrySpread = DefaultShedRetrySpread
	}
	return &gate{slots: make(chan struct{}, o.Workers), off: o.Off, maxWait: o.MaxWait, retrySpread: o.RetrySpread}
}

// admit waits for a worker, at most maxWait unless shedding is off. It
// returns the release func, or the 503 to answer.
func (g *gate) admit(ctx context.Context, jitter float64) (release func(), _ *Error) {
	release = func() { <-g.slots }
	select {
	case g.slots <- struct{}{}:
		return release, nil
	default:
	}
	var timeout <-chan time.Time
	if !g.off {
		t := time.NewTimer(g.maxWait)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case g.slots <- struct{}{}:
		return release, nil
	case <-timeout:
		g.shed.Add(1)
		return nil, g.shedError(jitter)
	case <-ctx.Done():
		return nil, &Error{Status: http.StatusServiceUnavailable, Code: est.CodeUnavailable, Msg: "the request ended while waiting", Reason: ctx.Err().Error()}
	}
}

func (g *gate) shedError(jitter float64) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: est.CodeUnavailable,
		Msg:        "the CA is at capacity: retry after the time in Retry-After",
		Reason:     fmt.Sprintf("shed: no worker free within %s", g.maxWait),
		RetryAfter: shedRetryMin + time.Duration(jitter*float64(g.retrySpread))}
}

// Shed returns how many enrollments the CA has shed since it opened.
func (c *CA) Shed() int64 { return c.gate.shed.Load() }
