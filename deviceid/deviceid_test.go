package deviceid

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		id     string
		ok     bool
		errHas string
	}{
		{"dev-1", true, ""},
		{"a", true, ""},
		{"0", true, ""},
		{"DEVA", true, ""},
		{"sensor.eu_west-1", true, ""},
		{"a..b", true, ""},
		{"a.", true, ""},
		{strings.Repeat("x", 64), true, ""},
		{"", false, "1 to 64"},
		{strings.Repeat("x", 65), false, "1 to 64"},
		{".", false, "start with"},
		{"..", false, "start with"},
		{".hidden", false, "start with"},
		{"-rf", false, "start with"},
		{"--dir", false, "start with"},
		{"_x", false, "start with"},
		{"a/b", false, "only letters"},
		{"dev/../1", false, "only letters"},
		{"a b", false, "only letters"},
		{"a\x1b[31m", false, `\x1b`},
		{"dév", false, "only letters"},
		{"a:b", false, "only letters"},
		{"a*", false, "only letters"},
	} {
		err := Validate(tc.id)
		if (err == nil) != tc.ok || err != nil && !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("Validate(%q) = %v, want ok=%v (%q)", tc.id, err, tc.ok, tc.errHas)
		}
	}
}

func TestCase(t *testing.T) {
	if !Equal("DEVA", "devA") || Canonical("DEVA") != "deva" || Canonical("devA") != "deva" || Equal("dev-a", "dev_a") {
		t.Fatal("case rule")
	}
}

func FuzzValidate(f *testing.F) {
	for _, s := range []string{"dev-1", "..", "-x", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if Validate(s) != nil {
			return
		}
		if s == "." || s == ".." || s[0] == '-' || s[0] == '.' || len(s) > MaxLen || strings.ContainsAny(s, "/\\ \x00\r\n") {
			t.Fatalf("Validate accepted %q", s)
		}
		if Validate(Canonical(s)) != nil || !Equal(s, Canonical(s)) {
			t.Fatalf("canonical form of %q is not valid or not equal", s)
		}
	})
}
