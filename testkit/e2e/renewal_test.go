package e2e

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// issued is one certificate the CA issued to a device, from its audit log.
type issued struct {
	At     time.Time
	Op     string
	Serial string
}

// issuedTo lists the CA's successful issuances to device, oldest first.
func issuedTo(t testing.TB, c *testpki.EdgeCA, device string) []issued {
	t.Helper()
	recs, err := c.Audit(context.Background(), 10000)
	if err != nil {
		t.Fatal(err)
	}
	var out []issued
	for _, r := range recs {
		if r.DeviceID == device && r.Result == store.ResultOK && r.Serial != "" {
			out = append(out, issued{At: r.Time, Op: r.Op, Serial: r.Serial})
		}
	}
	slices.Reverse(out)
	return out
}

// stream posts a message to the agent every interval until stop, and
// returns the ids it accepted.
type stream struct {
	mu   sync.Mutex
	ids  []string
	errs int
	stop chan struct{}
	done chan struct{}
}

func startStream(a *daemon, every time.Duration) *stream {
	s := &stream{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			id, err := a.send(fmt.Sprintf(`{"n":%d}`, n))
			s.mu.Lock()
			if err != nil {
				s.errs++
			} else {
				s.ids = append(s.ids, id)
			}
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *stream) end() []string {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids
}

// scrape reads the agent's /metrics and parses it as Prometheus text.
func scrape(t testing.TB, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("metrics content type %q", ct)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("metrics are not valid Prometheus text: %v", err)
	}
	return fams
}

// metricValue returns the value of the sample of name with the labels.
func metricValue(t testing.TB, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s missing", name)
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		}
		return m.GetUntyped().GetValue()
	}
	t.Fatalf("metric %s%v has no such sample", name, labels)
	return 0
}

