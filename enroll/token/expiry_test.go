package token

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// oldFormat is a token string as edgeca printed it before tokens carried
// their expiry: it must keep parsing, with no expiry.
func TestOldTokenWithoutExpiryParses(t *testing.T) {
	tok := sample()
	old := tok.String() // Expires 0 is omitted: the old wire form
	if strings.Contains(old, "exp") {
		t.Fatal("test premise: base64 should hide field names")
	}
	got, err := Parse(old)
	if err != nil {
		t.Fatal(err)
	}
	if !got.ExpiresAt().IsZero() || got.CheckExpiry(time.Now()) != nil {
		t.Fatalf("an old token has no expiry, got %v", got.ExpiresAt())
	}
}

func TestExpiryRoundTripAndCheck(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tok := sample()
	tok.Expires = at.Unix()
	got, err := Parse(tok.String())
	if err != nil {
		t.Fatal(err)
	}
	if !got.ExpiresAt().Equal(at) {
		t.Fatalf("expiry %v, want %v", got.ExpiresAt(), at)
	}
	cases := []struct {
		name    string
		now     time.Time
		expired bool
	}{
		{"before", at.Add(-time.Second), false},
		{"at", at, true},
		{"after", at.Add(time.Hour), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := got.CheckExpiry(c.now)
			var ee *ExpiredError
			if errors.As(err, &ee) != c.expired {
				t.Fatalf("CheckExpiry(%v) = %v, expired want %v", c.now, err, c.expired)
			}
			if c.expired && !strings.Contains(err.Error(), "expired at 2026-03-01T12:00:00Z; ask the operator for a new one") {
				t.Fatalf("message %q", err)
			}
		})
	}
	neg := sample()
	neg.Expires = -1
	if _, err := Parse(neg.String()); !errors.Is(err, ErrMalformed) {
		t.Fatalf("negative expiry: %v", err)
	}
}
