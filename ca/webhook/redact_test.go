package webhook

import "testing"

func TestRedactURL(t *testing.T) {
	cases := []struct{ in, want string }{
		{"https://hooks.example/edgeca", "https://hooks.example/edgeca"},
		{"https://user:pw@hooks.example/in?token=s3cret#frag", "https://hooks.example/in"},
		{"https://hooks.example/in?", "https://hooks.example/in"},
		{"://bad", "(unparsable URL)"},
	}
	for _, c := range cases {
		if got := redactURL(c.in); got != c.want {
			t.Errorf("redactURL(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
