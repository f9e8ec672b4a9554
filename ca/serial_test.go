package ca

import "testing"

func TestNormalSerial(t *testing.T) {
	cases := []struct {
		in, want string
		ok       bool
	}{
		{"0a1b", "0a1b", true},
		{"A1B", "0a1b", true}, // odd length: Go's Text(16) of 0x0a1b
		{"0x0A:1B", "0a1b", true},
		{" 000a1b ", "0a1b", true},
		{"7fffffffffffffffffffffffffffffffffffffff", "7fffffffffffffffffffffffffffffffffffffff", true},
		{"01" + "0000000000000000000000000000000000000000", "", false}, // 21 bytes
		{"", "", false},
		{"0", "", false},
		{"xyz", "", false},
		{"-1", "", false},
		{"1_0", "", false},
	}
	for _, c := range cases {
		got, err := normalSerial(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("normalSerial(%q) = %q, %v; want %q ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}
