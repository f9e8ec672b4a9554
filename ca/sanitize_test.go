package ca

import (
	"strings"
	"testing"
)

func TestPrintable(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		max      int
	}{
		{"dev-1", "dev-1", 64},
		{"", "", 64},
		{"a\x1b[31mRED", `a\x1b[31mRED`, 64},
		{"x\r\n2026-12-01T00:00:00Z simpleenroll ok", `x\r\n2026-12-01T00:00:00Z simpleenroll ok`, 64},
		{`back\slash`, `back\slash`, 64},
		{"bad \xff utf8", `bad \xff utf8`, 64},
		{"tab\there", `tab\there`, 64},
		{"del\x7f", `del\x7f`, 64},
		{"bidi \u202e override", `bidi \u202e override`, 64},
		{"héllo", "héllo", 64},
		{strings.Repeat("a", 100), strings.Repeat("a", 10) + "...(100 bytes)", 10},
		{strings.Repeat("\n", 100), strings.Repeat(`\n`, 5) + "...(100 bytes)", 10},
	} {
		got := Printable(tc.in, tc.max)
		if got != tc.want {
			t.Errorf("Printable(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
		if strings.ContainsAny(got, "\x1b\r\n\x7f") {
			t.Errorf("Printable(%q) = %q keeps a control character", tc.in, got)
		}
	}
}

func FuzzPrintable(f *testing.F) {
	f.Add("a\x1b[31m\r\n\xff\\", 16)
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 0 || max > 1<<16 {
			return
		}
		got := Printable(s, max)
		if again := Printable(got, len(got)); again != got {
			t.Fatalf("Printable is not idempotent: %q then %q", got, again)
		}
		for _, c := range []byte(got) {
			if c < 0x20 || c == 0x7f {
				t.Fatalf("Printable(%q) = %q keeps byte %#x", s, got, c)
			}
		}
		if len(got) > max+len("...(")+20+len(" bytes)") {
			t.Fatalf("Printable(%q, %d) is %d bytes", s, max, len(got))
		}
	})
}
