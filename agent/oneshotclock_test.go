package agent

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/keystore/file"
	"github.com/edgeagent/edgeagent/testkit/syncbuf"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestOneShotEnrollRenewIn1970: `edgeagent enroll` and `renew` on a board
// that booted in 1970 (no RTC) against a real CA. Without the correction
// the pinned handshake fails (the CA's certificates are not yet valid);
// with it both run on the CA's time and the identity records that time.
func TestOneShotEnrollRenewIn1970(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	boot := time.Now()
	device := func() time.Time { return time.Unix(0, 0).Add(time.Since(boot)) }
	build := boot.Add(-24 * time.Hour)
	dir := filepath.Join(t.TempDir(), "state")
	ks, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	near := func(what string, got time.Time) {
		t.Helper()
		if d := time.Since(got); d < -5*time.Second || d > 5*time.Second {
			t.Errorf("%s = %s, want about now (%s)", what, got.UTC().Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339))
		}
	}

	tok := c.Token(t, "rtc-less")
	_, err = Enroll(ctx, EnrollOptions{StateDir: dir, DeviceID: "rtc-less", Keystore: ks, Token: &tok, Timeout: 5 * time.Second,
		Now: device, BuildTime: build})
	if err == nil || !strings.Contains(err.Error(), "not yet valid") {
		t.Fatalf("enroll in 1970 without the correction: %v, want a certificate validity error", err)
	}

	// The floor holds: a CA whose time is before this agent's build (here
	// an hour from now) is not believed.
	_, err = Enroll(ctx, EnrollOptions{StateDir: dir, DeviceID: "rtc-less", Keystore: ks, Token: &tok, Timeout: 5 * time.Second,
		Now: device, CorrectClock: true, BuildTime: time.Now().Add(time.Hour)})
	if err == nil || !strings.Contains(err.Error(), "refusing an implausible time") {
		t.Fatalf("enroll with the CA's time before the build time: %v, want it refused", err)
	}

	var logs syncbuf.Buffer
	id, err := Enroll(ctx, EnrollOptions{StateDir: dir, DeviceID: "rtc-less", Keystore: ks, Token: &tok, Timeout: 5 * time.Second,
		Now: device, CorrectClock: true, BuildTime: build, Logger: newTestLogger(&logs)})
	if err != nil {
		t.Fatalf("enroll in 1970 with the correction: %v\n%s", err, logs.String())
	}
	near("enrolled_at", id.EnrolledAt)
	if !strings.Contains(logs.String(), "system clock is implausible") {
		t.Errorf("no warning about the clock in the log:\n%s", logs.String())
	}

	// Renew: the floor is now also the certificate and when it was
	// obtained, so a zero build time (a dev build) still triggers it.
	if _, err := Renew(ctx, RenewOptions{StateDir: dir, Keystore: ks, Timeout: 5 * time.Second, Now: device}); err == nil || !strings.Contains(err.Error(), "not yet valid") {
		t.Fatalf("renew in 1970 without the correction: %v, want a certificate validity error", err)
	}
	renewed, err := Renew(ctx, RenewOptions{StateDir: dir, Keystore: ks, Timeout: 5 * time.Second, Now: device, CorrectClock: true})
	if err != nil {
		t.Fatalf("renew in 1970 with the correction: %v", err)
	}
	near("renewed_at", renewed.Obtained())
	if renewed.Leaf().SerialNumber.Cmp(id.Leaf().SerialNumber) == 0 {
		t.Error("renewal kept the serial")
	}

	// Enrolling again (--force) in 1970 with a dev build (no build time):
	// the identity being replaced sets the floor, so the clock is still
	// found implausible and corrected.
	var again syncbuf.Buffer
	tok2 := c.Token(t, "rtc-less")
	if _, err := Enroll(ctx, EnrollOptions{StateDir: dir, DeviceID: "rtc-less", Keystore: ks, Token: &tok2, Timeout: 5 * time.Second,
		Force: true, Now: device, CorrectClock: true, Logger: newTestLogger(&again)}); err != nil {
		t.Fatalf("enroll --force in 1970: %v\n%s", err, again.String())
	}
	if !strings.Contains(again.String(), "before the certificate became valid") {
		t.Errorf("enroll --force: the replaced identity did not set the floor:\n%s", again.String())
	}

	// A plausible clock is used as it is: no CA time is asked for.
	var plain syncbuf.Buffer
	if _, err := Renew(ctx, RenewOptions{StateDir: dir, Keystore: ks, Timeout: 5 * time.Second, CorrectClock: true, BuildTime: build,
		Logger: newTestLogger(&plain)}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(plain.String(), "implausible") {
		t.Errorf("plausible clock was corrected:\n%s", plain.String())
	}
}
