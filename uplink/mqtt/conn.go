package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// batchConn coalesces paho's writes. paho writes every packet with its own
// Write, and over TLS every Write is a record and a system call: one per
// PUBLISH, and as many for the broker to read and decrypt. batchConn queues
// the bytes and a writer goroutine sends everything queued with one Write
// to the TLS connection, so while one write is in progress the next
// packets gather behind it. Nothing waits for more data to arrive: an idle
// connection writes a lone packet at once, so latency does not grow.
//
// Delivery semantics do not change. A QoS 1 message counts as delivered
// only on its PUBACK, never when Write returns; a write that fails closes
// the connection, so paho's reader fails and the session ends as for any
// lost connection, and every unacknowledged message is sent again on the
// next one. Each connection has its own batchConn: nothing queued for one
// connection can reach another.
type batchConn struct {
	net.Conn // reads and read deadlines go straight to the TLS connection

	writeTimeout time.Duration // bounds each write to the connection

	mu      sync.Mutex
	space   *sync.Cond // signalled when pending shrinks or the conn fails
	pending []byte
	err     error // sticky: the first write error, or errClosed after Close
	closing bool

	wake chan struct{} // capacity 1: there is something to write, or Close
	done chan struct{} // closed when the writer goroutine has returned
}

// maxPending bounds the queued bytes; Write blocks above it until the
// writer catches up (or the connection fails, which the write timeout
// bounds). The in-flight window bounds the queue long before that with
// telemetry-sized messages, so paho's writer practically never blocks.
const maxPending = 1 << 20

// maxChunk is the most written with one deadline: one full TLS record.
const maxChunk = 16 << 10

func newBatchConn(c net.Conn, writeTimeout time.Duration) *batchConn {
	b := &batchConn{Conn: c, writeTimeout: writeTimeout, wake: make(chan struct{}, 1), done: make(chan struct{})}
	b.space = sync.NewCond(&b.mu)
	go b.writer()
	return b
}

// Write queues p for the writer goroutine. It fails once a write failed or
// the connection is closed; the error then says why.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	for b.err == nil && !b.closing && len(b.pending) > 0 && len(b.pending)+len(p) > maxPending {
		b.space.Wait()
	}
	if b.err != nil || b.closing {
		err := b.err
		b.mu.Unlock()
		if err == nil || errors.Is(err, net.ErrClosed) {
			// paho recognizes this one as "closed elsewhere".
			return 0, net.ErrClosed
		}
		return 0, err
	}
	b.pending = append(b.pending, p...)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

// writer sends what is queued until Close or a write error.
func (b *batchConn) writer() {
	defer close(b.done)
	var out []byte
	for range b.wake {
		for {
			b.mu.Lock()
			out, b.pending = b.pending, out[:0]
			closing := b.closing
			b.mu.Unlock()
			b.space.Broadcast()
			if len(out) == 0 {
				if closing {
					return
				}
				break
			}
			// One TLS record at a time, each with its own deadline, so
			// that writeTimeout bounds the time to send one record-sized
			// piece, as paho bounds one packet, not the whole batch.
			for rest := out; len(rest) > 0; {
				chunk := rest[:min(len(rest), maxChunk)]
				rest = rest[len(chunk):]
				if b.writeTimeout > 0 {
					_ = b.Conn.SetWriteDeadline(time.Now().Add(b.writeTimeout))
				}
				if _, err := b.Conn.Write(chunk); err != nil {
					b.fail(err)
					return
				}
			}
		}
	}
}

// fail records a write error and closes the connection under paho, whose
// reader then reports the connection lost.
func (b *batchConn) fail(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.pending = nil
	b.mu.Unlock()
	b.space.Broadcast()
	_ = b.Conn.Close()
}

// Close sends what is still queued (paho's DISCONNECT is written just
// before it closes), bounded by the write timeout, then closes the
// connection. It is safe to call more than once and concurrently.
func (b *batchConn) Close() error {
	b.mu.Lock()
	first := !b.closing
	b.closing = true
	b.mu.Unlock()
	b.space.Broadcast()
	if first {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	<-b.done
	b.mu.Lock()
	if b.err == nil {
		b.err = net.ErrClosed
	}
	b.mu.Unlock()
	err := b.Conn.Close()
	if !first {
		return net.ErrClosed
	}
	return err
}

// SetWriteDeadline is a no-op: Write only queues, and the writer applies
// writeTimeout to each write itself. (paho sets a deadline around every
// packet it writes.)
func (b *batchConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets the read deadline only; see SetWriteDeadline.
func (b *batchConn) SetDeadline(t time.Time) error { return b.Conn.SetReadDeadline(t) }

// dialBatched opens a TLS connection to addr and wraps it in a batchConn.
func dialBatched(ctx context.Context, addr string, cfg *tls.Config, connectTimeout, writeTimeout time.Duration) (net.Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: connectTimeout}, Config: cfg}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return newBatchConn(c, writeTimeout), nil
}
