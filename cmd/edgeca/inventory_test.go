package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	estclient "github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// fleetDevice is a device enrolled and renewed with the agent's own EST
// client (package enroll), so the CA sees its real User-Agent.
type fleetDevice struct {
	id   string
	key  *ecdsa.PrivateKey
	cert *tls.Certificate
}

func enrollWithAgentClient(t *testing.T, tok token.Token, roots *x509.CertPool, id string) *fleetDevice {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c, err := estclient.New(estclient.Options{Server: tok.URL, Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := c.SimpleEnroll(context.Background(), der, tok.ID, tok.Secret)
	if err != nil {
		t.Fatalf("enroll %s: %v", id, err)
	}
	return &fleetDevice{id: id, key: key, cert: &tls.Certificate{Certificate: [][]byte{certs[0].Raw}, PrivateKey: key, Leaf: certs[0]}}
}

func (d *fleetDevice) renew(t *testing.T, server string, roots *x509.CertPool) {
	t.Helper()
	c, err := estclient.New(estclient.Options{Server: server, Roots: roots, Certificate: func() *tls.Certificate { return d.cert }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	leaf := d.cert.Leaf
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: leaf.Subject, URIs: leaf.URIs}, d.key)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := c.SimpleReenroll(context.Background(), der)
	if err != nil {
		t.Fatalf("renew %s: %v", d.id, err)
	}
	d.cert = &tls.Certificate{Certificate: [][]byte{certs[0].Raw}, PrivateKey: d.key, Leaf: certs[0]}
}

// fleet is a served CA with three devices: fleet-1 enrolled and renewed,
// fleet-2 enrolled, fleet-3 enrolled and revoked.
type fleet struct {
	dir, url, health string
	roots            *x509.CertPool
	tokens           map[string]string // device -> token id
}

func newFleet(t *testing.T) fleet {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir)
	c, err := ca.Open(context.Background(), dir, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.Root())
	c.Close()
	healthFile := filepath.Join(t.TempDir(), "health")
	u := serve(t, dir, "--cert-ttl", "1h", "--health-listen", "127.0.0.1:0", "--health-addr-file", healthFile)
	f := fleet{dir: dir, url: u, roots: roots, health: "http://" + waitFile(t, healthFile), tokens: map[string]string{}}
	devs := map[string]*fleetDevice{}
	for _, id := range []string{"fleet-1", "fleet-2", "fleet-3"} {
		tok, err := token.Parse(mustRun(t, "token", "create", "--dir", dir, "--device", id))
		if err != nil {
			t.Fatal(err)
		}
		f.tokens[id] = tok.ID
		devs[id] = enrollWithAgentClient(t, tok, roots, id)
	}
	devs["fleet-1"].renew(t, u, roots)
	mustRun(t, "device", "revoke", "--dir", dir, "fleet-3")
	return f
}

func deviceIDs(t *testing.T, js string) []string {
	t.Helper()
	var devs []map[string]any
	if err := json.Unmarshal([]byte(js), &devs); err != nil {
		t.Fatalf("device list --json: %v\n%s", err, js)
	}
	var out []string
	for _, d := range devs {
		out = append(out, d["id"].(string))
	}
	return out
}

func csvRows(t *testing.T, s string) []map[string]string {
	t.Helper()
	recs, err := csv.NewReader(strings.NewReader(s)).ReadAll()
	if err != nil || len(recs) == 0 {
		t.Fatalf("device list --csv: %v\n%s", err, s)
	}
	var out []map[string]string
	for _, r := range recs[1:] {
		m := map[string]string{}
		for i, h := range recs[0] {
			m[h] = r[i]
		}
		out = append(out, m)
	}
	return out
}

// TestFleetInventoryCommands runs the inventory commands of the README's
// "Operating a fleet" section against a served CA.
func TestFleetInventoryCommands(t *testing.T) {
	f := newFleet(t)
	dir := f.dir
	agent := estclient.UserAgent()

	// README: edgeca device list --expiring 72h --sort expiry
	table := mustRun(t, "device", "list", "--dir", dir, "--expiring", "72h", "--sort", "expiry")
	if !strings.HasPrefix(table, "ID ") || !strings.Contains(table, "fleet-1") || !strings.Contains(table, agent) {
		t.Fatalf("device list --expiring 72h:\n%s", table)
	}
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"--json"}, []string{"fleet-1", "fleet-2", "fleet-3"}},
		{[]string{"--state", "revoked", "--json"}, []string{"fleet-3"}},
		{[]string{"--state", "active", "--json"}, []string{"fleet-1", "fleet-2"}},
		{[]string{"--state", "expired", "--json"}, nil},
		{[]string{"--state", "renewal-failing", "--json"}, nil},
		{[]string{"--token", f.tokens["fleet-2"], "--json"}, []string{"fleet-2"}},
		{[]string{"--expiring", "72h", "--json"}, []string{"fleet-1", "fleet-2", "fleet-3"}},
		{[]string{"--expiring", "1m", "--json"}, nil},
		{[]string{"--sort", "last-seen", "--limit", "1", "--json"}, []string{"fleet-1"}},
	}
	for _, tc := range cases {
		args := append([]string{"device", "list", "--dir", dir}, tc.args...)
		if got := deviceIDs(t, mustRun(t, args...)); !slices.Equal(got, tc.want) {
			t.Errorf("device list %v: %v, want %v", tc.args, got, tc.want)
		}
	}

	// Sorted by expiry: soonest first (certificate times have whole
	// seconds, so ties are in id order).
	var byExpiry []struct {
		ID       string    `json:"id"`
		NotAfter time.Time `json:"not_after"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "device", "list", "--dir", dir, "--sort", "expiry", "--json")), &byExpiry); err != nil || len(byExpiry) != 3 {
		t.Fatalf("device list --sort expiry: %v %+v", err, byExpiry)
	}
	for i := 1; i < len(byExpiry); i++ {
		a, b := byExpiry[i-1], byExpiry[i]
		if b.NotAfter.Before(a.NotAfter) || b.NotAfter.Equal(a.NotAfter) && b.ID < a.ID {
			t.Errorf("--sort expiry: %+v before %+v", a, b)
		}
	}

	// README: edgeca device list --state active --csv
	rows := csvRows(t, mustRun(t, "device", "list", "--dir", dir, "--state", "active", "--csv"))
	if len(rows) != 2 || rows[0]["id"] != "fleet-1" || rows[0]["state"] != "active" || rows[0]["agent"] != agent ||
		rows[0]["last_renewal"] != "ok" || rows[1]["last_renewal"] != "" || rows[0]["token_id"] != f.tokens["fleet-1"] {
		t.Fatalf("device list --csv: %+v", rows)
	}
	for _, r := range rows {
		for _, col := range []string{"not_before", "not_after", "last_seen"} {
			if _, err := time.Parse(time.RFC3339, r[col]); err != nil {
				t.Errorf("csv %s of %s: %q: %v", col, r["id"], r[col], err)
			}
		}
	}

	// README: edgeca device show fleet-1
	show := mustRun(t, "device", "show", "--dir", dir, "fleet-1")
	for _, want := range []string{"state:", "active", "agent:", agent, "last renewal:", "ok at", "certificate history", "simplereenroll", "simpleenroll"} {
		if !strings.Contains(show, want) {
			t.Errorf("device show lacks %q:\n%s", want, show)
		}
	}
	var dev struct {
		State   string `json:"state"`
		Agent   string `json:"agent"`
		Serial  string `json:"serial"`
		Renewal struct {
			Result string    `json:"result"`
			At     time.Time `json:"at"`
		} `json:"last_renewal"`
		Certs []struct {
			Serial    string    `json:"serial"`
			Op        string    `json:"op"`
			NotBefore time.Time `json:"not_before"`
			NotAfter  time.Time `json:"not_after"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "device", "show", "--dir", dir, "--json", "fleet-1")), &dev); err != nil {
		t.Fatal(err)
	}
	if dev.State != "active" || dev.Agent != agent || dev.Renewal.Result != "ok" || dev.Renewal.At.IsZero() || len(dev.Certs) != 2 ||
		dev.Certs[0].Serial != dev.Serial || dev.Certs[0].Op != "simplereenroll" || dev.Certs[1].Op != "simpleenroll" ||
		!dev.Certs[0].NotBefore.Before(dev.Certs[0].NotAfter) {
		t.Fatalf("device show --json: %+v", dev)
	}

	// Bad flags are usage errors that name the flag.
	for _, bad := range [][]string{{"--state", "lost"}, {"--sort", "size"}, {"--json", "--csv"}, {"--expiring", "-1h"}, {"--limit", "-2"}} {
		code, _, errOut := edgeca(t, append([]string{"device", "list", "--dir", dir}, bad...)...)
		if code != 2 || !strings.Contains(errOut, strings.TrimPrefix(bad[0], "--")) {
			t.Errorf("device list %v: exit %d: %s", bad, code, errOut)
		}
	}
}

