package ca

import (
	"crypto/tls"
	"net/url"
	"testing"

	"github.com/edgeagent/edgeagent/enroll"
)

// TestKeyExchange pins down which TLS key exchange the EST server ends up
// using: classical X25519 unless both the server and the client opt in to
// a post-quantum hybrid (edgeagent's EST client does not offer one by
// default; Go's default client does).
func TestKeyExchange(t *testing.T) {
	classic := newTestServer(t, Options{})
	pq := newTestServer(t, Options{PostQuantumTLS: true})
	tests := []struct {
		name   string
		server *testServer
		client []tls.CurveID
		want   tls.CurveID
	}{
		{"default server, Go default client", classic, nil, tls.X25519},
		{"default server, edgeagent client", classic, enroll.KeyExchanges(false), tls.X25519},
		{"default server, edgeagent post-quantum client", classic, enroll.KeyExchanges(true), tls.X25519},
		{"default server, P-256 only client", classic, []tls.CurveID{tls.CurveP256}, tls.CurveP256},
		{"post-quantum server, Go default client", pq, nil, tls.X25519MLKEM768},
		{"post-quantum server, edgeagent client", pq, enroll.KeyExchanges(false), tls.X25519},
		{"post-quantum server, edgeagent post-quantum client", pq, enroll.KeyExchanges(true), tls.X25519MLKEM768},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.Parse(tt.server.url)
			if err != nil {
				t.Fatal(err)
			}
			conn, err := tls.Dial("tcp", u.Host, &tls.Config{
				RootCAs:          tt.server.roots,
				ServerName:       u.Hostname(),
				MinVersion:       tls.VersionTLS13,
				CurvePreferences: tt.client,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if got := conn.ConnectionState().CurveID; got != tt.want {
				t.Errorf("key exchange %v, want %v", got, tt.want)
			}
		})
	}
}
