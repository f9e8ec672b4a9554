package mqtt

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// recordingConn records each Write it gets; a Write blocks while gate is
// held, and fails with failWith once set.
type recordingConn struct {
	net.Conn // nil: only what batchConn calls is implemented

	gate     sync.Mutex
	mu       sync.Mutex
	writes   [][]byte
	failWith error
	closed   bool
	entered  chan struct{} // receives when a Write starts
}

func newRecordingConn() *recordingConn { return &recordingConn{entered: make(chan struct{}, 100)} }

func (c *recordingConn) Write(p []byte) (int, error) {
	c.entered <- struct{}{}
	c.gate.Lock()
	defer c.gate.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failWith != nil {
		return 0, c.failWith
	}
	if c.closed {
		return 0, net.ErrClosed
	}
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func (c *recordingConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *recordingConn) SetWriteDeadline(time.Time) error { return nil }
func (c *recordingConn) SetReadDeadline(time.Time) error  { return nil }

func (c *recordingConn) snapshot() (writes [][]byte, closed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.writes...), c.closed
}

func TestBatchConnCoalescesWhileAWriteIsInProgress(t *testing.T) {
	rc := newRecordingConn()
	b := newBatchConn(rc, time.Second)
	rc.gate.Lock() // the first write blocks
	if _, err := b.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	<-rc.entered
	var want []byte
	for _, p := range []string{"a", "bb", "ccc", "dddd"} {
		if _, err := b.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
		want = append(want, p...)
	}
	rc.gate.Unlock()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	writes, closed := rc.snapshot()
	if len(writes) != 2 || string(writes[0]) != "first" || !bytes.Equal(writes[1], want) {
		t.Errorf("underlying writes %q, want [first %s]", writes, want)
	}
	if !closed {
		t.Error("Close did not close the connection")
	}
}

func TestBatchConnCloseSendsWhatIsQueued(t *testing.T) {
	rc := newRecordingConn()
	b := newBatchConn(rc, time.Second)
	rc.gate.Lock()
	if _, err := b.Write([]byte("publish")); err != nil {
		t.Fatal(err)
	}
	<-rc.entered
	if _, err := b.Write([]byte("disconnect")); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	rc.gate.Unlock()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	writes, _ := rc.snapshot()
	if got := bytes.Join(writes, nil); string(got) != "publishdisconnect" {
		t.Errorf("sent %q before closing, want everything queued", got)
	}
	if _, err := b.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
	if err := b.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v, want net.ErrClosed", err)
	}
}

func TestBatchConnWriteErrorClosesAndSticks(t *testing.T) {
	rc := newRecordingConn()
	boom := errors.New("connection reset by peer")
	rc.failWith = boom
	b := newBatchConn(rc, time.Second)
	if _, err := b.Write([]byte("x")); err != nil {
		t.Fatalf("first Write only queues: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		_, err := b.Write([]byte("y"))
		if errors.Is(err, boom) {
			break
		}
		if err != nil {
			t.Fatalf("Write after a failed write: %v, want %v", err, boom)
		}
		if time.Now().After(deadline) {
			t.Fatal("a failed write never surfaced")
		}
		<-tick.C
	}
	if _, closed := rc.snapshot(); !closed {
		t.Error("a failed write did not close the connection (paho's reader would not notice)")
	}
	_ = b.Close()
}
