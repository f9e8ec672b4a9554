package ca

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// sniffListener splits one listener into TLS connections and plain HTTP
// ones by their first byte (a TLS handshake record starts with 0x16), so
// that the CRL is served over plain HTTP on the EST port: a relying party
// fetching a CRL distribution point must not need TLS (RFC 5280 §4.2.1.13
// CRLs are fetched over http, and verifying the TLS server would need the
// very CRL).
type sniffListener struct {
	ln        net.Listener
	tlsc      chan net.Conn
	plainc    chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	err       error
}

func newSniffListener(ctx context.Context, ln net.Listener) *sniffListener {
	s := &sniffListener{ln: ln, tlsc: make(chan net.Conn), plainc: make(chan net.Conn), done: make(chan struct{})}
	s.wg.Add(1)
	go s.accept(ctx)
	return s
}

func (s *sniffListener) accept(ctx context.Context) {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.err = err
			s.Close()
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.route(ctx, conn)
		}()
	}
}

// route reads the first byte (within headerTimeout) and hands the
// connection on.
func (s *sniffListener) route(ctx context.Context, conn net.Conn) {
	_ = conn.SetReadDeadline(time.Now().Add(headerTimeout))
	br := bufio.NewReaderSize(conn, 16)
	first, err := br.Peek(1)
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return
	}
	c := &peekedConn{Conn: conn, r: br}
	out := s.plainc
	if first[0] == 0x16 {
		out = s.tlsc
	}
	select {
	case out <- c:
	case <-s.done:
		conn.Close()
	case <-ctx.Done():
		conn.Close()
	}
}

func (s *sniffListener) Close() error {
	s.closeOnce.Do(func() { close(s.done); s.ln.Close() })
	return nil
}

// wait returns once every goroutine of the listener has ended.
func (s *sniffListener) wait() { s.wg.Wait() }

func (s *sniffListener) TLS() net.Listener   { return &sniffSide{s: s, c: s.tlsc} }
func (s *sniffListener) Plain() net.Listener { return &sniffSide{s: s, c: s.plainc} }

type sniffSide struct {
	s *sniffListener
	c chan net.Conn
}

func (l *sniffSide) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.s.done:
		return nil, net.ErrClosed
	}
}
func (l *sniffSide) Close() error   { return l.s.Close() }
func (l *sniffSide) Addr() net.Addr { return l.s.ln.Addr() }

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
