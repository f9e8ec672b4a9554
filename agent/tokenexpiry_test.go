package agent

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/keystore/file"
	"github.com/edgeagent/edgeagent/testkit/syncbuf"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// The token's expiry is the CA's: one that has passed by the device's clock
// is checked against the CA's time (GET cacerts, no credentials) before
// its credentials are sent. Expired by both clocks, it needs the operator
// (exit 78) and the CA records no enrollment; expired only by a device
// clock that runs ahead, it enrolls.
func TestEnrollTokenExpiryByTheCAsClock(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{CertTTL: 24 * time.Hour})
	ctx := context.Background()
	enrollWith := func(t *testing.T, tok token.Token, device func() time.Time, logs *syncbuf.Buffer) (*Identity, error) {
		t.Helper()
		dir := filepath.Join(t.TempDir(), "state")
		ks, err := file.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		return Enroll(ctx, EnrollOptions{StateDir: dir, DeviceID: "sensor-1", Keystore: ks, Token: &tok,
			Timeout: 5 * time.Second, Now: device, Logger: newTestLogger(logs)})
	}

	t.Run("expired by both clocks", func(t *testing.T) {
		tok, _, err := c.CreateToken(ctx, ca.TokenOptions{URL: c.URL, Device: "sensor-1", TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		// The token says it ran out a minute ago (the CA's record is
		// what the CA goes by; the agent reads the token's own field).
		expiry := time.Now().Add(-time.Minute).Truncate(time.Second).UTC()
		tok.Expires = expiry.Unix()
		var logs syncbuf.Buffer
		_, err = enrollWith(t, tok, time.Now, &logs)
		if !errors.Is(err, ErrNeedsOperator) {
			t.Fatalf("err = %v, want ErrNeedsOperator\n%s", err, logs.String())
		}
		if want := "this enrollment token expired at " + expiry.Format(time.RFC3339) + "; ask the operator for a new one (by the CA's clock too: "; !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %q, want it to say %q", err, want)
		}
		recs, err := c.CA.Audit(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.TokenID == tok.ID {
				t.Fatalf("the CA recorded %s for the expired token: its credentials were sent", r.Op)
			}
		}
	})

	// Ahead by less and by more than the certificate's 24 hours: beyond
	// them, judging the new certificate by the device's clock would call
	// it expired after the token was spent on it, so the enrollment runs
	// on the CA's time.
	for _, ahead := range []time.Duration{2 * time.Hour, 30 * time.Hour} {
		t.Run("expired only by a device clock "+ahead.String()+" ahead", func(t *testing.T) {
			device := "sensor-" + ahead.String()
			tok, _, err := c.CreateToken(ctx, ca.TokenOptions{URL: c.URL, Device: device, TTL: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			var logs syncbuf.Buffer
			dir := filepath.Join(t.TempDir(), "state")
			ks, err := file.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			id, err := Enroll(ctx, EnrollOptions{StateDir: dir, DeviceID: device, Keystore: ks, Token: &tok,
				Timeout: 5 * time.Second, Now: func() time.Time { return time.Now().Add(ahead) }, Logger: newTestLogger(&logs)})
			if err != nil {
				t.Fatalf("enroll with a clock %s ahead and a token good for 1h: %v\n%s", ahead, err, logs.String())
			}
			if id.Meta.DeviceID != device || !time.Now().Before(id.Leaf().NotAfter) {
				t.Fatalf("enrolled as %q until %s", id.Meta.DeviceID, id.Leaf().NotAfter)
			}
			if d := time.Since(id.Meta.EnrolledAt); d < -time.Minute || d > time.Minute {
				t.Errorf("enrolled_at %s: want the CA's time, about now", id.Meta.EnrolledAt)
			}
			if !strings.Contains(logs.String(), "the device clock is ahead") {
				t.Fatalf("no warning about the clock:\n%s", logs.String())
			}
			toks, err := c.CA.Tokens(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range toks {
				if st.ID == tok.ID && st.Uses != 1 {
					t.Fatalf("token uses %d, want 1", st.Uses)
				}
			}
		})
	}
}

// A token that looks expired by the device's clock while the CA cannot be
// asked for its time: not yet the operator's problem (the clock may be
// wrong), but an error the daemon retries, sending no credentials.
func TestEnrollTokenLooksExpiredCAUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close() // no TLS, no EST: nothing can be asked
		}
	}()
	pin, _ := token.ParsePin("sha256:" + strings.Repeat("ab", 32))
	expiry := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tok := token.Token{URL: "https://" + ln.Addr().String(), Pin: pin, ID: "t0123", Secret: strings.Repeat("s", 32), Expires: expiry.Unix()}
	dir := filepath.Join(t.TempDir(), "state")
	ks, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Enroll(context.Background(), EnrollOptions{StateDir: dir, DeviceID: "sensor-1", Keystore: ks, Token: &tok,
		Timeout: 5 * time.Second, Now: func() time.Time { return expiry.Add(time.Minute) }})
	if err == nil || errors.Is(err, ErrNeedsOperator) || !enroll.Retryable(err) {
		t.Fatalf("err = %v, want a retryable error that is not ErrNeedsOperator", err)
	}
	if want := "the token's expiry (2026-01-02T03:04:05Z) has passed by this device's clock (2026-01-02T03:05:05Z), and the CA could not be asked for its time: "; !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "ask the operator") {
		t.Fatalf("err = %q, want it to say %q and not to ask for a new token", err, want)
	}
	if conns.Load() == 0 {
		t.Fatal("the CA was never asked")
	}
}
