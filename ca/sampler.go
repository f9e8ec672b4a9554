package ca

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
)

// Refusal sampling: an unauthenticated peer decides how many refusals it
// causes, so each peer gets a limited number of audit records (and log
// lines) of its own per refusalWindow (DefaultRefusalsPerMinute); what it causes beyond that is
// counted and written as one summary record when the window closes. At
// most maxSampledPeers peers are tracked; refusals of further peers in a
// window share one entry ("other peers").
const (
	refusalWindow   = time.Minute
	maxSampledPeers = 4096
	otherPeers      = "other peers"
)

// DefaultRefusalsPerMinute is how many refusals of one peer a minute are
// audited one by one (Options.AuditRefusalsPerMinute): enough to see what
// a misconfigured device is doing wrong, few enough that a flood costs a
// few KB a minute.
const DefaultRefusalsPerMinute = 10

type refusalSampler struct {
	perWindow int // < 0: no sampling
	mu        sync.Mutex
	peers     map[string]*peerRefusals
}

type peerRefusals struct {
	start      time.Time
	last       time.Time
	n          int            // refusals in the window
	suppressed map[string]int // by code, beyond refusalsPerWindow
}

func newRefusalSampler(perWindow int) *refusalSampler {
	return &refusalSampler{perWindow: perWindow, peers: make(map[string]*peerRefusals)}
}

// peerIP is the address without the port: a peer's connections differ by
// port only.
func peerIP(remoteAddr string) string {
	if h, _, err := net.SplitHostPort(remoteAddr); err == nil {
		return h
	}
	return remoteAddr
}

// note counts one refusal of peer and reports whether it gets a record of
// its own. A window of peer's that has closed is summarized first.
func (s *refusalSampler) note(peer, code string, now time.Time) (record bool, summary *store.AuditRecord) {
	if s.perWindow < 0 {
		return true, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.peers[peer]
	if p != nil && now.Sub(p.start) >= refusalWindow {
		summary = p.summary(peer, s.perWindow)
		delete(s.peers, peer)
		p = nil
	}
	if p == nil {
		if len(s.peers) >= maxSampledPeers {
			peer = otherPeers
			p = s.peers[peer]
		}
		if p == nil {
			p = &peerRefusals{start: now}
			s.peers[peer] = p
		}
	}
	p.n++
	p.last = now
	if p.n <= s.perWindow {
		return true, summary
	}
	if p.suppressed == nil {
		p.suppressed = make(map[string]int)
	}
	if len(p.suppressed) < 32 { // codes are a fixed set; bound it anyway
		p.suppressed[code]++
	} else {
		p.suppressed["other"]++
	}
	return false, summary
}

// flush summarizes and forgets every window that has closed by now.
func (s *refusalSampler) flush(now time.Time) []store.AuditRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.AuditRecord
	for peer, p := range s.peers {
		if now.Sub(p.start) < refusalWindow {
			continue
		}
		if r := p.summary(peer, s.perWindow); r != nil {
			out = append(out, *r)
		}
		delete(s.peers, peer)
	}
	slices.SortFunc(out, func(a, b store.AuditRecord) int { return strings.Compare(a.Peer, b.Peer) })
	return out
}

// summary is the record of the refusals not recorded one by one, nil if
// there were none.
func (p *peerRefusals) summary(peer string, perWindow int) *store.AuditRecord {
	total := 0
	codes := make([]string, 0, len(p.suppressed))
	for c, n := range p.suppressed {
		total += n
		codes = append(codes, fmt.Sprintf("%s x%d", c, n))
	}
	if total == 0 {
		return nil
	}
	slices.Sort(codes)
	return &store.AuditRecord{
		Time: p.last, Op: "refusals", Peer: peer, Result: store.ResultDenied, Code: "sampled",
		Reason: fmt.Sprintf("%d more refusals between %s and %s not recorded one by one (over %d a minute from one peer): %s",
			total, p.start.UTC().Format(time.RFC3339), p.last.UTC().Format(time.RFC3339), perWindow, strings.Join(codes, ", ")),
	}
}
