package poll

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// recorder is a testing.TB whose Fatalf records instead of ending the
// goroutine, for checking how Until fails.
type recorder struct {
	testing.TB
	failed atomic.Bool
	msg    string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed.Store(true)
	r.msg = format
	for _, a := range args {
		r.msg += " " + toString(a)
	}
}

func toString(a any) string {
	switch v := a.(type) {
	case string:
		return v
	case time.Duration:
		return v.String()
	}
	return "?"
}

func TestUntil(t *testing.T) {
	for _, c := range []struct {
		name     string
		holdsAt  int // the check that first holds; 0: never
		why      string
		wantFail bool
	}{
		{"holds at once", 1, "", false},
		{"holds at the third check", 3, "", false},
		{"never holds", 0, "", true},
		{"never holds, explained", 0, "state=stuck", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{TB: t}
			n := 0
			UntilWhy(r, 200*time.Millisecond, "the thing", func() (bool, string) {
				n++
				return c.holdsAt > 0 && n >= c.holdsAt, c.why
			})
			if r.failed.Load() != c.wantFail {
				t.Fatalf("failed = %v, want %v (%s)", r.failed.Load(), c.wantFail, r.msg)
			}
			if c.wantFail && (!strings.Contains(r.msg, "the thing") || !strings.Contains(r.msg, c.why)) {
				t.Errorf("failure %q does not name what it waited for and why", r.msg)
			}
			if !c.wantFail && n != c.holdsAt {
				t.Errorf("checked %d times, want %d", n, c.holdsAt)
			}
		})
	}
}
