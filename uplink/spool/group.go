package spool

import (
	"fmt"
	"sync"
)

// Group appends each batch to several spools (one per uplink) as one
// unit: either every spool keeps the batch or none does, so a message the
// caller was told is refused is never delivered by any uplink. Concurrent
// callers are combined: one of them writes everything queued meanwhile as
// one batch per spool, so they share each spool's write and fsync.
type Group struct {
	names  []string
	spools []*Spool

	mu    sync.Mutex
	queue []*groupReq
	busy  bool
}

type groupReq struct {
	payloads [][]byte
	err      error
	done     chan struct{} // closed when err is set
	lead     chan struct{} // closed when this caller is to write the queue
}

// NewGroup returns a Group over spools, written in the order given; names
// label errors.
func NewGroup(names []string, spools []*Spool) *Group {
	return &Group{names: names, spools: spools}
}

// Append stores payloads in every spool, or in none: the error says which
// spool failed and wraps its cause (ErrWrite, ErrTooLarge, ErrClosed).
func (g *Group) Append(payloads [][]byte) error {
	for _, p := range payloads {
		if len(p) > MaxRecordBytes {
			return fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(p), MaxRecordBytes)
		}
	}
	req := &groupReq{payloads: payloads, done: make(chan struct{}), lead: make(chan struct{})}
	g.mu.Lock()
	g.queue = append(g.queue, req)
	if !g.busy {
		g.busy = true
		g.mu.Unlock()
		g.writeQueued()
	} else {
		g.mu.Unlock()
		select {
		case <-req.done:
		case <-req.lead:
			g.writeQueued()
		}
	}
	<-req.done
	return req.err
}

// writeQueued writes everything queued, then hands the writer's role to
// the first caller that queued meanwhile (so no caller writes for others
// for ever).
func (g *Group) writeQueued() {
	g.mu.Lock()
	reqs := g.queue
	g.queue = nil
	g.mu.Unlock()
	err := g.write(reqs)
	for _, r := range reqs {
		r.err = err
		close(r.done)
	}
	g.mu.Lock()
	if len(g.queue) > 0 {
		close(g.queue[0].lead)
	} else {
		g.busy = false
	}
	g.mu.Unlock()
}

func (g *Group) write(reqs []*groupReq) error {
	var all [][]byte
	if len(reqs) == 1 {
		all = reqs[0].payloads
	} else {
		for _, r := range reqs {
			all = append(all, r.payloads...)
		}
	}
	pending := make([]*Pending, 0, len(g.spools))
	for i, s := range g.spools {
		p, err := s.Prepare(all)
		if err != nil {
			for _, q := range pending {
				q.Abort() // counts the batch refused
			}
			for _, later := range g.spools[i+1:] {
				later.countRefused(len(all)) // refused for every uplink alike
			}
			return fmt.Errorf("spool %s: %w", g.names[i], err)
		}
		pending = append(pending, p)
	}
	for _, p := range pending {
		p.Commit()
	}
	return nil
}
