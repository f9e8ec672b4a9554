package main

import "testing"

func TestGCPercent(t *testing.T) {
	for _, c := range []struct {
		env     string
		want    int
		fromEnv bool
	}{
		{"", defaultGCPercent, false},
		{"100", 100, true},
		{"20", 20, true},
		{"off", -1, true},
		{"bogus", 100, true},
	} {
		got, fromEnv := gcPercent(func(k string) string {
			if k == "GOGC" {
				return c.env
			}
			return ""
		})
		if got != c.want || fromEnv != c.fromEnv {
			t.Errorf("GOGC=%q: (%d, %v), want (%d, %v)", c.env, got, fromEnv, c.want, c.fromEnv)
		}
	}
}
