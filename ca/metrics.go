package ca

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	wire "github.com/edgeagent/edgeagent/enroll/attest"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/internal/version"
)

// MetricsPath is where the health address serves Prometheus metrics.
const MetricsPath = "/metrics"

// Metrics are written by hand in the Prometheus text exposition format
// (version 0.0.4): a dozen families do not need client_golang and its
// dependencies. Counters are this replica's since it started; the fleet
// gauges are read from the shared store (fleetSummary), so every replica
// reports the same fleet and dashboards take max() over replicas.

// storeLatencyBuckets are the upper bounds (seconds) of the store latency
// histogram: an fsync of SQLite to a PostgreSQL round trip under load.
var storeLatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// Store operations timed by the histogram.
const (
	storeOpIssue = "issue"
	storeOpPing  = "ping"
)

type histogram struct {
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	n      uint64
}

func (h *histogram) observe(v float64) {
	i := sort.SearchFloat64s(storeLatencyBuckets, v)
	h.counts[i]++
	h.sum += v
	h.n++
}

// metrics are the in-process counters. Their label values come from
// fixed sets (EST operations the server knows, its error codes), never
// from what a client sent, so they stay bounded.
type metrics struct {
	mu       sync.Mutex
	issued   map[string]uint64    // by op
	refused  map[[2]string]uint64 // by op, code
	storeLat map[string]*histogram
}

// issueOps are the operations that issue certificates, always reported
// (at zero before the first), so that rules and dashboards find them.
var issueOps = []string{est.OpSimpleEnroll, est.OpSimpleReenroll, wire.OpFinish}

func newMetrics() *metrics {
	m := &metrics{issued: map[string]uint64{}, refused: map[[2]string]uint64{}, storeLat: map[string]*histogram{}}
	for _, op := range issueOps {
		m.issued[op] = 0
	}
	for _, op := range []string{storeOpIssue, storeOpPing} {
		m.storeLat[op] = &histogram{counts: make([]uint64, len(storeLatencyBuckets)+1)}
	}
	return m
}

func (m *metrics) noteIssued(op string) {
	m.mu.Lock()
	m.issued[op]++
	m.mu.Unlock()
}

func (m *metrics) noteRefused(op string, code est.Code) {
	m.mu.Lock()
	m.refused[[2]string{op, string(code)}]++
	m.mu.Unlock()
}

func (m *metrics) noteStoreLatency(op string, d time.Duration) {
	m.mu.Lock()
	if h := m.storeLat[op]; h != nil {
		h.observe(d.Seconds())
	}
	m.mu.Unlock()
}

// fleetRefresh is the longest a fleet summary is reused: a scrape every
// few seconds by several Prometheus servers reads the store once per
// fleetRefresh, not once per scrape.
const fleetRefresh = 15 * time.Second

// fleetTimeout bounds one fleet refresh.
const fleetTimeout = 5 * time.Second

// fleetTop is how many devices closest to expiry, and recent refusals,
// the fleet summary keeps.
const fleetTop = 20

// maxLegacyReads bounds the certificate reads of one fleet refresh.
const maxLegacyReads = 1000

// FleetSummary is the fleet as of At, from the store.
type FleetSummary struct {
	At     time.Time
	Counts map[string]int // by state (States)
	Total  int
	// ExpiringUnrenewed counts the devices (not revoked, not expired)
	// whose certificate is in the last third of its lifetime: the agent
	// renews at about two thirds, so these missed it.
	ExpiringUnrenewed int
	Soonest           []InventoryDevice   // the not yet expired, unrevoked devices closest to expiry
	Refusals          []store.AuditRecord // the newest refusals, newest first
}

// summarizeFleet is the pure part of a fleet summary: devs sorted by
// expiry.
func summarizeFleet(devs []store.DeviceInfo, now time.Time) FleetSummary {
	s := FleetSummary{At: now, Counts: map[string]int{}, Total: len(devs)}
	for _, st := range States {
		s.Counts[st] = 0
	}
	for _, d := range devs {
		st := DeviceState(d, now)
		s.Counts[st]++
		if st == StateRevoked || st == StateExpired {
			continue
		}
		if inLastThird(d, now) {
			s.ExpiringUnrenewed++
		}
		if len(s.Soonest) < fleetTop {
			s.Soonest = append(s.Soonest, InventoryDevice{DeviceInfo: d, State: st})
		}
	}
	return s
}

