package enroll

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// ProxyFunc picks the proxy for a request, as http.Transport.Proxy does;
// nil, or a nil URL, means a direct connection.
type ProxyFunc func(*http.Request) (*url.URL, error)

// proxyFromEnvironment is http.ProxyFromEnvironment (HTTPS_PROXY, NO_PROXY;
// never for loopback) limited to http:// proxies, the one kind every EST
// connection can use: http.Transport would open the TLS connection to an
// https:// proxy with the EST client's own TLS config, whose only trust
// anchors are the CA's, and offer the device certificate to the proxy.
func proxyFromEnvironment(req *http.Request) (*url.URL, error) {
	u, err := http.ProxyFromEnvironment(req)
	if err != nil || u == nil {
		return u, err
	}
	if err := checkProxyURL(u); err != nil {
		return nil, err
	}
	return u, nil
}

func checkProxyURL(u *url.URL) error {
	if u.Scheme != "http" {
		return fmt.Errorf("proxy %s: scheme %q is not supported for EST: give an http:// proxy in HTTPS_PROXY (the TLS to the CA goes through its CONNECT tunnel), or list the CA in NO_PROXY", u.Redacted(), u.Scheme)
	}
	return nil
}

// maxProxyResponse bounds the proxy's answer to CONNECT.
const maxProxyResponse = 64 << 10

// dialServer opens a TCP connection to the EST server at u (addr is its
// host:port), through the http:// proxy that proxy names for it (an HTTP
// CONNECT tunnel), so the pin bootstrap takes the same path as the EST
// requests after it, which http.Transport sends through the same proxy.
// ctx bounds it all.
func dialServer(ctx context.Context, u *url.URL, addr string, proxy ProxyFunc) (net.Conn, error) {
	var d net.Dialer
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
	if err := checkProxyURL(pu); err != nil {
		return nil, err
	}
	port := pu.Port()
	if port == "" {
		port = "80"
	}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(pu.Hostname(), port))
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", pu.Redacted(), err)
	}
	if err := connectTunnel(ctx, conn, pu, addr); err != nil {
		conn.Close()
		return nil, fmt.Errorf("proxy %s: %w", pu.Redacted(), err)
	}
	return conn, nil
}

// connectTunnel asks the proxy on conn for a tunnel to addr, for as long as
// ctx allows: when it is done, a read or write in progress ends.
func connectTunnel(ctx context.Context, conn net.Conn, proxy *url.URL, addr string) (err error) {
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		stop()
		if err != nil && ctx.Err() != nil {
			// Say "deadline exceeded" or "canceled", not "i/o timeout".
			err = fmt.Errorf("CONNECT %s: %w", addr, context.Cause(ctx))
		}
	}()
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
	lr := &io.LimitedReader{R: conn, N: maxProxyResponse}
	br := bufio.NewReaderSize(lr, 4096)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		if lr.N <= 0 {
			err = errors.New("answer over 64 KiB")
		}
		return fmt.Errorf("CONNECT %s: %w", addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		hint := ""
		if resp.StatusCode == http.StatusProxyAuthRequired {
			if proxy.User == nil {
				hint = ": put the proxy's user and password in HTTPS_PROXY (http://user:password@host:port)"
			} else {
				hint = ": the proxy refused the user and password in HTTPS_PROXY"
			}
		}
		return fmt.Errorf("CONNECT %s: the proxy answered %s%s", addr, resp.Status, hint)
	}
	// The server speaks only after our ClientHello: anything already
	// here did not come from it.
	if br.Buffered() > 0 {
		return fmt.Errorf("CONNECT %s: the proxy sent data after its answer", addr)
	}
	return nil
}
