package demo

import (
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"log/slog"
	"net/http"
	"testing"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

func gzipLines(t *testing.T, lines ...string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	for _, l := range lines {
		zw.Write([]byte(l + "\n"))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// The sink acks what uplink/https sends, refuses a batch with a bad line
// without counting any of it, refuses clients without a certificate from
// its CA, and comes back on the same address after a stop.
func TestSinkRequiresClientCertificateAndAcksBatches(t *testing.T) {
	pki := testpki.New(t, "demo-test-ca")
	srv := pki.Server(t)
	tl := newTally()
	s := newSink(&tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*srv.TLS},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pki.Pool()}, slog.New(slog.DiscardHandler), tl, nil)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool(), Certificates: certs}}}
	}
	dev := pki.Client(t, "dev1")
	post := func(c *http.Client, body []byte) (int, error) {
		req, _ := http.NewRequest(http.MethodPost, s.URL(), bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/x-ndjson")
		req.Header.Set("Content-Encoding", "gzip")
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	ok := client(*dev.TLS)
	cases := []struct {
		name     string
		body     []byte
		status   int
		received uint64
		unique   uint64
	}{
		{"batch of three", gzipLines(t, `{"id":"a","data":{}}`, `{"id":"b","data":{}}`, `{"id":"c","data":{}}`), http.StatusNoContent, 3, 3},
		{"resent message counts as duplicate", gzipLines(t, `{"id":"c","data":{}}`), http.StatusNoContent, 4, 3},
		{"bad line refuses the whole batch", gzipLines(t, `{"id":"d"}`, `not json`), http.StatusBadRequest, 4, 3},
		{"body not gzip", []byte("plain"), http.StatusBadRequest, 4, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, err := post(ok, c.body)
			if err != nil {
				t.Fatal(err)
			}
			got := tl.snapshot("")
			if code != c.status || got.Received != c.received || got.Unique != c.unique {
				t.Fatalf("status %d received %d unique %d, want %d %d %d", code, got.Received, got.Unique, c.status, c.received, c.unique)
			}
			if want := ca.SerialHex(dev.Cert.SerialNumber); got.Serial != want {
				t.Fatalf("serial %q, want the client certificate's %s", got.Serial, want)
			}
		})
	}
	if _, err := post(client(), gzipLines(t, `{"id":"x"}`)); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	other := testpki.New(t, "other-ca").Client(t, "dev1")
	if _, err := post(client(*other.TLS), gzipLines(t, `{"id":"x"}`)); err == nil {
		t.Fatal("a client with a certificate from another CA was served")
	}
	addr := s.Addr()
	s.Stop()
	if got := tl.snapshot("").Up; got {
		t.Fatal("stopped sink reports up")
	}
	if _, err := post(client(*dev.TLS), gzipLines(t, `{"id":"y"}`)); err == nil {
		t.Fatal("stopped sink still answers")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if s.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", s.Addr(), addr)
	}
	if code, err := post(client(*dev.TLS), gzipLines(t, `{"id":"y"}`)); err != nil || code != http.StatusNoContent {
		t.Fatalf("after restart: %d %v", code, err)
	}
}
