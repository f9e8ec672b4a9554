package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// ids returns every id seen.
func (s *idSet) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.seen))
	for id := range s.seen {
		out = append(out, id)
	}
	return out
}

// startSink runs an HTTP/2 mTLS sink that requires a client certificate
// from edgeca's CA in caDir and records the ids it receives; it returns
// its address and the CA file the agent trusts for it.
func startSink(t testing.TB, caDir string) (addr, caFile string, seen *idSet) {
	t.Helper()
	pki := testpki.New(t, "sink-ca")
	clientCAs := x509.NewCertPool()
	for _, f := range []string{"intermediate.pem", "root.pem"} {
		b, err := os.ReadFile(filepath.Join(caDir, f))
		if err != nil {
			t.Fatal(err)
		}
		clientCAs.AppendCertsFromPEM(b)
	}
	seen = newIDSet()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		sc := bufio.NewScanner(zr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var got []string
		for sc.Scan() {
			got = append(got, envelopeID(sc.Bytes()))
		}
		if sc.Err() != nil {
			http.Error(w, sc.Err().Error(), 400)
			return
		}
		for _, id := range got {
			seen.add(id)
		}
	}))
	srv.EnableHTTP2 = true // the half-open case that stuck was HTTP/2's pooled connection
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*pki.Server(t).TLS}, ClientCAs: clientCAs, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), pki.CAFile(t), seen
}

// blackhole is a TCP proxy that can stop passing bytes without closing
// anything, as a path that loses every packet does. Connections open when
// the hole opens, or made while it is open, stay frozen for good (their
// far end, a NAT or the server, forgot them); after Heal new connections
// pass again.
type blackhole struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	holed bool
	conns map[net.Conn]chan struct{}
	done  chan struct{}
}

func startBlackhole(t testing.TB, target string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, target: target, conns: map[net.Conn]chan struct{}{}, done: make(chan struct{})}
	go b.accept()
	t.Cleanup(func() {
		close(b.done)
		ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
	})
	return b
}

func (b *blackhole) Addr() string { return b.ln.Addr().String() }

// Hole freezes every connection now open and every new one until Heal.
func (b *blackhole) Hole() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holed = true
	for _, freeze := range b.conns {
		select {
		case <-freeze:
		default:
			close(freeze)
		}
	}
}

// Heal lets new connections through; frozen ones stay frozen.
func (b *blackhole) Heal() {
	b.mu.Lock()
	b.holed = false
	b.mu.Unlock()
}

func (b *blackhole) accept() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		freeze := make(chan struct{})
		b.mu.Lock()
		b.conns[c] = freeze
		holed := b.holed
		b.mu.Unlock()
		if holed {
			continue // accepted, never answered: the handshake hangs
		}
		up, err := net.Dial("tcp", b.target)
		if err != nil {
			c.Close()
			continue
		}
		b.mu.Lock()
		b.conns[up] = freeze
		b.mu.Unlock()
		go b.pipe(c, up, freeze)
		go b.pipe(up, c, freeze)
	}
}

// pipe copies until the connection is frozen; then it holds what it read
// and stops reading, so the sender's data piles up unacknowledged.
func (b *blackhole) pipe(dst, src net.Conn, freeze chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-freeze:
			<-b.done
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err == io.EOF {
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
			}
			return
		}
	}
}

// faultRig is an agent process with both uplinks, a CA, mosquitto with a
// subscriber and an HTTP/2 sink.
type faultRig struct {
	be      *backend
	sinkIDs *idSet
	agent   *daemon
	metrics string
	firstID string
	cfgFile string
	sock    string
	state   string
}

func (r *faultRig) bothHave(ids []string) bool {
	m, _ := r.be.seen.check(ids)
	h, _ := r.sinkIDs.check(ids)
	return m == 0 && h == 0
}

type rigOptions struct {
	device    string
	mqttAddr  func(broker string) string // what the agent dials for the broker
	httpsAddr func(sink string) string
	stateDir  string
	spoolMax  string
}

