package agent

import "testing"

func TestSpoolHealth(t *testing.T) {
	cases := []struct {
		name string
		ups  map[string]UplinkStatus
		want string
	}{
		{"none", nil, ""},
		{"all storing", map[string]UplinkStatus{"mqtt": {SpoolDepth: 5}, "https": {}}, ""},
		{"one failing", map[string]UplinkStatus{"mqtt": {SpoolError: "cannot store messages since T: no space"}, "https": {}},
			"spool mqtt: cannot store messages since T: no space\n"},
		{"both, in name order", map[string]UplinkStatus{"mqtt": {SpoolError: "b"}, "https": {SpoolError: "a"}},
			"spool https: a\nspool mqtt: b\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := spoolHealth(c.ups); got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}
