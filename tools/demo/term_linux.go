package demo

import (
	"context"
	"errors"

	"golang.org/x/sys/unix"
)

// isTerminal reports whether fd is a terminal.
func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// termWidth is the terminal's width in columns, 0 when unknown.
func termWidth(fd int) int {
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil {
		return 0
	}
	return int(ws.Col)
}

// cbreak turns off line buffering and echo on the terminal fd, so single
// key presses arrive at once and do not scribble over the view. Signals
// stay on: Ctrl-C still interrupts. The returned function restores the
// terminal.
func cbreak(fd int) (func(), error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	t := *old
	t.Lflag &^= unix.ICANON | unix.ECHO
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return nil, err
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}

// readKeys sends each byte read from fd to keys until ctx ends. It polls
// with a short timeout instead of blocking in read, so it returns promptly
// when the demo stops.
func readKeys(ctx context.Context, fd int, keys chan<- byte) error {
	buf := make([]byte, 16)
	for ctx.Err() == nil {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		if errors.Is(err, unix.EINTR) || n == 0 {
			continue
		}
		if err != nil {
			return err
		}
		if fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 && fds[0].Revents&unix.POLLIN == 0 {
			return nil // the terminal went away: no more keys
		}
		m, err := unix.Read(fd, buf)
		if err != nil || m == 0 {
			return nil
		}
		for _, c := range buf[:m] {
			select {
			case keys <- c:
			case <-ctx.Done():
				return nil
			}
		}
	}
	return nil
}
