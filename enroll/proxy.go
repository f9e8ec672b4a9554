package enroll

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// ProxyFunc picks the proxy for a request, as http.Transport.Proxy does;
// nil, or a nil URL, means a direct connection.
type ProxyFunc func(*http.Request) (*url.URL, error)

// dialServer opens a TCP connection to the EST server at u, through the
// HTTP(S) proxy that proxy names for it (an HTTP CONNECT tunnel), so the
// pin bootstrap takes the same path as the EST requests that follow it,
// which use http.Transport with the same proxy function.
func dialServer(ctx context.Context, u *url.URL, addr string, timeout time.Duration, proxy ProxyFunc) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	var pu *url.URL
	if proxy != nil {
		var err error
		if pu, err = proxy(&http.Request{Method: http.MethodGet, URL: u, Header: http.Header{}}); err != nil {
			return nil, fmt.Errorf("choose proxy: %w", err)
		}
	}
	if pu == nil {
		return d.DialContext(ctx, "tcp", addr)
	}
	var port string
	switch pu.Scheme {
	case "http":
		port = "80"
	case "https":
		port = "443"
	default:
		return nil, fmt.Errorf("proxy %s: scheme %q is not supported for the CA pin bootstrap: use an http:// or https:// proxy in HTTPS_PROXY", pu.Redacted(), pu.Scheme)
	}
	if pu.Port() != "" {
		port = pu.Port()
	}
	proxyAddr := net.JoinHostPort(pu.Hostname(), port)
	var conn net.Conn
	var err error
	if pu.Scheme == "https" {
		// The proxy itself is authenticated by the system's roots, as
		// http.Transport does.
		td := tls.Dialer{NetDialer: d, Config: &tls.Config{MinVersion: tls.VersionTLS12, ServerName: pu.Hostname()}}
		conn, err = td.DialContext(ctx, "tcp", proxyAddr)
	} else {
		conn, err = d.DialContext(ctx, "tcp", proxyAddr)
	}
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", pu.Redacted(), err)
	}
	if err := connectTunnel(ctx, conn, pu, addr, timeout); err != nil {
		conn.Close()
		return nil, fmt.Errorf("proxy %s: %w", pu.Redacted(), err)
	}
	return conn, nil
}

// connectTunnel asks the proxy on conn for a tunnel to addr.
func connectTunnel(ctx context.Context, conn net.Conn, proxy *url.URL, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: addr},
		Host:   addr,
		Header: http.Header{},
	}
	if u := proxy.User; u != nil {
		pass, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)))
	}
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("CONNECT %s: %w", addr, err)
	}
	br := bufio.NewReaderSize(conn, 1024)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("CONNECT %s: %w", addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		hint := ""
		if resp.StatusCode == http.StatusProxyAuthRequired {
			hint = ": put the proxy's user and password in HTTPS_PROXY (http://user:password@host:port)"
		}
		return fmt.Errorf("CONNECT %s: the proxy answered %s%s", addr, resp.Status, hint)
	}
	// The server speaks only after our ClientHello: anything already
	// here did not come from it.
	if br.Buffered() > 0 {
		return fmt.Errorf("CONNECT %s: the proxy sent data after its answer", addr)
	}
	return conn.SetDeadline(time.Time{})
}
