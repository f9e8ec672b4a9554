package agent

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/syncbuf"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// httpsSink is a backend that requires a client certificate from the
// device CA and records which message ids arrived under which serial.
type httpsSink struct {
	srv      *httptest.Server
	caFile   string
	mu       sync.Mutex
	ids      map[string]int
	serialOf map[string]string // message id -> client cert serial
}

func newHTTPSSink(t *testing.T, deviceCA *testpki.EdgeCA) *httpsSink {
	t.Helper()
	sinkCA := testpki.New(t, "sink")
	s := &httpsSink{ids: map[string]int{}, serialOf: map[string]string{}, caFile: sinkCA.CAFile(t)}
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(deviceCA.Root())
	clientCAs.AddCert(deviceCA.Intermediate())
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		serial := hex.EncodeToString(r.TLS.PeerCertificates[0].SerialNumber.Bytes())
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		sc := bufio.NewScanner(zr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		s.mu.Lock()
		defer s.mu.Unlock()
		for sc.Scan() {
			var m struct {
				ID       string `json:"id"`
				DeviceID string `json:"device_id"`
			}
			if json.Unmarshal(sc.Bytes(), &m) != nil || m.ID == "" || m.DeviceID == "" {
				http.Error(w, "bad line", 400)
				return
			}
			s.ids[m.ID]++
			s.serialOf[m.ID] = serial
		}
		w.WriteHeader(http.StatusOK)
	}))
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{*sinkCA.Server(t).TLS}, ClientCAs: clientCAs, ClientAuth: tls.RequireAndVerifyClientCert}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *httpsSink) has(ids []string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if s.ids[id] == 0 {
			return false
		}
	}
	return true
}

// TestDaemonEnrollsShipsAndRenewsWithoutLoss runs the daemon against a real
// CA and an mTLS HTTPS sink: it enrolls with a token, ships everything
// posted to the local API, renews on demand mid-stream, and the sink sees
// the new certificate on the next connection with no message lost.
func TestDaemonEnrollsShipsAndRenewsWithoutLoss(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	sink := newHTTPSSink(t, c)
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(c.Token(t, "daemon-1").String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonConfig(dir, "daemon-1")
	cfg.Enroll.TokenFile = tokFile
	cfg.HTTPS.URL = sink.srv.URL + "/ingest"
	cfg.HTTPS.CABundle = sink.caFile
	cfg.Spool.Sync = "never"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// systemd's notify socket, to see READY and WATCHDOG.
	notifyPath := filepath.Join(dir, "notify.sock")
	notifyConn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notifyConn.Close()
	env := map[string]string{"NOTIFY_SOCKET": notifyPath, "WATCHDOG_USEC": "200000"}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Config: cfg, Getenv: func(k string) string { return env[k] }, Ready: func() { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon stopped: %v", err)
	}
	gotNotify := map[string]bool{}
	_ = notifyConn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for !gotNotify["READY=1"] || !gotNotify["WATCHDOG=1"] {
		buf := make([]byte, 1024)
		n, err := notifyConn.Read(buf)
		if err != nil {
			t.Fatalf("systemd notifications so far %v: %v", gotNotify, err)
		}
		gotNotify[strings.SplitN(string(buf[:n]), "\n", 2)[0]] = true
	}
	api := localapi.Client(cfg.API.Socket, 0)
	poll.Until(t, 30*time.Second, "the local API", func() bool {
		resp, err := api.Get("http://agent/v1/status")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})

	post := func(n, from int) []string {
		var buf bytes.Buffer
		buf.WriteByte('[')
		for i := 0; i < n; i++ {
			if i > 0 {
				buf.WriteByte(',')
			}
			fmt.Fprintf(&buf, `{"reading":%d}`, from+i)
		}
		buf.WriteByte(']')
		resp, err := api.Post("http://agent/v1/telemetry", "application/json", &buf)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct{ IDs []string }
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("post: %d %v", resp.StatusCode, err)
		}
		return out.IDs
	}
	var all []string
	for i := 0; i < 10; i++ {
		all = append(all, post(100, i*100)...)
	}
	var before Status
	getStatus := func() Status { return fetchStatus(t, api) }
	before = getStatus()
	// Force a renewal through the local API while messages are in flight.
	resp, err := api.Post("http://agent/v1/renew", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("renew: %d %s", resp.StatusCode, body)
	}
	after := getStatus()
	if after.Serial == before.Serial || after.LastRenew.Counts["ok"] != 1 {
		t.Fatalf("renewal did not change the serial: %s -> %s", before.Serial, after.Serial)
	}
	later := post(200, 5000)
	all = append(all, later...)
	poll.Until(t, 30*time.Second, "every message at the sink", func() bool { return sink.has(all) })
	sink.mu.Lock()
	for _, id := range later {
		if got := sink.serialOf[id]; got != after.Serial {
			sink.mu.Unlock()
			t.Fatalf("message %s sent with serial %s after renewal to %s", id, got, after.Serial)
		}
	}
	sink.mu.Unlock()
	poll.Until(t, 30*time.Second, "spool drained", func() bool { return getStatus().Uplinks["https"].SpoolDepth == 0 })
	st := getStatus()
	if u := st.Uplinks["https"]; !u.Connected || u.Acked != uint64(len(all)) {
		t.Fatalf("uplink status %+v, want connected with %d acked", u, len(all))
	}
	if st.DeviceID != "daemon-1" || st.Keystore != "file" || !strings.Contains(st.ClockSkew, "0s") {
		t.Fatalf("status %+v", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}

// TestRunRefusesTakenMetricsPortBeforeStarting: a metrics address in use
// fails the run before any component starts, so nothing (here, the local
// API and its socket) is left running under the spools Run then closes.
// Against a regression this check is a race (a goroutine started before
// the failure may not have created its socket yet), so it catches one
// often, not always; the error and Ready are checked deterministically.
func TestRunRefusesTakenMetricsPortBeforeStarting(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	cfg := testDaemonConfig(dir, "metrics-taken")
	cfg.Metrics.Listen = taken.Addr().String()
	tok := c.Token(t, "metrics-taken").String()
	var logs syncbuf.Buffer
	err = Run(context.Background(), Options{Config: cfg, Logger: newTestLogger(&logs),
		Ready:  func() { t.Error("Ready called although the metrics address is taken") },
		Getenv: func(k string) string { return map[string]string{"EDGEAGENT_TOKEN": tok}[k] }})
	if err == nil || !strings.Contains(err.Error(), "metrics.listen") {
		t.Fatalf("Run with the metrics address taken: %v, want an error naming metrics.listen", err)
	}
	if _, err := os.Stat(cfg.API.Socket); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the local API started before the metrics address was checked (%s: %v)", cfg.API.Socket, err)
	}
}

// fetchStatus reads the running agent's GET /v1/status.
func fetchStatus(t *testing.T, api *http.Client) Status {
	t.Helper()
	resp, err := api.Get("http://agent/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// testDaemonConfig is the config of an agent under test: device id, state
// and API socket in dir, no metrics listener, no collector.
func testDaemonConfig(dir, deviceID string) config.Config {
	cfg := config.Default()
	cfg.DeviceID = deviceID
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.API.Socket = filepath.Join(dir, "api.sock")
	cfg.Metrics.Listen = ""
	cfg.Collector.Interval = 0
	return cfg
}
