package e2e

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// certProxy is a TCP relay in front of a TLS 1.2 server (mosquitto with
// tls_version tlsv1.2) that reads each client's handshake as it passes and
// records which certificate the client presented to the server. In TLS 1.2
// the client's Certificate message precedes ChangeCipherSpec in the clear,
// so this is what the broker received and verified, not what the client
// says it sent.
type certProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	seen   []presented
	wg     sync.WaitGroup
}

// presented is one client connection's certificate.
type presented struct {
	At       time.Time // when the Certificate message passed
	Serial   string    // leaf serial in hex; "" with Note when none
	NotAfter time.Time
	Note     string // why there is no serial: resumed session, TLS 1.3, error
}

func startCertProxy(t testing.TB, target string) *certProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &certProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.wg.Wait()
	})
	return p
}

// Addr is the proxy's listening address.
func (p *certProxy) Addr() string { return p.ln.Addr().String() }

// Presented returns every connection's certificate so far, in order.
func (p *certProxy) Presented() []presented {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]presented(nil), p.seen...)
}

func (p *certProxy) accept() {
	defer p.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	var open []net.Conn
	var mu sync.Mutex
	defer func() {
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
	}()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			// The listener closed: close the relayed connections too,
			// so their goroutines end.
			mu.Lock()
			for _, c := range open {
				c.Close()
			}
			open = nil
			mu.Unlock()
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		mu.Lock()
		open = append(open, c, s)
		mu.Unlock()
		conns.Add(1)
		go func() {
			defer conns.Done()
			p.relay(c, s)
		}()
	}
}

// relay copies both ways; the client-to-server bytes also feed the
// handshake parser until it has what it needs.
func (p *certProxy) relay(client, server net.Conn) {
	defer client.Close()
	defer server.Close()
	pr, pw := io.Pipe()
	parsed := make(chan struct{})
	go func() {
		defer close(parsed)
		r := parseClientHandshake(pr)
		pr.CloseWithError(errParsed)
		p.mu.Lock()
		p.seen = append(p.seen, r)
		p.mu.Unlock()
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(client, server)
		client.Close()
	}()
	buf := make([]byte, 32<<10)
	feeding := true
	for {
		n, err := client.Read(buf)
		if n > 0 {
			if feeding {
				if _, werr := pw.Write(buf[:n]); werr != nil {
					feeding = false
				}
			}
			if _, werr := server.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	pw.CloseWithError(io.EOF)
	server.Close()
	<-parsed
	<-done
}

var errParsed = errors.New("handshake parsed")

// parseClientHandshake reads TLS records from the client until its
// ChangeCipherSpec and returns the leaf of its Certificate message.
func parseClientHandshake(r io.Reader) presented {
	var hs []byte
	var out presented
	hdr := make([]byte, 5)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			out.Note = fmt.Sprintf("connection ended in the handshake: %v", err)
			return out
		}
		body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		if _, err := io.ReadFull(r, body); err != nil {
			out.Note = fmt.Sprintf("connection ended in a record: %v", err)
			return out
		}
		switch hdr[0] {
		case 20: // ChangeCipherSpec: the client's clear-text flight is over
			if out.Serial == "" && out.Note == "" {
				out.Note = "no certificate before ChangeCipherSpec (a resumed session, or TLS 1.3)"
			}
			return out
		case 22: // handshake
			hs = append(hs, body...)
			for len(hs) >= 4 {
				n := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
				if len(hs) < 4+n {
					break
				}
				typ, msg := hs[0], hs[4:4+n]
				hs = hs[4+n:]
				if typ != 11 { // Certificate
					continue
				}
				out.At = time.Now()
				if len(msg) < 6 {
					out.Note = "empty certificate list"
					continue
				}
				l := int(msg[3])<<16 | int(msg[4])<<8 | int(msg[5])
				if len(msg) < 6+l {
					out.Note = "truncated certificate"
					continue
				}
				c, err := x509.ParseCertificate(msg[6 : 6+l])
				if err != nil {
					out.Note = fmt.Sprintf("unparsable certificate: %v", err)
					continue
				}
				out.Serial, out.NotAfter = hex.EncodeToString(c.SerialNumber.Bytes()), c.NotAfter
			}
		default:
			out.Note = fmt.Sprintf("record type %d before ChangeCipherSpec", hdr[0])
			return out
		}
	}
}