func startFaultRig(t *testing.T, o rigOptions) *faultRig {
	t.Helper()
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	be := startBackend(t, c.Dir)
	sinkAddr, sinkCA, sinkIDs := startSink(t, c.Dir)
	work := t.TempDir()
	if o.stateDir == "" {
		o.stateDir = filepath.Join(work, "state")
	}
	mq, hs := be.broker.Addr, sinkAddr
	if o.mqttAddr != nil {
		mq = o.mqttAddr(mq)
	}
	if o.httpsAddr != nil {
		hs = o.httpsAddr(hs)
	}
	metrics := freePort(t)
	sock := filepath.Join(work, "api.sock")
	cfg := fmt.Sprintf(`device_id: %s
state_dir: %s
api:
  socket: %s
metrics:
  listen: %q
collector:
  interval: 0s
mqtt:
  url: mqtts://%s
  ca_bundle: %s
https:
  url: https://%s/ingest
  ca_bundle: %s
spool:
  max_bytes: %s
log:
  level: info
`, o.device, o.stateDir, sock, metrics, mq, be.caFile, hs, sinkCA, o.spoolMax)
	cfgFile := filepath.Join(work, "edgeagent.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startDaemon(t, cfgFile, sock, "EDGEAGENT_TOKEN="+c.Token(t, o.device).String())
	r := &faultRig{be: be, sinkIDs: sinkIDs, agent: a, metrics: metrics, cfgFile: cfgFile, sock: sock, state: o.stateDir}
	id, err := a.send(`{"first":true}`)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 60*time.Second, "the first message at the subscriber and the sink", func() bool { return r.bothHave([]string{id}) })
	r.firstID = id
	return r
}

// TestHalfOpenLinksRecover puts a black-holing proxy in front of mosquitto
// and the HTTPS sink: a path that stops passing packets without a FIN or
// RST, then heals while the old connections stay dead. Both uplinks must
// notice, dial again and deliver everything accepted, while streaming and
// when idle; the time from healing to delivery is logged (target 45 s).
func TestHalfOpenLinksRecover(t *testing.T) {
	t.Parallel()
	mosquitto.Binary(t)
	var mqttHole, httpsHole *blackhole
	r := startFaultRig(t, rigOptions{device: "halfopen-dev", spoolMax: "64MiB",
		mqttAddr:  func(a string) string { mqttHole = startBlackhole(t, a); return mqttHole.Addr() },
		httpsAddr: func(a string) string { httpsHole = startBlackhole(t, a); return httpsHole.Addr() },
	})
	recovery := func(what string, outage time.Duration, streaming bool) {
		var s *stream
		if streaming {
			s = startStream(r.agent, 100*time.Millisecond)
		}
		mqttHole.Hole()
		httpsHole.Hole()
		time.Sleep(outage) // the outage itself, not a wait for a condition
		healed := time.Now()
		mqttHole.Heal()
		httpsHole.Heal()
		var ids []string
		if streaming {
			time.Sleep(time.Second) // a little traffic after healing, too
			ids = s.end()
		} else {
			id, err := r.agent.send(`{"after":"idle outage"}`)
			if err != nil {
				t.Fatal(err)
			}
			ids = []string{id}
		}
		if len(ids) == 0 {
			t.Fatalf("%s: the agent accepted nothing during the outage", what)
		}
		var mqttAt, httpsAt time.Duration
		poll.Until(t, 3*time.Minute, what+": every accepted message at both backends after healing", func() bool {
			if m, _ := r.be.seen.check(ids); m == 0 && mqttAt == 0 {
				mqttAt = time.Since(healed)
			}
			if h, _ := r.sinkIDs.check(ids); h == 0 && httpsAt == 0 {
				httpsAt = time.Since(healed)
			}
			return mqttAt > 0 && httpsAt > 0
		})
		t.Logf("%s (%v outage, %d messages): delivered again %v after healing over MQTT, %v over HTTPS (target 45s)",
			what, outage, len(ids), mqttAt.Round(100*time.Millisecond), httpsAt.Round(100*time.Millisecond))
	}
	// Longer than every liveness bound: the uplinks find the connections
	// dead during the outage and keep trying to dial through the hole.
	recovery("streaming", 50*time.Second, true)
	// Shorter than them: at healing the uplinks still trust the frozen
	// connections, and the next message must not wait on them for ever.
	recovery("idle", 10*time.Second, false)
}

// post sends a batch of n messages and returns the status, the ids
// accepted and the Retry-After header.
func postBatch(t testing.TB, a *daemon, from, n int) (int, []string, string) {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i := 0; i < n; i++ {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, `{"n":%d,"pad":"%s"}`, from+i, strings.Repeat("p", 60))
	}
	buf.WriteByte(']')
	resp, err := a.client.Post("http://agent/v1/telemetry", "application/json", &buf)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ IDs []string }
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out.IDs, resp.Header.Get("Retry-After")
}

