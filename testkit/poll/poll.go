// Package poll waits in tests for a condition with a deadline, never with
// a sleep: the one polling loop of the test suites (the agent's, the
// uplinks', the end-to-end and the packaging tests call it directly; only
// the interop modules, which do not require this module, keep their own).
package poll

import (
	"testing"
	"time"
)

// Interval is how often a condition is checked.
const Interval = 20 * time.Millisecond

// Until checks cond every Interval until it holds; past within it fails
// the test, naming what it waited for.
func Until(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	UntilWhy(t, within, what, func() (bool, string) { return cond(), "" })
}

// UntilWhy is Until for a condition that explains itself: the failure
// carries the explanation of the last check (a state, a log tail).
func UntilWhy(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if why != "" {
				t.Fatalf("timed out after %v waiting for %s:\n%s", within, what, why)
				return
			}
			t.Fatalf("timed out after %v waiting for %s", within, what)
			return // Fatalf returns only for a testing.TB that records
		}
		<-tick.C
	}
}
