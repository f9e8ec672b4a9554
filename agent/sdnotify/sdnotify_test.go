package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

func TestNotifyReachesSocket(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		name := filepath.Join(t.TempDir(), "notify.sock")
		listen := name
		if abstract {
			name = "@edgeagent-test-" + time.Now().Format("150405.000000000")
			listen = "\x00" + name[1:]
		}
		conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: listen, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		n, err := New(func(k string) string {
			if k == "NOTIFY_SOCKET" {
				return name
			}
			return ""
		})
		if err != nil || !n.Enabled() {
			t.Fatalf("New: %v", err)
		}
		if err := n.Notify("READY=1\nSTATUS=enrolled"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 256)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, err := conn.Read(buf)
		if err != nil || string(buf[:k]) != "READY=1\nSTATUS=enrolled" {
			t.Fatalf("abstract=%v: got %q %v", abstract, buf[:k], err)
		}
	}
}

// TestNotifyDoesNotHangOnAStalledReader: a notify socket nobody reads
// fills up; Notify then fails with an error instead of blocking the
// watchdog (and the agent's shutdown) forever.
func TestNotifyDoesNotHangOnAStalledReader(t *testing.T) {
	name := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	n, err := New(func(k string) string {
		if k == "NOTIFY_SOCKET" {
			return name
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		// The queue of a datagram socket holds a few messages (net.unix.max_dgram_qlen).
		for range 10000 {
			if err := n.Notify("WATCHDOG=1"); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("10000 notifications to a socket nobody reads all succeeded")
		}
	case <-time.After(time.Minute):
		t.Fatal("Notify blocked on a socket nobody reads")
	}
}

func TestWithoutSystemd(t *testing.T) {
	n, err := New(func(string) string { return "" })
	if err != nil || n.Enabled() || n.Notify("READY=1") != nil {
		t.Fatal("without NOTIFY_SOCKET Notify must be a silent no-op")
	}
	if _, err := New(func(string) string { return "relative.sock" }); err == nil {
		t.Fatal("relative socket path accepted")
	}
}

func TestWatchdogInterval(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cases := []struct {
		name string
		env  map[string]string
		want time.Duration
		err  bool
	}{
		{"none", nil, 0, false},
		{"ours", map[string]string{"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "42"}, 30 * time.Second, false},
		{"no pid", map[string]string{"WATCHDOG_USEC": "2000000"}, time.Second, false},
		{"other pid", map[string]string{"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "7"}, 0, false},
		{"garbage", map[string]string{"WATCHDOG_USEC": "soon"}, 0, true},
	}
	for _, c := range cases {
		got, err := WatchdogInterval(env(c.env), 42)
		if got != c.want || (err != nil) != c.err {
			t.Errorf("%s: %v %v", c.name, got, err)
		}
	}
}
