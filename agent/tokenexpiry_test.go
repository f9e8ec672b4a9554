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

	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/keystore/file"
)

// A token whose own expiry has passed is refused before the CA is asked:
// the listener named in the token never sees a connection, and the error
// is one only the operator can fix (exit 78).
func TestEnrollExpiredTokenNeedsOperatorWithoutContactingCA(t *testing.T) {
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
			c.Close()
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
	if !errors.Is(err, ErrNeedsOperator) {
		t.Fatalf("err = %v, want ErrNeedsOperator", err)
	}
	if want := "this enrollment token expired at 2026-01-02T03:04:05Z; ask the operator for a new one"; !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %q, want it to say %q", err, want)
	}
	if n := conns.Load(); n != 0 {
		t.Fatalf("the CA was contacted %d times", n)
	}
}