// scrapeNames returns the sample names of a real scrape.
func scrapeNames(t *testing.T, base string) map[string]bool {
	t.Helper()
	resp, err := http.Get(base + ca.MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		names[name] = true
	}
	return names
}

var metricName = regexp.MustCompile(`\bedgeca_[a-z0-9_]+`)

// metricsMissing returns how many edgeca_ metric names text uses, and
// those of them that are not in names.
func metricsMissing(names map[string]bool, text string) (used int, missing []string) {
	for _, m := range metricName.FindAllString(text, -1) {
		used++
		if !names[m] && !slices.Contains(missing, m) {
			missing = append(missing, m)
		}
	}
	return used, missing
}

func TestMetricsMissing(t *testing.T) {
	names := map[string]bool{"edgeca_ready": true, "edgeca_store_latency_seconds_bucket": true}
	cases := []struct {
		text    string
		used    int
		missing []string
	}{
		{`edgeca_ready == 0`, 1, nil},
		{`histogram_quantile(0.9, rate(edgeca_store_latency_seconds_bucket[5m]))`, 1, nil},
		{`rate(edgeca_store_latency_seconds[5m])`, 1, []string{"edgeca_store_latency_seconds"}}, // a histogram has no bare series
		{`max(edgeca_devces) + max(edgeca_devces) > edgeca_ready`, 3, []string{"edgeca_devces"}},
		{`up == 0`, 0, nil},
	}
	for _, tc := range cases {
		used, missing := metricsMissing(names, tc.text)
		if used != tc.used || !slices.Equal(missing, tc.missing) {
			t.Errorf("%q: used %d missing %v, want %d %v", tc.text, used, missing, tc.used, tc.missing)
		}
	}
}

