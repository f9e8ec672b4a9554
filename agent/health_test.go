package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent/metrics"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/syncbuf"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestHealthProblems table-tests the health decision.
func TestHealthProblems(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	valid := Status{NotAfter: now.Add(time.Hour)}
	with := func(st Status, u map[string]UplinkStatus) Status { st.Uplinks = u; return st }
	for _, c := range []struct {
		name     string
		st       Status
		progress map[string]time.Time
		stall    time.Duration
		want     []string // substrings, one per problem
	}{
		{"healthy", valid, nil, time.Minute, nil},
		{"expired", Status{NotAfter: now}, nil, time.Minute, []string{"certificate expired"}},
		{"stalled with messages waiting", with(valid, map[string]UplinkStatus{"mqtt": {SpoolDepth: 3}}),
			map[string]time.Time{"mqtt": now.Add(-time.Minute)}, time.Minute, []string{"uplink mqtt delivered nothing for 1m0s while 3 messages wait"}},
		{"not stalled long enough", with(valid, map[string]UplinkStatus{"mqtt": {SpoolDepth: 3}}),
			map[string]time.Time{"mqtt": now.Add(-59 * time.Second)}, time.Minute, nil},
		{"nothing waiting", with(valid, map[string]UplinkStatus{"mqtt": {}}),
			map[string]time.Time{"mqtt": now.Add(-time.Hour)}, time.Minute, nil},
		{"check disabled", with(valid, map[string]UplinkStatus{"https": {SpoolDepth: 3}}),
			map[string]time.Time{"https": now.Add(-time.Hour)}, 0, nil},
		{"spool cannot store", with(valid, map[string]UplinkStatus{"mqtt": {SpoolError: "cannot store messages since T: no space"}, "https": {}}),
			nil, time.Minute, []string{"spool mqtt: cannot store messages since T: no space"}},
		{"both, in order", with(Status{NotAfter: now.Add(-time.Second)}, map[string]UplinkStatus{"mqtt": {SpoolDepth: 1}, "https": {SpoolDepth: 2}}),
			map[string]time.Time{"mqtt": now.Add(-time.Hour), "https": now.Add(-time.Hour)}, time.Minute,
			[]string{"certificate expired", "uplink https", "uplink mqtt"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := healthProblems(c.st, c.progress, now, c.stall)
			if len(got) != len(c.want) {
				t.Fatalf("problems %q, want %d", got, len(c.want))
			}
			for i, w := range c.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d %q, want %q", i, got[i], w)
				}
			}
		})
	}
}