// TestTwentySecondCertificates runs the agent process for 100 s on
// 20-second certificates (testca with a lowered minimum: edgeca's command
// line refuses lifetimes under a minute) with a message every 100 ms.
// Every renewal must come in its window (not back to back after the
// previous issuance, before the previous certificate expired); mosquitto,
// pinned to TLS 1.2 so a relay can read the client Certificate message it
// receives, must see each new certificate on the agent's next connection,
// never an older or an expired one; every message must arrive. At the end
// the agent's metrics are scraped and parsed as Prometheus text.
func TestTwentySecondCertificates(t *testing.T) {
	t.Parallel()
	mosquitto.Binary(t)
	const ttl = 20 * time.Second
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{CertTTL: ttl, MinTTL: ttl})
	be := startBackend(t, c.Dir, func(o *mosquitto.Options) { o.MaxTLS12 = true })
	proxy := startCertProxy(t, be.broker.Addr)
	work := t.TempDir()
	sock := filepath.Join(work, "api.sock")
	cfgFile := filepath.Join(work, "edgeagent.yaml")
	metricsAddr := freePort(t)
	agentConfig{DeviceID: "short-dev", StateDir: filepath.Join(work, "state"), Socket: sock, Metrics: metricsAddr,
		MQTTURL: "mqtts://" + proxy.Addr(), MQTTCA: be.caFile, RetryMin: "1s", RetryMax: "4s"}.write(t, cfgFile)
	a := startDaemon(t, cfgFile, sock, "EDGEAGENT_TOKEN="+c.Token(t, "short-dev").String())
	s := startStream(a, 100*time.Millisecond)
	const run = 100 * time.Second
	timer := time.NewTimer(run)
	select {
	case <-timer.C:
	case <-a.done:
		t.Fatalf("agent exited: %v", a.err)
	}
	ids := s.end()
	poll.Until(t, 60*time.Second, "every accepted message at the subscriber", func() bool { return be.has(ids) })
	_, dups := be.seen.check(ids)
	if s.errs > 0 {
		t.Fatalf("the agent refused %d messages", s.errs)
	}

	certs := issuedTo(t, c, "short-dev")
	if len(certs) < 6 {
		t.Fatalf("%d certificates in %v of 20-second certificates: %+v", len(certs), run, certs)
	}
	var gaps []string
	for i := 1; i < len(certs); i++ {
		gap := certs[i].At.Sub(certs[i-1].At)
		gaps = append(gaps, gap.Round(100*time.Millisecond).String())
		// The window opens at 0.66-0.05 of the life counted from issuance
		// (lifecycle.Schedule); NotAfter is encoded to the second, so allow
		// that much. It closes at expiry.
		if gap < time.Duration(0.55*float64(ttl)) {
			t.Errorf("renewal %d came %v after the previous issuance: before its window", i, gap)
		}
		if gap >= ttl {
			t.Errorf("renewal %d came %v after the previous issuance: after expiry", i, gap)
		}
		if certs[i].Op != "simplereenroll" {
			t.Errorf("certificate %d came from %s, want simplereenroll", i, certs[i].Op)
		}
	}

	// What the broker was presented, connection by connection.
	conns := proxy.Presented()
	notAfter := map[string]time.Time{}
	index := map[string]int{}
	for i, ci := range certs {
		notAfter[ci.Serial] = ci.At.Add(ttl)
		index[ci.Serial] = i
	}
	last := -1
	used := map[string]bool{}
	stale := map[int]int{}
	for _, p := range conns {
		if p.Serial == "" {
			t.Errorf("a connection to the broker without a visible certificate: %s", p.Note)
			continue
		}
		i, ok := index[p.Serial]
		if !ok {
			t.Errorf("the broker was presented serial %s, which the CA never issued to this device", p.Serial)
			continue
		}
		if i < last {
			t.Errorf("at %v the broker was presented certificate %d after certificate %d", p.At, i, last)
		}
		last = max(last, i)
		if !p.At.Before(notAfter[p.Serial]) {
			t.Errorf("at %v the broker was presented certificate %d, expired at %v", p.At, i, notAfter[p.Serial])
		}
		// The connection that follows a renewal carries its certificate:
		// only a handshake already under way when the new certificate
		// arrived may present the old one. Counted, not timed, so a loaded
		// machine cannot fail it.
		if i+1 < len(certs) && p.At.After(certs[i+1].At) {
			stale[i]++
			if stale[i] > 1 {
				t.Errorf("at %v, %v after certificate %d was issued, the broker was presented certificate %d again (%d connections)", p.At, p.At.Sub(certs[i+1].At), i+1, i, stale[i])
			}
		}
		used[p.Serial] = true
	}
	for i, ci := range certs {
		// The last certificate may have come just before the end.
		if !used[ci.Serial] && i < len(certs)-1 {
			t.Errorf("certificate %d (serial %s, issued %v) was never presented to the broker", i, ci.Serial, ci.At)
		}
	}
	t.Logf("%d certificates, issued apart: %s; %d broker connections; %d messages, all delivered, %d duplicates",
		len(certs), strings.Join(gaps, " "), len(conns), len(ids), dups)

	fams := scrape(t, metricsAddr)
	if v := metricValue(t, fams, "edgeagent_cert_expiry_seconds"); v <= 0 || v > ttl.Seconds() {
		t.Errorf("edgeagent_cert_expiry_seconds %v, want in (0, %v]", v, ttl.Seconds())
	}
	if v := metricValue(t, fams, "edgeagent_renewals_total", "result", "ok"); v < float64(len(certs)-1) {
		t.Errorf("edgeagent_renewals_total{result=ok} %v, want at least %d", v, len(certs)-1)
	}
	metricValue(t, fams, "edgeagent_renewals_total", "result", "error")
	if v := metricValue(t, fams, "edgeagent_uplink_connected", "uplink", "mqtt"); v != 1 {
		t.Errorf("edgeagent_uplink_connected{uplink=mqtt} %v", v)
	}
	if v := metricValue(t, fams, "edgeagent_messages_total", "uplink", "mqtt", "result", "acked"); v < float64(len(ids)) {
		t.Errorf("edgeagent_messages_total{acked} %v, want at least %d", v, len(ids))
	}
	if v := metricValue(t, fams, "edgeagent_messages_total", "uplink", "mqtt", "result", "dropped"); v != 0 {
		t.Errorf("edgeagent_messages_total{dropped} %v", v)
	}
	if v := metricValue(t, fams, "edgeagent_spool_bytes", "uplink", "mqtt"); v < 0 {
		t.Errorf("edgeagent_spool_bytes %v", v)
	}
	if v := metricValue(t, fams, "edgeagent_clock_skew_seconds"); math.Abs(v) > 2 {
		t.Errorf("edgeagent_clock_skew_seconds %v on a machine whose agent and CA share a clock", v)
	}
	if v := metricValue(t, fams, "edgeagent_clock_correction_seconds"); v != 0 {
		t.Errorf("edgeagent_clock_correction_seconds %v for a plausible clock", v)
	}
}
