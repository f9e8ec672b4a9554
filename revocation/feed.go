// Package revocation is the enforcement side of edgeca's revocation: the
// feed's wire format, a Set of revoked serials that a Follower keeps current
// from the feed, and (in httpsguard and mosquittosync) what HTTPS backends
// and mosquitto do with it.
package revocation

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// FeedPath is the revocation feed on edgeca's EST port (TLS, with an
// enforcer client certificate): GET FeedPath?since=CURSOR&wait=SECONDS
// answers the events after CURSOR as soon as there is one, or an empty list
// after wait seconds (a long poll).
const FeedPath = "/revocations"

// MaxWait is the longest long poll the CA holds open.
const MaxWait = 25 * time.Second

// MaxEvents bounds the events of one answer; a follower behind by more asks
// again at once.
const MaxEvents = 1000

// EnforcerURIPrefix starts the SAN URI of an enforcer certificate, the
// client certificate edgeca issues to a broker or gateway that follows the
// feed.
const EnforcerURIPrefix = "urn:edgeagent:enforcer:"

// Event kinds.
const (
	KindRevoke   = "revoke"
	KindUnrevoke = "unrevoke"
)

// Event is one change to the revoked set.
type Event struct {
	Seq      int64     `json:"seq"`
	Kind     string    `json:"kind"`   // KindRevoke or KindUnrevoke
	Serial   string    `json:"serial"` // lower-case hex, as edgeca prints it
	Device   string    `json:"device"`
	NotAfter time.Time `json:"not_after"`
	At       time.Time `json:"at"`
	Reason   int       `json:"reason"` // RFC 5280 CRLReason
}

// Page is one answer of the feed. Cursor is what to send as since next.
type Page struct {
	Cursor int64   `json:"cursor"`
	Events []Event `json:"events"`
}

// maxPageBytes bounds an answer the follower reads.
const maxPageBytes = 4 << 20

// DecodePage reads and checks one feed answer.
func DecodePage(r io.Reader) (Page, error) {
	var p Page
	dec := json.NewDecoder(io.LimitReader(r, maxPageBytes))
	if err := dec.Decode(&p); err != nil {
		return Page{}, fmt.Errorf("decode revocation feed: %w", err)
	}
	if len(p.Events) > MaxEvents {
		return Page{}, fmt.Errorf("decode revocation feed: %d events, more than %d", len(p.Events), MaxEvents)
	}
	prev := int64(-1)
	for _, e := range p.Events {
		if e.Kind != KindRevoke && e.Kind != KindUnrevoke {
			return Page{}, fmt.Errorf("decode revocation feed: event %d: unknown kind %q", e.Seq, e.Kind)
		}
		if err := validSerial(e.Serial); err != nil {
			return Page{}, fmt.Errorf("decode revocation feed: event %d: %w", e.Seq, err)
		}
		if e.Seq <= prev || e.Seq > p.Cursor {
			return Page{}, errors.New("decode revocation feed: events out of order or past the cursor")
		}
		prev = e.Seq
	}
	return p, nil
}

func validSerial(s string) error {
	if s == "" || len(s) > 42 {
		return fmt.Errorf("serial %q: want 1 to 42 hex digits", s)
	}
	if strings.Trim(s, "0123456789abcdef") != "" {
		return fmt.Errorf("serial %q: want lower-case hex", s)
	}
	return nil
}
