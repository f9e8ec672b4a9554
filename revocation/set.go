package revocation

import (
	"crypto/x509"
	"encoding/hex"
	"sync"
	"time"
)

// Set is the revoked serials an enforcement point knows, safe for
// concurrent use.
type Set struct {
	mu      sync.RWMutex
	serials map[string]Event
	cursor  int64
}

// NewSet returns an empty set.
func NewSet() *Set { return &Set{serials: map[string]Event{}} }

// SerialHex formats a certificate serial as the feed does.
func SerialHex(c *x509.Certificate) string { return hex.EncodeToString(c.SerialNumber.Bytes()) }

// Revoked reports whether the certificate is revoked.
func (s *Set) Revoked(c *x509.Certificate) bool {
	return s.RevokedSerial(SerialHex(c))
}

// RevokedSerial reports whether a serial (lower-case hex) is revoked.
func (s *Set) RevokedSerial(serial string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.serials[serial]
	return ok
}

// Cursor is the feed position the set is current to.
func (s *Set) Cursor() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cursor
}

// Apply applies one page and returns the events that revoked something
// new (what to cut off).
func (s *Set) Apply(p Page) []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var added []Event
	for _, e := range p.Events {
		if e.Seq <= s.cursor {
			continue
		}
		switch e.Kind {
		case KindRevoke:
			if _, ok := s.serials[e.Serial]; !ok {
				added = append(added, e)
			}
			s.serials[e.Serial] = e
		case KindUnrevoke:
			delete(s.serials, e.Serial)
		}
	}
	if p.Cursor > s.cursor {
		s.cursor = p.Cursor
	}
	return added
}

// Prune forgets serials whose certificates expired before now: they are
// refused as expired anyway.
func (s *Set) Prune(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, e := range s.serials {
		if !e.NotAfter.IsZero() && e.NotAfter.Before(now) {
			delete(s.serials, k)
		}
	}
}

// Len is the number of revoked serials.
func (s *Set) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.serials)
}
