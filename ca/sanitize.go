package ca

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Bounds on client-supplied strings kept in the audit log and the server
// log.
const (
	maxFieldLen  = 128 // token id, device id, peer
	maxReasonLen = 512
)

// Printable returns s safe to store and to print on one line: every byte
// that is not printable UTF-8 (ESC, CR, LF, other controls, invalid
// encodings) is written as a Go escape (\x1b, \r, \n), so no client
// string can forge a line or a terminal sequence in `edgeca audit`; and it
// is cut to at most max bytes of output, saying how long it was. A
// backslash stays as it is, so that cleaning twice changes nothing: a
// client can write a literal "\n", never a line break.
func Printable(s string, max int) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c >= 0x80 {
			clean = false
			break
		}
	}
	if clean && len(s) <= max {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case r == utf8.RuneError && n <= 1:
			piece = fmt.Sprintf(`\x%02x`, s[i])
		case r == '\n':
			piece = `\n`
		case r == '\r':
			piece = `\r`
		case r == '\t':
			piece = `\t`
		case r < 0x80 && !unicode.IsPrint(r):
			piece = fmt.Sprintf(`\x%02x`, r)
		case !unicode.IsPrint(r):
			piece = fmt.Sprintf(`\u%04x`, r)
		default:
			piece = s[i : i+n]
		}
		if b.Len()+len(piece) > max {
			fmt.Fprintf(&b, "...(%d bytes)", len(s))
			break
		}
		b.WriteString(piece)
		i += n
	}
	return b.String()
}
