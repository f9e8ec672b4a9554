package enroll

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll/token"
)

// connectProxy is a real HTTP CONNECT proxy on 127.0.0.1: it tunnels to
// the address asked for, or to redirect when set (a proxy that diverts
// the device), and asks for auth when auth is set.
type connectProxy struct {
	ln       net.Listener
	auth     string // wanted Proxy-Authorization; empty: none
	redirect string
	// silent proxies read the CONNECT and never answer; accepted gets
	// each such connection.
	silent   bool
	accepted chan struct{}
	// junk is sent right after the 200, before the server could speak.
	junk string
	wg   sync.WaitGroup

	mu      sync.Mutex
	targets []string
	conns   []net.Conn
}

func newConnectProxy(t *testing.T) *connectProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			p.mu.Unlock()
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *connectProxy) url(userinfo string) func(*http.Request) (*url.URL, error) {
	u := &url.URL{Scheme: "http", Host: p.ln.Addr().String()}
	if userinfo != "" {
		user, pass, _ := strings.Cut(userinfo, ":")
		u.User = url.UserPassword(user, pass)
	}
	return func(*http.Request) (*url.URL, error) { return u, nil }
}

func (p *connectProxy) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if req.Method != http.MethodConnect {
		io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
		return
	}
	if p.silent {
		p.accepted <- struct{}{}
		io.Copy(io.Discard, br) // until the client gives up
		return
	}
	if p.auth != "" && req.Header.Get("Proxy-Authorization") != p.auth {
		io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
		return
	}
	p.mu.Lock()
	p.targets = append(p.targets, req.Host)
	p.mu.Unlock()
	target := req.Host
	if p.redirect != "" {
		target = p.redirect
	}
	up, err := net.Dial("tcp", target)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, up)
	p.mu.Unlock()
	defer up.Close()
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"+p.junk)
	done := make(chan struct{})
	go func() {
		io.Copy(up, br)
		close(done)
	}()
	io.Copy(c, up)
	c.Close()
	<-done
}

func (p *connectProxy) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.targets...)
}

