package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// An enrollment token whose own expiry has passed, by the device's clock
// and by the CA's: `edgeagent enroll` says so and exits with the
// needs-the-operator status, having asked the CA only for its time.
func TestEnrollExpiredTokenExit78(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	tok := c.Token(t, "sensor-9")
	at := time.Now().Add(-time.Hour).Truncate(time.Second).UTC()
	tok.Expires = at.Unix() // what the agent reads; the CA keeps its own record
	_, _, err := edgeagent(t, "enroll", "--token", tok.String(), "--state-dir", filepath.Join(t.TempDir(), "state"), "--device-id", "sensor-9")
	if code := exitCode(err); code != exitNeedsOperator {
		t.Fatalf("exit %d (%v), want %d", code, err, exitNeedsOperator)
	}
	if want := "this enrollment token expired at " + at.Format(time.RFC3339) + "; ask the operator for a new one"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want it to say %q", err, want)
	}
}
