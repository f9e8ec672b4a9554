package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// BenchmarkTelemetryMQTT measures messages per second from the agent's
// local API through the durable spool (fsync on) to mosquitto at QoS 1 over
// mutual TLS, timed until mosquitto acknowledged the last one, next to
// mosquitto_pub -q 1 -l publishing the same number of same-sized lines
// over the same listener with the same certificate, timed until it exits
// (after its last PUBACK). A subscriber must then have every message.
// It also reports the agent's resident memory after the run (steady state:
// 120,000 messages through it). Run with -benchtime=1x: each iteration is a
// full measurement of three alternating trials.
func BenchmarkTelemetryMQTT(b *testing.B) {
	for i := 0; i < b.N; i++ {
		benchTelemetryOnce(b)
	}
}

func benchTelemetryOnce(b *testing.B) {
	const n, batch = 20000, 100
	t := testing.TB(b)
	caDir, caURL := startCA(t)
	tok := strings.TrimSpace(run(t, built.ca, "token", "create", "--dir", caDir, "--url", caURL, "--device", "bench-dev"))
	pki := testpki.New(t, "backend-ca")
	brokerCert := pki.Server(t)
	work := t.TempDir()
	var cafile bytes.Buffer
	for _, f := range []string{filepath.Join(caDir, "intermediate.pem"), filepath.Join(caDir, "root.pem"), pki.CAFile(t)} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cafile.Write(data)
	}
	caPath := filepath.Join(work, "ca.pem")
	if err := os.WriteFile(caPath, cafile.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	broker := mosquitto.Start(t, mosquitto.Options{CAFile: caPath, CertFile: brokerCert.CertFile, KeyFile: brokerCert.KeyFile, Readers: []string{"admin"}})

	var count atomic.Int64
	admin := pki.Client(t, "admin")
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + broker.Addr).SetClientID("bench-admin").
		SetTLSConfig(&tls.Config{RootCAs: pki.Pool(), Certificates: []tls.Certificate{*admin.TLS}, MinVersion: tls.VersionTLS12}).
		SetOrderMatters(false))
	if tk := sub.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("subscriber: %v", tk.Error())
	}
	defer sub.Disconnect(0)
	sub.Subscribe("devices/bench-dev/#", 1, func(_ paho.Client, m paho.Message) {
		count.Add(1)
	}).Wait()

	sock := filepath.Join(work, "api.sock")
	cfgFile := filepath.Join(work, "edgeagent.yaml")
	state := filepath.Join(work, "state")
	cfg := fmt.Sprintf("device_id: bench-dev\nstate_dir: %s\napi:\n  socket: %s\nmetrics:\n  listen: \"\"\ncollector:\n  interval: 0s\nmqtt:\n  url: %s\n  ca_bundle: %s\n  status_topic: status/bench-dev\nspool:\n  sync: always\nlog:\n  level: warn\n",
		state, sock, broker.URL(), pki.CAFile(t))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := startAgent(t, cfgFile, "EDGEAGENT_TOKEN="+tok)
	defer agent.kill()
	api := localapi.Client(sock, 30*time.Second)
	poll.Until(t, 30*time.Second, "the agent's API", func() bool {
		resp, err := api.Get("http://agent/v1/status")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})

	body := func(from int) *bytes.Buffer {
		var buf bytes.Buffer
		buf.WriteByte('[')
		for i := 0; i < batch; i++ {
			if i > 0 {
				buf.WriteByte(',')
			}
			fmt.Fprintf(&buf, `{"temp_c":21.5,"seq":%d}`, from+i)
		}
		buf.WriteByte(']')
		return &buf
	}
	var lines bytes.Buffer
	for i := 0; i < n; i++ {
		fmt.Fprintf(&lines, `{"id":"bench-dev-0123456789ab-%d","device_id":"bench-dev","time":"2026-11-22T10:00:00.000000000Z","data":{"temp_c":21.5,"seq":%d}}`+"\n", i, i)
	}
	acked := func() uint64 {
		resp, err := api.Get("http://agent/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st struct {
			Uplinks map[string]struct{ Acked uint64 }
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			t.Fatal(err)
		}
		return st.Uplinks["mqtt"].Acked
	}
	// Both are timed until mosquitto acknowledged every message (PUBACK:
	// the agent's acked count; mosquitto_pub's exit), then, untimed, the
	// subscriber must have them all.
	// CPU time per message of the publishing process and of the broker is
	// reported next to the rates: unlike a rate, it hardly moves when a
	// neighbour loads the machine.
	var agentCPU, pubCPU, brokerAgentCPU, brokerPubCPU time.Duration
	agentRun := func() float64 {
		before, ackedBefore := count.Load(), acked()
		cpu0, bcpu0 := cpuOf(agent.cmd.Process.Pid), cpuOf(broker.Pid())
		start := time.Now()
		for sent := 0; sent < n; sent += batch {
			resp, err := api.Post("http://agent/v1/telemetry", "application/json", body(sent))
			if err != nil || resp.StatusCode != http.StatusAccepted {
				t.Fatalf("post: %v", err)
			}
			resp.Body.Close()
		}
		poll.Until(t, 2*time.Minute, "PUBACKs for the agent's messages", func() bool { return acked() >= ackedBefore+n })
		rate := float64(n) / time.Since(start).Seconds()
		agentCPU += cpuOf(agent.cmd.Process.Pid) - cpu0
		brokerAgentCPU += cpuOf(broker.Pid()) - bcpu0
		poll.Until(t, 2*time.Minute, "agent messages at the subscriber", func() bool { return count.Load() >= before+n })
		return rate
	}
	// Baseline: mosquitto_pub with the agent's own certificate and key.
	pubRun := func() float64 {
		before := count.Load()
		cmd := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", strings.Split(broker.Addr, ":")[1], "--cafile", pki.CAFile(t),
			"--cert", filepath.Join(state, "cert.pem"), "--key", filepath.Join(state, "key.pem"), "-i", "bench-pub",
			"-q", "1", "-t", "devices/bench-dev/telemetry", "-l")
		cmd.Stdin = bytes.NewReader(lines.Bytes())
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		bcpu0 := cpuOf(broker.Pid())
		start := time.Now()
		if err := cmd.Run(); err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out.String())
		}
		rate := float64(n) / time.Since(start).Seconds()
		pubCPU += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		brokerPubCPU += cpuOf(broker.Pid()) - bcpu0
		poll.Until(t, 2*time.Minute, "mosquitto_pub messages at the subscriber", func() bool { return count.Load() >= before+n })
		return rate
	}
	// Alternate the two, three trials each, and report medians: the
	// machine is shared, so one trial of each says little.
	var agentRates, pubRates []float64
	// Idle: enrolled and connected, nothing sent yet.
	idleRSS := statusKB(agent.cmd.Process.Pid, "VmRSS:")
	b.ResetTimer()
	for trial := 0; trial < 3; trial++ {
		agentRates = append(agentRates, agentRun())
		pubRates = append(pubRates, pubRun())
	}
	b.StopTimer()
	rss, peak := statusKB(agent.cmd.Process.Pid, "VmRSS:"), statusKB(agent.cmd.Process.Pid, "VmHWM:")
	agentRate, pubRate := median(agentRates), median(pubRates)
	b.ReportMetric(agentRate, "agent_msgs/s")
	b.ReportMetric(pubRate, "mosquitto_pub_msgs/s")
	b.ReportMetric(agentRate/pubRate, "ratio")
	b.ReportMetric(float64(rss)/(1<<20), "agent_rss_MB")
	b.ReportMetric(float64(peak)/(1<<20), "agent_peak_rss_MB")
	b.ReportMetric(float64(idleRSS)/(1<<20), "agent_idle_rss_MB")
	perMsg := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(3*n) }
	b.ReportMetric(perMsg(agentCPU), "agent_cpu_us/msg")
	b.ReportMetric(perMsg(pubCPU), "mosquitto_pub_cpu_us/msg")
	b.ReportMetric(perMsg(brokerAgentCPU), "broker_cpu_us/agent_msg")
	b.ReportMetric(perMsg(brokerPubCPU), "broker_cpu_us/pub_msg")
}

// cpuOf is the CPU time (user + system) process pid has used so far, from
// /proc/pid/stat (in clock ticks, 10 ms on Linux); 0 if it cannot be read.
func cpuOf(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields after it are
	// plain. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// statusKB is a memory figure of process pid in bytes, from the field of
// /proc/pid/status (VmRSS: resident now, VmHWM: its peak); -1 if unread.
func statusKB(pid int, field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, field) {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return -1
}
