package token

import (
	"errors"
	"strings"
	"testing"
)

func sample() Token {
	p, _ := ParsePin("sha256:" + strings.Repeat("ab", 32))
	return Token{URL: "https://ca.example:8443", Pin: p, ID: "t-0123456789abcdef", Secret: "abcdefghijklmnopqrstuvwxyz012345"}
}

func TestRoundTrip(t *testing.T) {
	tok := sample()
	got, err := Parse("  " + tok.String() + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if got != tok {
		t.Fatalf("got %+v, want %+v", got, tok)
	}
	if strings.Contains(tok.Redacted(), tok.Secret) {
		t.Fatal("Redacted leaks the secret")
	}
}

func TestParseRejects(t *testing.T) {
	mod := func(f func(*Token)) string { tk := sample(); f(&tk); return tk.String() }
	cases := map[string]string{
		"empty":         "",
		"wrong prefix":  "edgetok2." + sample().String()[len(Prefix):],
		"cut short":     sample().String()[:40],
		"bad base64":    Prefix + "!!!",
		"not json":      Prefix + "aGVsbG8",
		"http url":      mod(func(t *Token) { t.URL = "http://ca:80" }),
		"no host":       mod(func(t *Token) { t.URL = "https://" }),
		"user in url":   mod(func(t *Token) { t.URL = "https://u:p@ca" }),
		"no pin":        mod(func(t *Token) { t.Pin = Pin{} }),
		"colon id":      mod(func(t *Token) { t.ID = "a:b" }),
		"empty id":      mod(func(t *Token) { t.ID = "" }),
		"short secret":  mod(func(t *Token) { t.Secret = "short" }),
		"space secret":  mod(func(t *Token) { t.Secret = strings.Repeat("a", 22) + " b" }),
		"too long":      Prefix + strings.Repeat("A", MaxLen),
		"unknown field": Prefix + "eyJ1cmwiOiJodHRwczovL2EiLCJ4Ijp0cnVlfQ",
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse(in); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestParsePin(t *testing.T) {
	hex := strings.Repeat("0f", 32)
	colons := strings.TrimSuffix(strings.Repeat("0F:", 32), ":")
	for _, in := range []string{"sha256:" + hex, hex, "SHA256:" + colons, colons, " sha256:" + strings.ToUpper(hex) + " "} {
		p, err := ParsePin(in)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if p.String() != "sha256:"+hex {
			t.Fatalf("%q: got %s", in, p)
		}
	}
	for _, in := range []string{"", "sha256:", "sha1:" + hex, hex[:62], hex + "00", strings.Repeat("zz", 32)} {
		if _, err := ParsePin(in); err == nil {
			t.Fatalf("%q: want error", in)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sample().String())
	f.Add(Prefix)
	f.Add(Prefix + "e30")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			return
		}
		if err := tok.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid token: %v", err)
		}
		again, err := Parse(tok.String())
		if err != nil || again != tok {
			t.Fatalf("re-encode mismatch: %v", err)
		}
	})
}