// TestPinBootstrapThroughProxy: the pin bootstrap reaches the server
// through an HTTP CONNECT proxy, as the EST requests after it do through
// http.Transport, and the pin still decides what is trusted.
func TestPinBootstrapThroughProxy(t *testing.T) {
	s := newESTServer(t)
	ctx := context.Background()
	pin := token.PinOf(s.pki.root)
	serverAddr := strings.TrimPrefix(s.url(), "https://")

	t.Run("tunnel", func(t *testing.T) {
		p := newConnectProxy(t)
		got, err := fetchPinned(ctx, s.url(), pin, 5*time.Second, nil, p.url(""))
		if err != nil {
			t.Fatal(err)
		}
		if !got.Equal(s.pki.root) {
			t.Fatal("pinned certificate is not the root")
		}
		if seen := p.seen(); len(seen) != 1 || seen[0] != serverAddr {
			t.Fatalf("proxy tunnels %v, want one to %s", seen, serverAddr)
		}
	})

	t.Run("leaf-only server: the provisional cacerts goes through the tunnel too", func(t *testing.T) {
		pki := newPKI(t, "127.0.0.1")
		ls := startPinServer(t, pki, []*x509.Certificate{leafOf(t, pki)}, []*x509.Certificate{pki.inter, pki.root})
		p := newConnectProxy(t)
		got, err := fetchPinned(ctx, ls.srv.URL, token.PinOf(pki.root), 5*time.Second, nil, p.url(""))
		if err != nil || !got.Equal(pki.root) {
			t.Fatalf("pinned %v, %v; want the root", got, err)
		}
		addr := strings.TrimPrefix(ls.srv.URL, "https://")
		if seen := p.seen(); len(seen) != 2 || seen[0] != addr || seen[1] != addr {
			t.Fatalf("proxy tunnels %v, want two to %s (handshake, provisional cacerts)", seen, addr)
		}
	})

	t.Run("proxy credentials", func(t *testing.T) {
		p := newConnectProxy(t)
		p.auth = "Basic ZGV2aWNlOnMzY3JldA==" // device:s3cret
		_, err := fetchPinned(ctx, s.url(), pin, 5*time.Second, nil, p.url(""))
		if err == nil || !strings.Contains(err.Error(), "407") || !strings.Contains(err.Error(), "HTTPS_PROXY") {
			t.Fatalf("without credentials: %v, want the 407 and how to give them", err)
		}
		if _, err := fetchPinned(ctx, s.url(), pin, 5*time.Second, nil, p.url("device:s3cret")); err != nil {
			t.Fatalf("with credentials: %v", err)
		}
		_, err = fetchPinned(ctx, s.url(), pin, 5*time.Second, nil, p.url("device:wrong"))
		if err == nil || !strings.Contains(err.Error(), "refused the user and password") {
			t.Fatalf("with wrong credentials: %v, want them called refused", err)
		}
	})

	t.Run("diverting proxy", func(t *testing.T) {
		// A proxy that sends the device to another server cannot make
		// it trust that server: the pin does not match.
		other := newESTServer(t)
		p := newConnectProxy(t)
		p.redirect = strings.TrimPrefix(other.url(), "https://")
		_, err := fetchPinned(ctx, s.url(), pin, 5*time.Second, nil, p.url(""))
		if !errors.Is(err, ErrPinMismatch) {
			t.Fatalf("diverted: %v, want a pin mismatch", err)
		}
	})

	t.Run("bad proxies", func(t *testing.T) {
		dead, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		deadAddr := dead.Addr().String()
		dead.Close()
		for _, c := range []struct {
			name  string
			proxy string
			want  string
		}{
			{"socks", "socks5://127.0.0.1:1080", "not supported"},
			// http.Transport would check an https proxy against the CA's
			// anchors and offer it the device certificate.
			{"https", "https://127.0.0.1:3129", "not supported"},
			{"unreachable", "http://" + deadAddr, deadAddr},
		} {
			pu, _ := url.Parse(c.proxy)
			_, err := fetchPinned(ctx, s.url(), pin, 2*time.Second, nil, func(*http.Request) (*url.URL, error) { return pu, nil })
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "proxy") {
				t.Errorf("%s: %v, want an error naming the proxy and %q", c.name, err, c.want)
			}
		}
	})

	t.Run("data before the server speaks", func(t *testing.T) {
		p := newConnectProxy(t)
		p.junk = "HTTP/1.1 200 OK\r\n"
		_, err := fetchPinned(ctx, s.url(), pin, 5*time.Second, nil, p.url(""))
		if err == nil || !strings.Contains(err.Error(), "data after its answer") {
			t.Fatalf("%v, want the early data refused", err)
		}
	})

	t.Run("silent proxy: timeout and cancel", func(t *testing.T) {
		p := newConnectProxy(t)
		p.silent, p.accepted = true, make(chan struct{}, 2)
		_, err := fetchPinned(ctx, s.url(), pin, 300*time.Millisecond, nil, p.url(""))
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "CONNECT") {
			t.Fatalf("timeout: %v, want the CONNECT to end at the deadline", err)
		}
		cctx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() {
			_, err := fetchPinned(cctx, s.url(), pin, time.Minute, nil, p.url(""))
			errc <- err
		}()
		<-p.accepted // the first attempt's
		<-p.accepted // this one's: it is waiting for the answer now
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled: %v, want context.Canceled", err)
		}
	})

	t.Run("no proxy", func(t *testing.T) {
		direct := func(*http.Request) (*url.URL, error) { return nil, nil }
		if _, err := fetchPinned(ctx, s.url(), pin, 5*time.Second, nil, direct); err != nil {
			t.Fatal(err)
		}
	})
}
