package store

import "testing"

// FuzzParseLabel: no input panics, and what is accepted validates again
// and keeps to the documented alphabet and sizes.
func FuzzParseLabel(f *testing.F) {
	for _, s := range []string{"site=berlin", "a=", "=x", "k-=v", "K=v", "a.b/c=d_e-f", "x=y=z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, v, err := ParseLabel(s)
		if err != nil {
			return
		}
		if err := ValidateLabel(k, v); err != nil {
			t.Fatalf("ParseLabel(%q) accepted %q=%q that ValidateLabel refuses: %v", s, k, v, err)
		}
		if len(k) == 0 || len(k) > MaxLabelKey || len(v) > MaxLabelValue || k+"="+v != s {
			t.Fatalf("ParseLabel(%q) = %q, %q", s, k, v)
		}
	})
}
