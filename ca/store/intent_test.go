package store

import (
	"testing"
	"time"
)

// TestDecideTokenEnrollment is the token enrollment rule as a table (the
// same-key retry is TestEnrollReplay's, in package ca, and the
// conformance suite's).
func TestDecideTokenEnrollment(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	secret := [32]byte{7}
	tok := func(mod func(*Token)) *Token {
		tk := &Token{ID: "t", SecretHash: secret, MaxUses: 2, ExpiresAt: now.Add(time.Hour)}
		if mod != nil {
			mod(tk)
		}
		return tk
	}
	active := &Device{ID: "pump-1", Status: StatusActive, Serial: "aa"}
	revoked := &Device{ID: "pump-1", Status: StatusRevoked, Serial: "aa"}
	for _, tc := range []struct {
		name   string
		tok    *Token
		dev    *Device
		secret [32]byte
		id     string
		want   RefusalKind // 0: issue
	}{
		{"open token, new device", tok(nil), nil, secret, "pump-1", 0},
		{"unknown token", nil, nil, secret, "pump-1", RefuseTokenUnknown},
		{"wrong secret", tok(nil), nil, [32]byte{8}, "pump-1", RefuseTokenSecret},
		{"revoked", tok(func(t *Token) { t.RevokedAt = now }), nil, secret, "pump-1", RefuseTokenRevoked},
		{"expired", tok(func(t *Token) { t.ExpiresAt = now }), nil, secret, "pump-1", RefuseTokenExpired},
		{"used up", tok(func(t *Token) { t.Uses = 2 }), nil, secret, "pump-1", RefuseTokenUsedUp},
		{"bound to it", tok(func(t *Token) { t.Device = "pump-1" }), nil, secret, "pump-1", 0},
		{"bound to it, other case", tok(func(t *Token) { t.Device = "pump-1" }), nil, secret, "PUMP-1", 0},
		{"bound to another", tok(func(t *Token) { t.Device = "pump-2" }), nil, secret, "pump-1", RefuseTokenDevice},
		{"pattern matches", tok(func(t *Token) { t.Pattern = "pump-*" }), nil, secret, "pump-1", 0},
		{"pattern does not", tok(func(t *Token) { t.Pattern = "fan-*" }), nil, secret, "pump-1", RefuseTokenPattern},
		{"re-enroll with its own token", tok(func(t *Token) { t.Device = "pump-1" }), active, secret, "pump-1", 0},
		{"claim token for an enrolled id", tok(nil), active, secret, "pump-1", RefuseDeviceEnrolled},
		{"pattern token for an enrolled id", tok(func(t *Token) { t.Pattern = "pump-*" }), active, secret, "pump-1", RefuseDeviceEnrolled},
		{"revoked device, its own token", tok(func(t *Token) { t.Device = "pump-1" }), revoked, secret, "pump-1", RefuseDeviceRevoked},
		{"token checks come before the device", tok(func(t *Token) { t.Uses = 2 }), revoked, secret, "pump-1", RefuseTokenUsedUp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			replay, r := DecideTokenEnrollment(tc.tok, tc.dev, tc.secret, tc.id, [32]byte{1}, now)
			if replay {
				t.Fatal("replayed a request with no certificate on record")
			}
			var got RefusalKind
			if r != nil {
				got = r.Kind
			}
			if got != tc.want {
				t.Fatalf("refusal %v (%v), want %v", got, r, tc.want)
			}
		})
	}
}

func TestDecideRecovery(t *testing.T) {
	for _, tc := range []struct {
		name string
		dev  *Device
		want RefusalKind
	}{
		{"enrolled", &Device{Status: StatusActive}, 0},
		{"unknown", nil, RefuseDeviceUnknown},
		{"revoked", &Device{Status: StatusRevoked}, RefuseDeviceRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got RefusalKind
			if r := DecideRecovery(tc.dev); r != nil {
				got = r.Kind
			}
			if got != tc.want {
				t.Fatalf("refusal %v, want %v", got, tc.want)
			}
		})
	}
}
