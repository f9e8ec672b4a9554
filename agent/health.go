package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/edgeagent/edgeagent/agent/metrics"
	"github.com/edgeagent/edgeagent/agent/sdnotify"
)

// health owns what the agent says about itself: whether it is healthy
// (for /healthz, status and the metrics), the metrics endpoint, and
// systemd's readiness and watchdog.
type health struct {
	now        func() time.Time
	stallAfter time.Duration
	status     func() Status
	log        *slog.Logger

	mu sync.Mutex
	// reported are the problems logged and not yet cleared.
	reported map[string]bool
	// progress is, per uplink, the acked count last seen and when it
	// last changed (or the spool was last seen empty).
	progress map[string]uplinkProgress
}

type uplinkProgress struct {
	acked uint64
	at    time.Time
}

func newHealth(now func() time.Time, stallAfter time.Duration, status func() Status, log *slog.Logger) *health {
	return &health{now: now, stallAfter: stallAfter, status: status, log: log, progress: map[string]uplinkProgress{}, reported: map[string]bool{}}
}

// healthInterval is how often Run samples health to log its changes.
const healthInterval = 5 * time.Second

// Run samples the health every healthInterval until ctx ends, so that a
// problem is logged (at error level, once, and again when it clears) even
// when nobody asks /healthz or status.
func (h *health) Run(ctx context.Context) error {
	t := time.NewTicker(healthInterval)
	defer t.Stop()
	for {
		h.Snapshot()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// report logs problems that appeared and cleared since the last sample.
// Each problem's text names its subject first; it is keyed by that
// subject so that a growing duration in the text is not a new problem.
func (h *health) report(problems []string) {
	now := map[string]string{}
	for _, p := range problems {
		key := p
		if i := strings.Index(p, " for "); i > 0 {
			key = p[:i]
		}
		now[key] = p
	}
	for key, p := range now {
		if !h.reported[key] {
			h.reported[key] = true
			if h.log != nil {
				h.log.Error("UNHEALTHY: "+p, "problem", key)
			}
		}
	}
	for key := range h.reported {
		if _, ok := now[key]; !ok {
			delete(h.reported, key)
			if h.log != nil {
				h.log.Info("health: resolved", "problem", key)
			}
		}
	}
}

// observe records each uplink's progress in st and returns st with its
// health filled in. Acked counts only grow (a reload's new uplink starts
// again from 0, which also counts as a change), so sampling whenever
// someone asks is enough: an unchanged count since the last sample means
// nothing was delivered in between.
func (h *health) observe(st Status) Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	progress := map[string]time.Time{}
	for name, u := range st.Uplinks {
		p, ok := h.progress[name]
		if !ok || p.acked != u.Acked || u.SpoolDepth == 0 {
			p = uplinkProgress{acked: u.Acked, at: now}
		}
		h.progress[name] = p
		progress[name] = p.at
	}
	st.Problems = healthProblems(st, progress, now, h.stallAfter)
	st.Healthy = len(st.Problems) == 0
	h.report(st.Problems)
	return st
}

// Snapshot is the status with its health.
func (h *health) Snapshot() Status { return h.observe(h.status()) }

// healthProblems is the pure decision on health: the identity expired,
// a spool cannot store messages (a full disk, say), a broker drops the
// device's publishes, or an uplink with messages waiting delivered nothing for stallAfter
// (0 disables that check) since progress[uplink].
func healthProblems(st Status, progress map[string]time.Time, now time.Time, stallAfter time.Duration) []string {
	var out []string
	if !st.NotAfter.IsZero() && !now.Before(st.NotAfter) {
		out = append(out, fmt.Sprintf("the certificate expired at %s", st.NotAfter.UTC().Format(time.RFC3339)))
	}
	names := make([]string, 0, len(st.Uplinks))
	for n := range st.Uplinks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		u := st.Uplinks[n]
		if u.SpoolError != "" {
			out = append(out, fmt.Sprintf("spool %s: %s", n, u.SpoolError))
		}
		if u.Dropping {
			out = append(out, fmt.Sprintf("uplink %s: the broker acknowledges but does not deliver this device's messages "+
				"(its own retained status never came back): check the broker's ACL for the device's topics", n))
		}
		if since, ok := progress[n]; ok && stallAfter > 0 && u.SpoolDepth > 0 && now.Sub(since) >= stallAfter {
			out = append(out, fmt.Sprintf("uplink %s delivered nothing for %s while %d messages wait (health.stall_after %s)",
				n, now.Sub(since).Round(time.Second), u.SpoolDepth, stallAfter))
		}
	}
	return out
}

// handler serves /healthz (200 "ok", or 503 with the problems) and
// /metrics.
func (h *health) handler(families func(Status) []metrics.Family) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := h.Snapshot()
		if !st.Healthy {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, p := range st.Problems {
				fmt.Fprintln(w, p)
			}
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_ = metrics.Write(w, families(h.Snapshot()))
	})
	return mux
}

// Bounds of the metrics listener: a local user must not be able to hold
// the agent's file descriptors (the MQTT uplink needs some to reconnect)
// or its memory.
const (
	metricsMaxConns    = 16
	metricsIdleTimeout = 30 * time.Second
	metricsReadTimeout = 10 * time.Second
)

// serveMetrics serves h on ln until ctx ends.
func (h *health) serveMetrics(ctx context.Context, ln net.Listener, families func(Status) []metrics.Family) error {
	srv := &http.Server{Handler: h.handler(families), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: metricsReadTimeout,
		WriteTimeout: metricsReadTimeout, IdleTimeout: metricsIdleTimeout, MaxHeaderBytes: 8 << 10}
	stop := context.AfterFunc(ctx, func() {
		shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	})
	defer stop()
	if err := srv.Serve(netutil.LimitListener(ln, metricsMaxConns)); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// watchdog sends WATCHDOG=1 every interval until ctx ends. Status comes
// from every part's own state: the watchdog proves the process is
// scheduled and none of those states is wedged.
func (h *health) watchdog(ctx context.Context, notify *sdnotify.Notifier, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			_ = notify.Notify("WATCHDOG=1\nSTATUS=" + statusLine(h.Snapshot()))
		}
	}
}

// processFamilies are the usual process and Go series.
func processFamilies(start time.Time) []metrics.Family {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fams := []metrics.Family{
		{Name: "go_goroutines", Help: "Number of goroutines.", Type: metrics.Gauge, Samples: []metrics.Sample{{Value: float64(runtime.NumGoroutine())}}},
		{Name: "go_memstats_heap_alloc_bytes", Help: "Heap bytes allocated and in use.", Type: metrics.Gauge, Samples: []metrics.Sample{{Value: float64(ms.HeapAlloc)}}},
		{Name: "go_memstats_sys_bytes", Help: "Bytes obtained from the system.", Type: metrics.Gauge, Samples: []metrics.Sample{{Value: float64(ms.Sys)}}},
		{Name: "process_start_time_seconds", Help: "Start time of the process since the epoch in seconds.", Type: metrics.Gauge,
			Samples: []metrics.Sample{{Value: float64(start.UnixNano()) / 1e9}}},
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		fams = append(fams, metrics.Family{Name: "process_open_fds", Help: "Number of open file descriptors.", Type: metrics.Gauge,
			Samples: []metrics.Sample{{Value: float64(len(fds))}}})
	}
	return fams
}
