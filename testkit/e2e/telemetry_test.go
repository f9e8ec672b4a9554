package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// idSet counts deliveries per message id.
type idSet struct {
	mu   sync.Mutex
	seen map[string]int
}

func newIDSet() *idSet { return &idSet{seen: map[string]int{}} }

func (s *idSet) add(id string) {
	s.mu.Lock()
	s.seen[id]++
	s.mu.Unlock()
}

func (s *idSet) check(ids []string) (missing, dups int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		switch n := s.seen[id]; {
		case n == 0:
			missing++
		default:
			dups += n - 1
		}
	}
	return
}

func envelopeID(line []byte) string {
	var m struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(line, &m)
	return m.ID
}

// agentProc runs `edgeagent run` as a process.
type agentProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	logs *bytes.Buffer
}

func startAgent(t testing.TB, cfgFile string, env ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(built.agent, "run", "--config", cfgFile)
	cmd.Env = append(os.Environ(), env...)
	logs := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, done: make(chan struct{}), logs: logs}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if t.Failed() {
			// SIGQUIT makes the Go runtime write every goroutine's stack
			// to stderr, which is in logs: a stalled agent shows where.
			_ = p.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
			}
		}
		p.kill()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})
	return p
}

func (p *agentProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// TestTelemetrySurvivesBrokerAndAgentCrashes sends 100,000 messages through
// the agent's local API while mosquitto is restarted three times and the
// agent is killed with SIGKILL once: every message the agent accepted
// reaches the MQTT subscriber and the mTLS HTTPS sink at least once.
func TestTelemetrySurvivesBrokerAndAgentCrashes(t *testing.T) {
	requireTools(t, "openssl")
	mosquitto.Binary(t)
	caDir, caURL := startCA(t, "--cert-ttl", "1h")
	tok := strings.TrimSpace(run(t, built.ca, "token", "create", "--dir", caDir, "--url", caURL, "--device", "loss-dev"))

	// The broker trusts edgeca's CA for devices and a test CA for the
	// subscriber; its own server certificate comes from the test CA.
	pki := testpki.New(t, "backend-ca")
	brokerCert := pki.Server(t)
	deviceCAs, err := os.ReadFile(filepath.Join(caDir, "intermediate.pem"))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(filepath.Join(caDir, "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	backendCA, _ := os.ReadFile(pki.CAFile(t))
	work := t.TempDir()
	cafile := filepath.Join(work, "mosquitto-ca.pem")
	if err := os.WriteFile(cafile, bytes.Join([][]byte{deviceCAs, rootPEM, backendCA}, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	broker := mosquitto.Start(t, mosquitto.Options{CAFile: cafile, CertFile: brokerCert.CertFile, KeyFile: brokerCert.KeyFile, Readers: []string{"admin"}})

	mqttSeen := newIDSet()
	admin := pki.Client(t, "admin")
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + broker.Addr).SetClientID("loss-admin").
		SetTLSConfig(&tls.Config{RootCAs: pki.Pool(), Certificates: []tls.Certificate{*admin.TLS}, MinVersion: tls.VersionTLS12}).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).SetMaxReconnectInterval(200 * time.Millisecond).
		SetConnectRetryInterval(100 * time.Millisecond).
		SetOnConnectHandler(func(c paho.Client) {
			c.Subscribe("devices/loss-dev/telemetry", 1, func(_ paho.Client, m paho.Message) { mqttSeen.add(envelopeID(m.Payload())) }).Wait()
		}))
	if tk := sub.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("subscriber: %v", tk.Error())
	}
	defer sub.Disconnect(0)

	// The HTTPS sink requires a client certificate from edgeca.
	httpsSeen := newIDSet()
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(deviceCAs)
	clientCAs.AppendCertsFromPEM(rootPEM)
	sinkCert := pki.Server(t)
	sink := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		sc := bufio.NewScanner(zr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var ids []string
		for sc.Scan() {
			ids = append(ids, envelopeID(sc.Bytes()))
		}
		if sc.Err() != nil {
			http.Error(w, sc.Err().Error(), 400)
			return
		}
		for _, id := range ids {
			httpsSeen.add(id)
		}
		w.WriteHeader(http.StatusOK)
	}))
	sink.TLS = &tls.Config{Certificates: []tls.Certificate{*sinkCert.TLS}, ClientCAs: clientCAs, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	sink.StartTLS()
	defer sink.Close()

	sock := filepath.Join(work, "api.sock")
	cfgFile := filepath.Join(work, "edgeagent.yaml")
	cfg := fmt.Sprintf(`device_id: loss-dev
state_dir: %s
api:
  socket: %s
metrics:
  listen: ""
collector:
  interval: 0s
mqtt:
  url: %s
  ca_bundle: %s
https:
  url: %s/ingest
  ca_bundle: %s
log:
  level: warn
`, filepath.Join(work, "state"), sock, broker.URL(), pki.CAFile(t), sink.URL, pki.CAFile(t))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := startAgent(t, cfgFile, "EDGEAGENT_TOKEN="+tok)
	api := localapi.Client(sock, 30*time.Second)
	poll.Until(t, 30*time.Second, "the agent's API", func() bool {
		resp, err := api.Get("http://agent/v1/status")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})

	const total, batch = 100000, 500
	var accepted []string
	send := func(from int) bool {
		var buf bytes.Buffer
		buf.WriteByte('[')
		for i := 0; i < batch; i++ {
			if i > 0 {
				buf.WriteByte(',')
			}
			fmt.Fprintf(&buf, `{"n":%d}`, from+i)
		}
		buf.WriteByte(']')
		resp, err := api.Post("http://agent/v1/telemetry", "application/json", &buf)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var out struct{ IDs []string }
		if resp.StatusCode != http.StatusAccepted || json.NewDecoder(resp.Body).Decode(&out) != nil {
			return false
		}
		accepted = append(accepted, out.IDs...)
		return true
	}
	for sent := 0; sent < total; {
		switch sent {
		case 20000, 50000, 80000:
			broker.Stop()
			broker.Start()
		case 35000:
			agent.kill() // SIGKILL, mid-stream
			agent = startAgent(t, cfgFile)
			poll.Until(t, 30*time.Second, "the restarted agent", func() bool {
				resp, err := api.Get("http://agent/v1/status")
				if err == nil {
					resp.Body.Close()
				}
				return err == nil
			})
		}
		if send(sent) {
			sent += batch
		}
	}
	poll.Until(t, 3*time.Minute, "every accepted message at both backends", func() bool {
		m1, _ := mqttSeen.check(accepted)
		m2, _ := httpsSeen.check(accepted)
		return m1 == 0 && m2 == 0
	})
	_, mqttDups := mqttSeen.check(accepted)
	_, httpsDups := httpsSeen.check(accepted)
	t.Logf("%d messages accepted; MQTT: all arrived, %d duplicates; HTTPS: all arrived, %d duplicates", len(accepted), mqttDups, httpsDups)
	if len(accepted) != total {
		t.Fatalf("accepted %d of %d", len(accepted), total)
	}
}
