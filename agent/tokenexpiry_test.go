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
		if want := "this enrollment token expired at " + expiry.Format(time.RFC3339) + "; ask the operator for a new one"; !strings.Contains(err.Error(), want) {
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

	t.Run("expired only by a device clock that runs ahead", func(t *testing.T) {
		tok, _, err := c.CreateToken(ctx, ca.TokenOptions{URL: c.URL, Device: "sensor-1", TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		ahead := func() time.Time { return time.Now().Add(2 * time.Hour) } // an RTC set to local time, UTC+2
		var logs syncbuf.Buffer
		id, err := enrollWith(t, tok, ahead, &logs)
		if err != nil {
			t.Fatalf("enroll with a clock 2h ahead and a token good for 1h: %v\n%s", err, logs.String())
		}
		if id.Meta.DeviceID != "sensor-1" {
			t.Fatalf("enrolled as %q", id.Meta.DeviceID)
		}
		if !strings.Contains(logs.String(), "the device clock is ahead") {
			t.Fatalf("no warning about the clock:\n%s", logs.String())
		}
	})
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
	if want := "this enrollment token expired at 2026-01-02T03:04:05Z"; !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "asking the CA for its time") {
		t.Fatalf("err = %q, want it to say %q and that the CA's time was asked", err, want)
	}
	if conns.Load() == 0 {
		t.Fatal("the CA was never asked")
	}
}
