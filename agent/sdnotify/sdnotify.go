// Package sdnotify speaks systemd's notify protocol (sd_notify(3)): READY,
// STATUS and WATCHDOG datagrams to $NOTIFY_SOCKET, so a Type=notify unit
// knows when the agent is up and restarts it when it hangs.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// Notifier sends to one socket; the zero value (no socket) does nothing.
type Notifier struct {
	addr *net.UnixAddr
}

// New reads the socket from getenv("NOTIFY_SOCKET"); without one (not run
// by systemd) every Notify is a no-op.
func New(getenv func(string) string) (*Notifier, error) {
	path := getenv("NOTIFY_SOCKET")
	if path == "" {
		return &Notifier{}, nil
	}
	if path[0] != '/' && path[0] != '@' {
		return nil, fmt.Errorf("sdnotify: NOTIFY_SOCKET %q is neither a path nor an abstract socket", path)
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract namespace
	}
	return &Notifier{addr: &net.UnixAddr{Name: path, Net: "unixgram"}}, nil
}

// Enabled reports whether systemd is listening.
func (n *Notifier) Enabled() bool { return n.addr != nil }

// notifyTimeout bounds one notification.
const notifyTimeout = time.Second

// Notify sends one state line, e.g. "READY=1" or "STATUS=renewing".
func (n *Notifier) Notify(state string) error {
	if n.addr == nil {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer c.Close()
	// A datagram socket whose reader has stopped (a hung systemd, or a
	// test that no longer reads) fills after a few messages and then
	// blocks a write forever: the watchdog, or the agent's shutdown, would
	// hang with it.
	if err := c.SetWriteDeadline(time.Now().Add(notifyTimeout)); err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	return nil
}

// WatchdogInterval returns how often to send WATCHDOG=1 (half the
// configured timeout), or 0 when no watchdog is set for this process.
func WatchdogInterval(getenv func(string) string, pid int) (time.Duration, error) {
	usec := getenv("WATCHDOG_USEC")
	if usec == "" {
		return 0, nil
	}
	if p := getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(pid) {
		return 0, nil // meant for another process
	}
	v, err := strconv.ParseInt(usec, 10, 64)
	if err != nil || v <= 0 {
		return 0, errors.New("sdnotify: WATCHDOG_USEC is not a positive number")
	}
	return time.Duration(v) * time.Microsecond / 2, nil
}