// TestHealthObserveCountsProgress: an acked count that moves, or an empty
// spool, is progress; an unchanged count with messages waiting is not.
func TestHealthObserveCountsProgress(t *testing.T) {
	clk := newFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var st Status
	st.NotAfter = clk.Now().Add(24 * time.Hour)
	var logs syncbuf.Buffer
	h := newHealth(clk.Now, time.Minute, func() Status { return st }, newTestLogger(&logs))
	step := func(acked uint64, depth int, after time.Duration) Status {
		clk.mu.Lock()
		clk.now = clk.now.Add(after)
		clk.mu.Unlock()
		st.Uplinks = map[string]UplinkStatus{"mqtt": {Acked: acked, SpoolDepth: depth}}
		return h.Snapshot()
	}
	for i, c := range []struct {
		acked   uint64
		depth   int
		after   time.Duration
		healthy bool
	}{
		{0, 5, 0, true},                // first sample
		{0, 5, 59 * time.Second, true}, // not yet
		{0, 5, time.Second, false},     // a minute without delivery
		{3, 2, time.Second, true},      // delivered
		{3, 2, 2 * time.Minute, false}, // stuck again
		{3, 0, time.Second, true},      // nothing waits
		{3, 4, 30 * time.Second, true}, // new messages, 30 s since the empty spool
	} {
		if got := step(c.acked, c.depth, c.after); got.Healthy != c.healthy {
			t.Fatalf("step %d: healthy %v, want %v (%q)", i, got.Healthy, c.healthy, got.Problems)
		}
	}
	// Each stall was logged once when it began and once when it cleared,
	// although it was sampled as its duration grew.
	if n := strings.Count(logs.String(), "level=ERROR msg=\"UNHEALTHY: uplink mqtt delivered nothing"); n != 2 {
		t.Fatalf("%d error lines for two stalls:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "health: resolved"); n != 2 {
		t.Fatalf("%d resolved lines for two stalls:\n%s", n, logs.String())
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestHealthzTellsTheTruth runs the daemon against an HTTPS backend that
// goes away while messages wait: /healthz turns 503 naming the uplink, the
// status says unhealthy, and /metrics has the build info, the
// certificate's not-after, the send errors and process series.
func TestHealthzTellsTheTruth(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	sink := newHTTPSSink(t, c)
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(c.Token(t, "health-1").String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonConfig(dir, "health-1")
	cfg.Enroll.TokenFile = tokFile
	cfg.HTTPS.URL, cfg.HTTPS.CABundle = sink.srv.URL+"/ingest", sink.caFile
	cfg.Spool.Sync = "never"
	cfg.Metrics.Listen = freeAddr(t)
	cfg.Health.StallAfter = time.Second
	cfg.Renew.RetryMin = time.Second
	cfg.Shutdown.DrainTimeout = 0 // the backend is gone: do not wait for it at the end
	api := startDaemon(t, Options{Config: cfg})
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + cfg.Metrics.Listen + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	poll.Until(t, 30*time.Second, "/healthz ok", func() bool { code, _ := get("/healthz"); return code == http.StatusOK })
	ids := postTelemetry(t, api, 5)
	poll.Until(t, 30*time.Second, "delivery", func() bool { return sink.has(ids) })

	sink.srv.Close() // the backend goes away
	postTelemetry(t, api, 5)
	var body string
	poll.Until(t, 30*time.Second, "/healthz to fail", func() bool {
		var code int
		code, body = get("/healthz")
		return code == http.StatusServiceUnavailable
	})
	if !strings.Contains(body, "uplink https delivered nothing") {
		t.Fatalf("/healthz body %q", body)
	}
	if st := fetchStatus(t, api); st.Healthy || len(st.Problems) == 0 {
		t.Fatalf("status healthy=%v problems %q", st.Healthy, st.Problems)
	}
	var metrics string
	poll.Until(t, 30*time.Second, "send errors counted", func() bool {
		_, metrics = get("/metrics")
		return !strings.Contains(metrics, `edgeagent_uplink_send_errors_total{uplink="https"} 0`) &&
			strings.Contains(metrics, `edgeagent_uplink_send_errors_total{uplink="https"}`)
	})
	st := fetchStatus(t, api)
	if !strings.Contains(metrics, "process_start_time_seconds 1.") {
		t.Errorf("/metrics: no plausible process start time:\n%s", metrics)
	}
	for _, want := range []string{
		"edgeagent_build_info{", "edgeagent_healthy 0", "process_open_fds ", "go_goroutines ",
		"edgeagent_cert_not_after_timestamp_seconds " + strconv.FormatFloat(float64(st.NotAfter.Unix()), 'g', -1, 64),
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, metrics)
		}
	}
}

// countingListener counts the connections it has accepted and not yet
// closed, and the most at once.
type countingListener struct {
	net.Listener
	mu        sync.Mutex
	open, max int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.open++
	l.max = max(l.max, l.open)
	l.mu.Unlock()
	return &countedConn{Conn: c, l: l}, nil
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// TestMetricsListenerIsBounded: local users who open connections and send
// nothing hold at most metricsMaxConns of the agent's descriptors, are
// dropped by the header timeout, and /healthz answers again after that.
func TestMetricsListenerIsBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	now := time.Now()
	h := newHealth(func() time.Time { return now }, 0, func() Status { return Status{NotAfter: now.Add(time.Hour)} }, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.serveMetrics(ctx, cl, func(Status) []metrics.Family { return nil }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var idle []net.Conn
	for i := 0; i < metricsMaxConns+8; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	poll.Until(t, 30*time.Second, "the listener full", func() bool {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		return cl.open == metricsMaxConns
	})
	// The idle ones are dropped by the header timeout; then /healthz
	// answers.
	client := &http.Client{}
	poll.Until(t, 30*time.Second, "/healthz after the idle connections were dropped", func() bool {
		resp, err := client.Get("http://" + ln.Addr().String() + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.max > metricsMaxConns {
		t.Fatalf("%d connections at once, the bound is %d", cl.max, metricsMaxConns)
	}
}