// summaryCache holds the last summary.
type summaryCache struct {
	mu   sync.Mutex
	last FleetSummary
	ok   bool
}

// Summary returns the fleet summary, from the store at most once per
// fleetRefresh.
func (c *CA) Summary(ctx context.Context) (FleetSummary, error) {
	c.summary.mu.Lock()
	defer c.summary.mu.Unlock()
	now := c.now()
	if c.summary.ok && now.Sub(c.summary.last.At) < fleetRefresh && !now.Before(c.summary.last.At) {
		return c.summary.last, nil
	}
	inv, ok := c.st.(store.InventoryStore)
	if !ok {
		return FleetSummary{}, fmt.Errorf("the store %T keeps no inventory", c.st)
	}
	// Scrapes wait for one another here: bound the wait on a slow store.
	ctx, cancel := context.WithTimeout(ctx, fleetTimeout)
	defer cancel()
	devs, err := inv.Inventory(ctx, store.DeviceFilter{Sort: store.SortExpiry})
	if err != nil {
		return FleetSummary{}, fmt.Errorf("fleet summary: %w", err)
	}
	legacy := 0
	for i := range devs {
		// Listings leave the certificate out; fall back to it only for
		// rows from before the inventory recorded NotBefore (a bounded
		// number per refresh: they get it at their next renewal).
		if devs[i].NotBefore.IsZero() && devs[i].Status == store.StatusActive && legacy < maxLegacyReads {
			legacy++
			if d, err := inv.DeviceInfo(ctx, devs[i].ID); err == nil {
				devs[i].NotBefore = notBefore(d)
			}
		}
	}
	s := summarizeFleet(devs, now)
	audit, err := c.st.Audit(ctx, 500)
	if err != nil {
		return FleetSummary{}, fmt.Errorf("fleet summary: %w", err)
	}
	for _, a := range audit {
		if a.Result != store.ResultOK && len(s.Refusals) < fleetTop {
			s.Refusals = append(s.Refusals, a)
		}
	}
	c.summary.last, c.summary.ok = s, true
	return s, nil
}

// crlAge is how old the current CRL is (since its thisUpdate), false when
// there is none yet.
func (c *CA) crlAge(now time.Time) (time.Duration, bool) {
	c.crl.mu.Lock()
	der := c.crl.der
	c.crl.mu.Unlock()
	if der == nil {
		return 0, false
	}
	rl, err := x509.ParseRevocationList(der)
	if err != nil {
		return 0, false
	}
	return now.Sub(rl.ThisUpdate), true
}

// serveMetrics answers GET /metrics.
func (c *CA) serveMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	bw := bufio.NewWriter(w)
	c.writeMetrics(r.Context(), bw)
	_ = bw.Flush()
}