// TestMonitoringFiles checks the shipped alert rules and dashboard: every
// edgeca_ metric they use is in a real scrape of a serving edgeca, and the
// rules pass promtool check rules.
func TestMonitoringFiles(t *testing.T) {
	f := newFleet(t)
	// A refused renewal and enrollment, so the refusal counters have
	// samples as they would in any fleet.
	tok, _ := token.Parse(mustRun(t, "token", "create", "--dir", f.dir, "--device", "fleet-9", "--uses", "1"))
	tok.Secret = "wrong"
	c, err := estclient.New(estclient.Options{Server: tok.URL, Roots: f.roots})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "fleet-9"}}, key)
	if _, err := c.SimpleEnroll(context.Background(), der, tok.ID, tok.Secret); err == nil {
		t.Fatal("a wrong secret enrolled")
	}
	// README: curl -s http://127.0.0.1:8442/metrics
	if curl, err := exec.LookPath("curl"); err == nil {
		out, err := exec.Command(curl, "-sf", f.health+"/metrics").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "\nedgeca_ready 1\n") || !strings.Contains(string(out), `edgeca_devices{state="revoked"} 1`) {
			t.Fatalf("curl /metrics: %v\n%s", err, out)
		}
	} else {
		t.Log("LOUD: curl is not installed (scripts/test-deps.sh installs it): /metrics read with net/http only")
	}
	names := scrapeNames(t, f.health)
	if !names["edgeca_certificates_issued_total"] {
		t.Fatalf("the scrape lacks edgeca_certificates_issued_total: %v", names)
	}
	files := []string{"edgeca-alerts.yml", "edgeca-dashboard.json"}
	for _, name := range files {
		b, err := os.ReadFile(filepath.Join("..", "..", "packaging", "monitoring", name))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(name, ".json") {
			var d struct {
				Panels []struct {
					Targets []struct{ Expr string } `json:"targets"`
				} `json:"panels"`
			}
			if err := json.Unmarshal(b, &d); err != nil || len(d.Panels) == 0 {
				t.Fatalf("%s: %v", name, err)
			}
		}
		used, missing := metricsMissing(names, string(b))
		if used == 0 {
			t.Fatalf("%s uses no edgeca metric", name)
		}
		for _, m := range missing {
			t.Errorf("%s uses %s, which a scrape of edgeca does not have", name, m)
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("LOUD SKIP of the promtool part: promtool is not installed (Debian package prometheus; scripts/test-deps.sh installs it); metric names were checked")
		return
	}
	out, err := exec.Command(promtool, "check", "rules", filepath.Join("..", "..", "packaging", "monitoring", "edgeca-alerts.yml")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}
