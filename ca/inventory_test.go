package ca

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
)

func TestDeviceState(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	base := store.DeviceInfo{Device: store.Device{ID: "d", Status: store.StatusActive, NotAfter: now.Add(8 * time.Hour)},
		NotBefore: now.Add(-16 * time.Hour), IssuedAt: now.Add(-16 * time.Hour)}
	with := func(f func(*store.DeviceInfo)) store.DeviceInfo { d := base; f(&d); return d }
	cases := []struct {
		name string
		d    store.DeviceInfo
		want string
	}{
		{"fresh", with(func(d *store.DeviceInfo) { d.NotAfter = now.Add(20 * time.Hour) }), StateActive},
		{"exactly a third left", base, StateActive},
		{"under a third left", with(func(d *store.DeviceInfo) { d.NotAfter = now.Add(7 * time.Hour) }), StateExpiring},
		{"expired", with(func(d *store.DeviceInfo) { d.NotAfter = now }), StateExpired},
		{"revoked beats expired", with(func(d *store.DeviceInfo) { d.Status, d.NotAfter = store.StatusRevoked, now.Add(-time.Hour) }), StateRevoked},
		{"refused after issuance", with(func(d *store.DeviceInfo) {
			d.Renewal = store.RenewalResult{Result: store.RenewalRefused, At: now.Add(-time.Hour)}
		}), StateRenewalFailing},
		{"refused before a token re-enrollment", with(func(d *store.DeviceInfo) {
			d.Renewal = store.RenewalResult{Result: store.RenewalRefused, At: now.Add(-20 * time.Hour)}
		}), StateActive},
		{"expired beats failing", with(func(d *store.DeviceInfo) {
			d.NotAfter = now.Add(-time.Second)
			d.Renewal = store.RenewalResult{Result: store.RenewalRefused, At: now.Add(-time.Hour)}
		}), StateExpired},
		{"no NotBefore known: never expiring", with(func(d *store.DeviceInfo) { d.NotBefore, d.NotAfter = time.Time{}, now.Add(time.Minute) }), StateActive},
	}
	for _, tc := range cases {
		if got := DeviceState(tc.d, now); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestAgentOf(t *testing.T) {
	cases := []struct{ ua, want string }{
		{"edgeagent/1.4.0", "edgeagent/1.4.0"},
		{"edgeagent/1.4.0 (linux; arm64)", "edgeagent/1.4.0"},
		{"  curl/8.1.2  ", "curl/8.1.2"},
		{"", ""},
		{"evil\x1b[31m/\n1", "evil31m/1"},
		{"<script>alert(1)</script>", "scriptalert1/script"},
		{strings.Repeat("a", 500), strings.Repeat("a", maxAgentLen)},
	}
	for _, tc := range cases {
		if got := agentOf(tc.ua); got != tc.want {
			t.Errorf("agentOf(%q) = %q, want %q", tc.ua, got, tc.want)
		}
	}
}

func TestContactThrottle(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	th := newContactThrottle()
	steps := []struct {
		key  string
		at   time.Duration
		want bool
	}{
		{"a", 0, true},
		{"a", 30 * time.Second, false},
		{"b", 30 * time.Second, true},
		{"a", 59 * time.Second, false},
		{"a", time.Minute, true},
		{"a", -time.Hour, true}, // a clock that went back does not stop writes for an hour
	}
	for i, st := range steps {
		if got := th.allow(st.key, t0.Add(st.at)); got != st.want {
			t.Errorf("step %d: allow(%s, +%s) = %v, want %v", i, st.key, st.at, got, st.want)
		}
	}
	th.note("c", t0)
	if th.allow("c", t0.Add(time.Second)) {
		t.Error("a noted write did not throttle")
	}
	th.sweep(t0.Add(time.Hour))
	if n := len(th.last); n != 0 {
		t.Errorf("sweep left %d entries", n)
	}
}

func TestSummarizeFleet(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	d := func(id, status string, left, life time.Duration) store.DeviceInfo {
		return store.DeviceInfo{Device: store.Device{ID: id, Status: status, NotAfter: now.Add(left)}, NotBefore: now.Add(left - life)}
	}
	devs := []store.DeviceInfo{
		d("gone", store.StatusActive, -time.Hour, 24*time.Hour),
		d("late", store.StatusActive, time.Hour, 24*time.Hour),
		d("rev", store.StatusRevoked, 2*time.Hour, 24*time.Hour),
		d("ok", store.StatusActive, 20*time.Hour, 24*time.Hour),
	}
	s := summarizeFleet(devs, now)
	want := map[string]int{StateActive: 1, StateExpiring: 1, StateRenewalFailing: 0, StateExpired: 1, StateRevoked: 1}
	for k, v := range want {
		if s.Counts[k] != v {
			t.Errorf("count %s = %d, want %d", k, s.Counts[k], v)
		}
	}
	var soon []string
	for _, x := range s.Soonest {
		soon = append(soon, x.ID)
	}
	if s.Total != 4 || s.ExpiringUnrenewed != 1 || !slices.Equal(soon, []string{"late", "ok"}) {
		t.Errorf("summary: total %d unrenewed %d soonest %v", s.Total, s.ExpiringUnrenewed, soon)
	}
}

// doUA is estClient.do with a User-Agent.
func (e *estClient) doUA(t testing.TB, method, path, contentType, ua string, body []byte) response {
	t.Helper()
	req, err := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("User-Agent", ua)
	resp, err := e.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b.String()}
}

// serveHealthOf serves the CA's health mux on a real loopback listener.
func serveHealthOf(t testing.TB, c *CA) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.ServeHealth(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return "http://" + ln.Addr().String()
}

// scrape fetches and parses /metrics: series (name{labels}) to value.
func scrape(t testing.TB, base string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(base + MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("metrics line %q has no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		if _, dup := out[line[:i]]; dup {
			t.Fatalf("metrics: series %s twice", line[:i])
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestInventoryOverEST walks one device through enrollment, renewal, a
// /cacerts fetch and a refused renewal over real TLS, and checks what the
// inventory and /metrics say at each step.
func TestInventoryOverEST(t *testing.T) {
	s := newTestServer(t, Options{CertTTL: time.Hour})
	health := serveHealthOf(t, s.ca)
	ctx := context.Background()
	key := newKey(t)
	tok := s.token(t, TokenOptions{Device: "inv-1"})
	pub := s.client(nil)
	req, _ := http.NewRequest(http.MethodPost, pub.url+est.Path("", est.OpSimpleEnroll), bytes.NewReader(csrFor(t, key, "inv-1")))
	req.Header.Set("Content-Type", est.MediaPKCS10)
	req.Header.Set("User-Agent", "edgeagent/9.1.0 (linux)")
	req.SetBasicAuth(tok.ID, tok.Secret)
	resp, err := pub.http.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("enroll: %v %v", resp, err)
	}
	resp.Body.Close()
	d, err := s.ca.DeviceDetail(ctx, "INV-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Agent != "edgeagent/9.1.0" || d.State != StateActive || len(d.History) != 1 || d.History[0].Op != est.OpSimpleEnroll ||
		d.History[0].Serial != d.Serial || !d.History[0].NotBefore.Before(d.History[0].NotAfter) {
		t.Fatalf("after enrollment: %+v", d)
	}
	seen0 := d.LastSeen

	// Renew with the certificate: history grows, renewal ok, agent moves.
	// A refused enrollment (the token is used up).
	if r := pub.enroll(t, csrFor(t, newKey(t), "inv-1"), tok); errCode(r.body) != est.CodeTokenInvalid {
		t.Fatalf("second enrollment: %d %s", r.status, r.body)
	}
	cur, err := x509.ParseCertificate(d.Cert)
	if err != nil {
		t.Fatal(err)
	}
	tc := tlsCert([]*x509.Certificate{cur}, key)
	s.clock.Advance(2 * time.Minute)
	r := s.client(tc).doUA(t, http.MethodPost, est.Path("", est.OpSimpleReenroll), est.MediaPKCS10, "edgeagent/9.2.0", csrFor(t, key, "inv-1", "urn:edgeagent:device:inv-1"))
	newCert := r.certs(t)[0]
	d, err = s.ca.DeviceDetail(ctx, "inv-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Agent != "edgeagent/9.2.0" || d.Renewal.Result != store.RenewalOK || len(d.History) != 2 || d.History[0].Op != est.OpSimpleReenroll ||
		d.History[0].Serial != SerialHex(newCert.SerialNumber) || !d.LastSeen.After(seen0) {
		t.Fatalf("after renewal: %+v", d)
	}
	seen1 := d.LastSeen

	// /cacerts with the client certificate moves last seen, once a minute.
	tc2 := tlsCert([]*x509.Certificate{newCert}, key)
	s.clock.Advance(30 * time.Second)
	if r := s.client(tc2).doUA(t, http.MethodGet, est.Path("", est.OpCACerts), "", "edgeagent/9.2.0", nil); r.status != http.StatusOK {
		t.Fatalf("cacerts: %d", r.status)
	}
	if d, _ = s.ca.DeviceDetail(ctx, "inv-1"); !d.LastSeen.Equal(seen1) {
		t.Fatalf("a contact 30 s after a renewal wrote last seen: %s, was %s", d.LastSeen, seen1)
	}
	s.clock.Advance(time.Minute)
	if r := s.client(tc2).doUA(t, http.MethodGet, est.Path("", est.OpCACerts), "", "edgeagent/9.3.0", nil); r.status != http.StatusOK {
		t.Fatalf("cacerts: %d", r.status)
	}
	if d, _ = s.ca.DeviceDetail(ctx, "inv-1"); !d.LastSeen.After(seen1) || d.Agent != "edgeagent/9.3.0" {
		t.Fatalf("cacerts with the certificate a minute later: last seen %s (was %s), agent %q", d.LastSeen, seen1, d.Agent)
	}

	// A refused renewal (CSR for another identity) marks it failing.
	if r := s.client(tc2).reenroll(t, csrFor(t, key, "someone-else", "urn:edgeagent:device:someone-else")); r.status == http.StatusOK {
		t.Fatal("a renewal for another id was accepted")
	}
	d, _ = s.ca.DeviceDetail(ctx, "inv-1")
	if d.State != StateRenewalFailing || d.Renewal.Result != store.RenewalRefused || d.Renewal.Code != string(est.CodeDeviceNotAllowed) || d.Renewal.Reason == "" {
		t.Fatalf("after a refused renewal: state %s renewal %+v", d.State, d.Renewal)
	}
	list, err := s.ca.Inventory(ctx, InventoryQuery{State: StateRenewalFailing})
	if err != nil || len(list) != 1 || list[0].ID != "inv-1" {
		t.Fatalf("renewal-failing list: %+v %v", list, err)
	}

	m := scrape(t, health)
	want := map[string]float64{
		`edgeca_certificates_issued_total{op="simpleenroll"}`:                  1,
		`edgeca_certificates_issued_total{op="simplereenroll"}`:                1,
		`edgeca_refusals_total{op="simpleenroll",code="token_invalid"}`:        1,
		`edgeca_refusals_total{op="simplereenroll",code="device_not_allowed"}`: 1,
		`edgeca_devices{state="renewal-failing"}`:                              1,
		`edgeca_devices{state="active"}`:                                       0,
		`edgeca_certificates_expiring_unrenewed`:                               0,
		`edgeca_ready`:                                                         1,
		`edgeca_shed_requests_total`:                                           0,
		`edgeca_store_latency_seconds_count{op="issue"}`:                       3, // the used-up token is refused inside Issue
		`edgeca_store_latency_seconds_bucket{op="issue",le="+Inf"}`:            3,
		`edgeca_fleet_up`:                                                      1,
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("metric %s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if age, ok := m["edgeca_crl_age_seconds"]; !ok || age < 0 {
		t.Errorf("edgeca_crl_age_seconds = %v, %v", age, ok)
	}
	// Past two thirds of its life, unrenewed: expiring, counted.
	s.clock.Advance(45 * time.Minute)
	if r := s.client(tc2).reenroll(t, csrFor(t, key, "inv-1", "urn:edgeagent:device:inv-1")); r.status != http.StatusOK {
		t.Fatalf("renewal: %d %s", r.status, r.body)
	}
	s.clock.Advance(45 * time.Minute) // the new certificate (1 h) is 45 min old
	m = scrape(t, health)
	if m[`edgeca_devices{state="expiring"}`] != 1 || m[`edgeca_certificates_expiring_unrenewed`] != 1 {
		t.Errorf("45 min into a 1 h certificate: expiring %v, unrenewed %v", m[`edgeca_devices{state="expiring"}`], m[`edgeca_certificates_expiring_unrenewed`])
	}
	exp, err := s.ca.Inventory(ctx, InventoryQuery{Expiring: 20 * time.Minute})
	if err != nil || len(exp) != 1 {
		t.Fatalf("--expiring 20m: %+v %v", exp, err)
	}
	if _, err := s.ca.Inventory(ctx, InventoryQuery{State: "lost"}); err == nil {
		t.Fatal("an unknown state was accepted")
	}
}

// FuzzAgentOf: whatever a client sends as User-Agent, what is stored is
// at most maxAgentLen token characters, and cleaning twice changes
// nothing.
func FuzzAgentOf(f *testing.F) {
	for _, s := range []string{"edgeagent/1.0", "", "a b", "\x00\xff/", strings.Repeat("x/", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ua string) {
		got := agentOf(ua)
		if len(got) > maxAgentLen {
			t.Fatalf("agentOf(%q) is %d bytes", ua, len(got))
		}
		for i := 0; i < len(got); i++ {
			if c := got[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("/.-_+~", c) >= 0) {
				t.Fatalf("agentOf(%q) = %q holds %q", ua, got, c)
			}
		}
		if again := agentOf(got); again != got {
			t.Fatalf("agentOf not idempotent: %q then %q", got, again)
		}
	})
}

// TestMetricsStoreAway: with the store closed, the scrape still answers,
// saying not ready and no fleet gauges.
func TestMetricsStoreAway(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(context.Background(), dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := Open(context.Background(), dir, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	health := serveHealthOf(t, c)
	if m := scrape(t, health); m["edgeca_ready"] != 1 || m["edgeca_fleet_up"] != 1 {
		t.Fatalf("open store: ready %v fleet_up %v", m["edgeca_ready"], m["edgeca_fleet_up"])
	}
	c.summary.mu.Lock()
	c.summary.ok = false // the next scrape reads the store again
	c.summary.mu.Unlock()
	c.Close()
	m := scrape(t, health)
	if m["edgeca_ready"] != 0 || m["edgeca_fleet_up"] != 0 {
		t.Fatalf("closed store: ready %v fleet_up %v", m["edgeca_ready"], m["edgeca_fleet_up"])
	}
	if _, ok := m[`edgeca_devices{state="active"}`]; ok {
		t.Error("fleet gauges reported without a store")
	}
	if r, err := http.Get(health + FleetPath); err != nil || r.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("fleet page without a store: %v %v", r, err)
	} else {
		r.Body.Close()
	}
}
