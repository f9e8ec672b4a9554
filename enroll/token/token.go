// Package token is the enrollment token format: one copy-pasteable string
// that carries everything a device needs to enroll (the EST server URL, the
// SHA-256 pin of a CA certificate, and HTTP Basic credentials). edgeca prints
// tokens; the agent parses them.
package token

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Prefix starts every token string; the digit is the format version.
const Prefix = "edgetok1."

// MaxLen bounds a token string; real ones are about 250 characters.
const MaxLen = 4096

// MinSecretLen is the shortest secret accepted (22 base64 characters carry
// 128 bits).
const MinSecretLen = 22

// ErrMalformed is wrapped by every Parse error.
var ErrMalformed = errors.New("malformed enrollment token")

// Token is a decoded enrollment token.
type Token struct {
	URL    string `json:"url"`    // EST server base, e.g. https://ca.example:8443
	Pin    Pin    `json:"pin"`    // SHA-256 of a CA certificate in the server's chain
	ID     string `json:"id"`     // HTTP Basic user name
	Secret string `json:"secret"` // HTTP Basic password
	// Expires is when the CA stops accepting the token, in Unix seconds;
	// 0 in tokens made before it was carried. It is informative: the
	// agent says "expired" before it asks the CA, the CA decides from
	// its own record.
	Expires int64 `json:"exp,omitempty"`
}

// ExpiresAt is the token's expiry, zero when the token does not say.
func (t Token) ExpiresAt() time.Time {
	if t.Expires == 0 {
		return time.Time{}
	}
	return time.Unix(t.Expires, 0).UTC()
}

// ExpiredError says a token's own expiry has passed: only the operator can
// help (a new token).
type ExpiredError struct{ At time.Time }

func (e *ExpiredError) Error() string {
	return "this enrollment token expired at " + e.At.Format(time.RFC3339) + "; ask the operator for a new one"
}

// CheckExpiry returns an *ExpiredError when the token says it expired at or
// before now, nil otherwise (also when it does not say).
func (t Token) CheckExpiry(now time.Time) error {
	if at := t.ExpiresAt(); !at.IsZero() && !now.Before(at) {
		return &ExpiredError{At: at}
	}
	return nil
}

// String encodes t as a token string. It does not validate t.
func (t Token) String() string {
	b, _ := json.Marshal(t) // a struct of strings always marshals
	return Prefix + base64.RawURLEncoding.EncodeToString(b)
}

// Redacted returns the token string's identifying part only, safe to log.
func (t Token) Redacted() string { return "token " + t.ID + " for " + t.URL }

// Parse decodes and validates a token string. Surrounding white space (from
// copy and paste) is ignored.
func Parse(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if len(s) > MaxLen {
		return Token{}, fmt.Errorf("%w: %d characters, at most %d", ErrMalformed, len(s), MaxLen)
	}
	if !strings.HasPrefix(s, Prefix) {
		return Token{}, fmt.Errorf("%w: does not start with %q (copy the whole string edgeca printed)", ErrMalformed, Prefix)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s[len(Prefix):], "="))
	if err != nil {
		return Token{}, fmt.Errorf("%w: bad encoding (was it cut short?): %v", ErrMalformed, err)
	}
	var t Token
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return Token{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return Token{}, fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	if err := t.Validate(); err != nil {
		return Token{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return t, nil
}

// Validate checks every field.
func (t Token) Validate() error {
	if err := ValidateURL(t.URL); err != nil {
		return err
	}
	if t.Pin.IsZero() {
		return errors.New("no CA pin")
	}
	if err := ValidateID(t.ID); err != nil {
		return err
	}
	if t.Expires < 0 {
		return fmt.Errorf("expiry %d is negative", t.Expires)
	}
	if len(t.Secret) < MinSecretLen || len(t.Secret) > 256 {
		return fmt.Errorf("secret must be %d to 256 characters, got %d", MinSecretLen, len(t.Secret))
	}
	for _, c := range t.Secret {
		if c <= ' ' || c > '~' {
			return errors.New("secret has a character outside printable ASCII")
		}
	}
	return nil
}

// ValidateURL checks an EST server base URL: https, a host, no user info,
// query or fragment.
func ValidateURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("server URL %q: %v", s, err)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("server URL %q: scheme must be https", s)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("server URL %q: want https://host[:port][/path] with no user, query or fragment", s)
	}
	return nil
}

// ValidateID checks a token id: 1 to 64 of [A-Za-z0-9._-]. It must not
// contain ':' because it is an HTTP Basic user name.
func ValidateID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("token id must be 1 to 64 characters, got %d", len(id))
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("token id %q: only letters, digits, '.', '_' and '-' are allowed", id)
		}
	}
	return nil
}

// Pin is the SHA-256 fingerprint of a certificate's DER encoding, the same
// value `openssl x509 -noout -fingerprint -sha256` prints.
type Pin [sha256.Size]byte

// PinOf returns the pin of cert.
func PinOf(cert *x509.Certificate) Pin { return sha256.Sum256(cert.Raw) }

// ParsePin accepts "sha256:HEX", with or without the prefix, with or without
// colons between bytes, in either case.
func ParsePin(s string) (Pin, error) {
	orig := s
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, ':'); i > 0 && strings.EqualFold(s[:i], "sha256") {
		s = s[i+1:]
	}
	s = strings.ReplaceAll(s, ":", "")
	var p Pin
	if len(s) != 2*len(p) {
		return Pin{}, fmt.Errorf("CA pin %q: want sha256: and 64 hex digits", orig)
	}
	if _, err := hex.Decode(p[:], []byte(s)); err != nil {
		return Pin{}, fmt.Errorf("CA pin %q: %v", orig, err)
	}
	return p, nil
}

// IsZero reports whether p is unset.
func (p Pin) IsZero() bool { return p == Pin{} }

// String returns "sha256:" and lower-case hex.
func (p Pin) String() string { return "sha256:" + hex.EncodeToString(p[:]) }

// Matches reports whether cert has this pin.
func (p Pin) Matches(cert *x509.Certificate) bool { return PinOf(cert) == p }

// MarshalText implements encoding.TextMarshaler.
func (p Pin) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Pin) UnmarshalText(b []byte) error {
	v, err := ParsePin(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}