// TestFullDiskRefusesAndRecovers puts the spools on a real 2 MiB tmpfs and
// fills it while the broker is down: the API refuses whole batches with
// 507 and Retry-After, health and metrics say so, the HTTPS uplink keeps
// delivering what was stored, and once the broker is back its acks free
// space and the same agent process takes messages again. Every accepted
// message reaches both backends; nothing of a refused batch reaches
// either.
func TestFullDiskRefusesAndRecovers(t *testing.T) {
	t.Parallel()
	mosquitto.Binary(t)
	state := filepath.Join(t.TempDir(), "state")
	spoolDir := filepath.Join(state, "spool")
	if err := os.MkdirAll(spoolDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", spoolDir).CombinedOutput(); err != nil {
		t.Skipf("SKIPPED, full-disk test not run: cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): %v: %s", err, strings.TrimSpace(string(out)))
	}
	// Registered before the rig, so it runs after the agent is killed.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", spoolDir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", spoolDir, err, out)
		}
	})
	r := startFaultRig(t, rigOptions{device: "fulldisk-dev", stateDir: state, spoolMax: "16MiB"})
	pid := r.agent.cmd.Process.Pid
	r.be.broker.Stop()

	var accepted []string
	refusedBatches, n := 0, 0
	for i := 0; refusedBatches < 3; i++ {
		if i > 1000 {
			t.Fatal("2 MiB tmpfs never filled")
		}
		code, ids, retry := postBatch(t, r.agent, n, 200)
		n += 200
		switch code {
		case http.StatusAccepted:
			// (Also after a refusal: the HTTPS uplink's acks free space.)
			accepted = append(accepted, ids...)
		case http.StatusInsufficientStorage:
			if retry == "" || len(ids) != 0 {
				t.Fatalf("507 with Retry-After %q and %d ids", retry, len(ids))
			}
			refusedBatches++
		default:
			t.Fatalf("POST answered %d", code)
		}
	}
	t.Logf("the disk filled after %d accepted messages", len(accepted))
	resp, err := http.Get("http://" + r.metrics + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "no space left on device") {
		t.Fatalf("/healthz on a full disk: %d %s", resp.StatusCode, body)
	}
	fams := scrape(t, r.metrics)
	if v := metricValue(t, fams, "edgeagent_messages_total", "uplink", "mqtt", "result", "refused"); v < 600 {
		t.Fatalf("refused messages counted %v, want at least 600", v)
	}
	// The spool that met the full disk first says so (both share it).
	if m, h := metricValue(t, fams, "edgeagent_spool_write_failing", "uplink", "mqtt"), metricValue(t, fams, "edgeagent_spool_write_failing", "uplink", "https"); m+h < 1 {
		t.Fatalf("edgeagent_spool_write_failing mqtt %v, https %v", m, h)
	}
	if v := metricValue(t, fams, "edgeagent_messages_total", "uplink", "https", "result", "refused"); v < 600 {
		t.Fatalf("refused messages counted %v for https, want at least 600", v)
	}
	// Delivery of what is stored goes on with writes failing.
	poll.Until(t, 2*time.Minute, "the accepted messages at the sink while the disk is full", func() bool {
		m, _ := r.sinkIDs.check(accepted)
		return m == 0
	})

	r.be.broker.Start()
	// The agent stores again by itself once MQTT acks free its segments.
	poll.Until(t, 2*time.Minute, "the agent accepting messages again", func() bool {
		code, ids, _ := postBatch(t, r.agent, n, 200)
		n += 200
		if code == http.StatusAccepted {
			accepted = append(accepted, ids...)
			return true
		}
		return false
	})
	poll.Until(t, 2*time.Minute, "every accepted message at both backends", func() bool { return r.bothHave(accepted) })
	want := map[string]bool{}
	for _, id := range accepted {
		want[id] = true
	}
	for name, seen := range map[string]*idSet{"subscriber": r.be.seen, "sink": r.sinkIDs} {
		for _, id := range seen.ids() {
			if !want[id] && id != r.firstID {
				t.Errorf("%s received %s, which the agent never accepted (a refused batch leaked)", name, id)
			}
		}
	}
	poll.Until(t, 30*time.Second, "/healthz ok again", func() bool {
		resp, err := http.Get("http://" + r.metrics + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if r.agent.cmd.Process.Pid != pid {
		t.Fatal("the agent was restarted")
	}
	select {
	case <-r.agent.done:
		t.Fatalf("the agent exited: %v", r.agent.err)
	default:
	}
	// One line when storing begins to fail (and when it works again), at
	// most once a minute however often a nearly full disk flips.
	logs := r.agent.logs.String()
	if n := strings.Count(logs, "spool: cannot store messages"); n < 1 || n > 2 {
		t.Errorf("%d log lines about storing failing, want 1 or 2 (one per spool at most):\n%s", n, logs)
	}
}

// TestDamagedSpoolDeliversIntactRecords stops the agent (kill -9) with
// 1,500 messages spooled for a broker that is down, damages the MQTT
// spool on disk (a flipped byte in one record, a whole middle segment
// deleted) and starts the agent again with the broker back: every intact
// message arrives at the subscriber, the metric counts exactly the lost
// ones, and the log names them.
func TestDamagedSpoolDeliversIntactRecords(t *testing.T) {
	t.Parallel()
	mosquitto.Binary(t)
	r := startFaultRig(t, rigOptions{device: "damage-dev", spoolMax: "4MiB"}) // 64 KiB segments
	r.be.broker.Stop()
	var accepted []string
	for n := 0; n < 1500; n += 100 {
		code, ids, _ := postBatch(t, r.agent, n, 100)
		if code != http.StatusAccepted {
			t.Fatalf("POST answered %d", code)
		}
		accepted = append(accepted, ids...)
	}
	poll.Until(t, time.Minute, "the HTTPS sink has everything", func() bool { m, _ := r.sinkIDs.check(accepted); return m == 0 })
	_ = r.agent.cmd.Process.Kill()
	<-r.agent.done

	segs, _ := filepath.Glob(filepath.Join(r.state, "spool", "mqtt", "*.seg"))
	if len(segs) < 3 {
		t.Fatalf("%d mqtt segments, want at least 3", len(segs))
	}
	idsIn := func(path string) []string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, part := range strings.Split(string(b), `{"id":"`)[1:] {
			out = append(out, part[:strings.IndexByte(part, '"')])
		}
		return out
	}
	lost := map[string]bool{}
	// A flipped byte in one record of the first segment: that record only.
	first := idsIn(segs[0])
	victim := first[len(first)/2]
	b, _ := os.ReadFile(segs[0])
	i := strings.Index(string(b), victim)
	b[i+len(victim)-1] ^= 0x01
	if err := os.WriteFile(segs[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	lost[victim] = true
	// A deleted middle segment: every record in it.
	for _, id := range idsIn(segs[1]) {
		lost[id] = true
	}
	if err := os.Remove(segs[1]); err != nil {
		t.Fatal(err)
	}

	r.be.broker.Start()
	r.agent = startDaemon(t, r.cfgFile, r.sock)
	var intact []string
	for _, id := range accepted {
		if !lost[id] {
			intact = append(intact, id)
		}
	}
	poll.Until(t, 2*time.Minute, "every intact message at the subscriber", func() bool { return r.be.has(intact) })
	poll.Until(t, 30*time.Second, "an empty mqtt spool", func() bool {
		st, err := r.agent.status()
		if err != nil {
			return false
		}
		m, _ := st["uplinks"].(map[string]any)["mqtt"].(map[string]any)
		return m["spool_depth"] == 0.0
	})
	for id := range lost {
		if r.be.has([]string{id}) {
			t.Errorf("%s arrived, but its record was damaged", id)
		}
	}
	fams := scrape(t, r.metrics)
	if v := metricValue(t, fams, "edgeagent_messages_total", "uplink", "mqtt", "result", "lost"); v != float64(len(lost)) {
		t.Errorf("lost counted %v, want exactly %d", v, len(lost))
	}
	logs := r.agent.logs.String()
	if !strings.Contains(logs, fmt.Sprintf(`msg="spool: damaged segment, intact records kept" spool=mqtt segment=%s lost=1 `, filepath.Base(segs[0]))) ||
		!strings.Contains(logs, fmt.Sprintf(`msg="spool: segment missing, its records are lost" spool=mqtt after_segment=%s before_segment=%s lost=%d `, filepath.Base(segs[0]), filepath.Base(segs[2]), len(lost)-1)) {
		t.Errorf("the log does not name the losses:\n%s", logs)
	}
	t.Logf("%d accepted, %d lost to the damage, %d delivered", len(accepted), len(lost), len(intact))
}
