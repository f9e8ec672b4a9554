// Package deviceid is the one grammar of device ids, shared by the agent
// (its configuration and CSRs), edgeca (CSRs, certificates, tokens, the
// registry) and edgeca's command line.
//
// A device id is 1 to 64 characters of ASCII letters, digits, '.', '_' and
// '-', starting with a letter or a digit. So it is never "." or "..", never
// a hidden file name, never read as a command line flag, and it is safe in
// a certificate CN, a URI, an MQTT user name and a file name.
//
// Case: device ids are case-insensitive. "DEVA" and "devA" name the same
// device: edgeca keys its registry, token bindings and patterns by
// Canonical (lower case), so a second device cannot enroll under a
// spelling that differs in case only. The spelling a device enrolled with
// is kept in its certificates, so an agent configured "DEVA" keeps seeing
// "DEVA".
package deviceid

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxLen is the longest device id.
const MaxLen = 64

// Validate checks id against the grammar. The error says what is wrong.
func Validate(id string) error {
	if id == "" || len(id) > MaxLen {
		return fmt.Errorf("device id must be 1 to %d characters, got %d", MaxLen, len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		switch {
		case i == 0 && !alnum:
			return fmt.Errorf("device id %s must start with a letter or a digit", quote(id))
		case !alnum && c != '.' && c != '_' && c != '-':
			return fmt.Errorf("device id %s: only letters, digits, '.', '_' and '-' are allowed", quote(id))
		}
	}
	return nil
}

// Canonical is the form device ids are compared and stored by: lower case.
// It does not validate.
func Canonical(id string) string { return strings.ToLower(id) }

// Equal reports whether a and b name the same device.
func Equal(a, b string) bool { return strings.EqualFold(a, b) }

// quote bounds and escapes an id quoted in an error.
func quote(s string) string {
	if len(s) > MaxLen {
		s = s[:MaxLen] + "..."
	}
	return strconv.QuoteToASCII(s)
}
