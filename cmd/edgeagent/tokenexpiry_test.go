package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll/token"
)

// An enrollment token whose own expiry has passed: `edgeagent enroll` says
// so and exits with the needs-the-operator status, without a CA to ask
// (the URL names a port nobody listens on).
func TestEnrollExpiredTokenExit78(t *testing.T) {
	pin, _ := token.ParsePin("sha256:" + strings.Repeat("cd", 32))
	at := time.Now().Add(-time.Hour).Truncate(time.Second).UTC()
	tok := token.Token{URL: "https://127.0.0.1:1", Pin: pin, ID: "t-expired", Secret: strings.Repeat("x", 32), Expires: at.Unix()}
	_, _, err := edgeagent(t, "enroll", "--token", tok.String(), "--state-dir", filepath.Join(t.TempDir(), "state"), "--device-id", "sensor-9")
	if code := exitCode(err); code != exitNeedsOperator {
		t.Fatalf("exit %d (%v), want %d", code, err, exitNeedsOperator)
	}
	if want := "this enrollment token expired at " + at.Format(time.RFC3339) + "; ask the operator for a new one"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want it to say %q", err, want)
	}
}
