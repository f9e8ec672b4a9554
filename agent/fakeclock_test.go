package agent

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock whose time moves only when the test says. Every
// timer the code under test creates is announced on armed, so a test can
// wait for the code to block on a timer (no sleeps) and then fire it.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	armed chan *fakeTimer
}

func newFakeClock(start time.Time) *fakeClock {
	return &fakeClock{now: start, armed: make(chan *fakeTimer, 64)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	t := &fakeTimer{c: make(chan time.Time, 1), at: c.now.Add(d), clock: c}
	c.mu.Unlock()
	c.armed <- t
	return t
}

// next waits for the code under test to arm a timer and returns it.
func (c *fakeClock) next(t *testing.T) *fakeTimer {
	t.Helper()
	select {
	case tm := <-c.armed:
		return tm
	case <-time.After(30 * time.Second):
		t.Fatal("the code under test armed no timer")
		return nil
	}
}

// fire moves the clock to the timer's time (never back) and fires it.
func (c *fakeClock) fire(tm *fakeTimer) {
	c.mu.Lock()
	if tm.at.After(c.now) {
		c.now = tm.at
	}
	now := c.now
	stopped := tm.stopped
	c.mu.Unlock()
	if !stopped {
		tm.c <- now
	}
}

type fakeTimer struct {
	c       chan time.Time
	at      time.Time
	clock   *fakeClock
	stopped bool
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}