func family(w io.Writer, name, typ, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

// labelValue escapes a label value (\, " and newline).
func labelValue(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

func (c *CA) writeMetrics(ctx context.Context, w io.Writer) {
	now := c.now()
	m := c.metrics
	m.mu.Lock()
	issued := make(map[string]uint64, len(m.issued))
	for k, v := range m.issued {
		issued[k] = v
	}
	refused := make(map[[2]string]uint64, len(m.refused))
	for k, v := range m.refused {
		refused[k] = v
	}
	lat := map[string]histogram{}
	for k, h := range m.storeLat {
		lat[k] = histogram{counts: slices.Clone(h.counts), sum: h.sum, n: h.n}
	}
	m.mu.Unlock()

	family(w, "edgeca_certificates_issued_total", "counter", "Certificates this replica issued (retries answered with the same certificate included), by EST operation.")
	for _, op := range sortedKeys(issued) {
		fmt.Fprintf(w, "edgeca_certificates_issued_total{op=\"%s\"} %d\n", labelValue(op), issued[op])
	}
	family(w, "edgeca_refusals_total", "counter", "Enrollment and renewal requests this replica refused, by EST operation and error code (shed requests are in edgeca_shed_requests_total).")
	rkeys := make([][2]string, 0, len(refused))
	for k := range refused {
		rkeys = append(rkeys, k)
	}
	slices.SortFunc(rkeys, func(a, b [2]string) int { return strings.Compare(a[0]+"\x00"+a[1], b[0]+"\x00"+b[1]) })
	for _, k := range rkeys {
		fmt.Fprintf(w, "edgeca_refusals_total{op=\"%s\",code=\"%s\"} %d\n", labelValue(k[0]), labelValue(k[1]), refused[k])
	}
	family(w, "edgeca_shed_requests_total", "counter", "Enrollments this replica refused with 503 and Retry-After because it was at capacity (load shedding).")
	fmt.Fprintf(w, "edgeca_shed_requests_total %d\n", c.Shed())

	family(w, "edgeca_store_latency_seconds", "histogram", "Latency of store operations: issue (the enrollment's transaction) and ping (the readiness check).")
	for _, op := range sortedKeys(lat) {
		h := lat[op]
		var cum uint64
		for i, ub := range storeLatencyBuckets {
			cum += h.counts[i]
			fmt.Fprintf(w, "edgeca_store_latency_seconds_bucket{op=\"%s\",le=\"%s\"} %d\n", op, fmtFloat(ub), cum)
		}
		cum += h.counts[len(storeLatencyBuckets)]
		fmt.Fprintf(w, "edgeca_store_latency_seconds_bucket{op=\"%s\",le=\"+Inf\"} %d\n", op, cum)
		fmt.Fprintf(w, "edgeca_store_latency_seconds_sum{op=\"%s\"} %s\n", op, fmtFloat(h.sum))
		fmt.Fprintf(w, "edgeca_store_latency_seconds_count{op=\"%s\"} %d\n", op, h.n)
	}

	if age, ok := c.crlAge(now); ok {
		family(w, "edgeca_crl_age_seconds", "gauge", "Seconds since the thisUpdate of the CRL this replica serves (thisUpdate is back-dated a minute).")
		fmt.Fprintf(w, "edgeca_crl_age_seconds %s\n", fmtFloat(age.Seconds()))
	}

	family(w, "edgeca_build_info", "gauge", "Build of this edgeca (always 1).")
	fmt.Fprintf(w, "edgeca_build_info{version=\"%s\",commit=\"%s\",goversion=\"%s\"} 1\n", labelValue(version.Version), labelValue(version.Commit), labelValue(runtime.Version()))

	ready := 1
	if err := c.Ready(ctx); err != nil {
		ready = 0
	}
	family(w, "edgeca_ready", "gauge", "1 when this replica can issue (keys loaded, intermediate valid, store reachable), else 0.")
	fmt.Fprintf(w, "edgeca_ready %d\n", ready)
	family(w, "edgeca_intermediate_not_after_timestamp_seconds", "gauge", "When the issuing intermediate certificate expires (Unix time).")
	fmt.Fprintf(w, "edgeca_intermediate_not_after_timestamp_seconds %d\n", c.auth.intermediate.NotAfter.Unix())

	fs, err := c.Summary(ctx)
	family(w, "edgeca_fleet_up", "gauge", "1 when the fleet gauges below could be read from the store, else 0.")
	if err != nil {
		fmt.Fprintf(w, "edgeca_fleet_up 0\n")
		return
	}
	fmt.Fprintf(w, "edgeca_fleet_up 1\n")
	family(w, "edgeca_devices", "gauge", "Devices in the registry by state (from the store, refreshed at most every 15 s; the same on every replica).")
	for _, st := range States {
		fmt.Fprintf(w, "edgeca_devices{state=\"%s\"} %d\n", st, fs.Counts[st])
	}
	family(w, "edgeca_certificates_expiring_unrenewed", "gauge", "Devices whose certificate is in the last third of its lifetime without a renewal (not revoked, not expired).")
	fmt.Fprintf(w, "edgeca_certificates_expiring_unrenewed %d\n", fs.ExpiringUnrenewed)
	family(w, "edgeca_fleet_summary_timestamp_seconds", "gauge", "When the fleet gauges were read from the store (Unix time).")
	fmt.Fprintf(w, "edgeca_fleet_summary_timestamp_seconds %s\n", fmtFloat(float64(fs.At.UnixMilli())/1000))
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
