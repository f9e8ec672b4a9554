package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/keystore/file"
	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// readmeBlock returns the README's fenced block whose first line is
// first.
func readmeBlock(t *testing.T, first string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(string(b), "```")
	for i := 1; i < len(parts); i += 2 {
		body := parts[i]
		if _, rest, ok := strings.Cut(body, "\n"); ok && strings.HasPrefix(rest, first+"\n") {
			return rest
		}
	}
	t.Fatalf("README.md has no block starting with %q", first)
	return ""
}

// TestReadmeMosquittoRecipe runs the README's mosquitto recipe as written
// (paths, port and `user root` aside) with a device and a consumer
// enrolled from a real CA: the agent's messages arrive at the consumer,
// and its own retained status comes back (the ACL lets it through).
func TestReadmeMosquittoRecipe(t *testing.T) {
	bin := mosquitto.Binary(t)
	conf := readmeBlock(t, "# /etc/mosquitto/conf.d/edgeagent.conf")
	acl := readmeBlock(t, "# /etc/mosquitto/edgeagent.acl")
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	dir := t.TempDir()
	var devCA bytes.Buffer
	for _, p := range []string{"root.pem", "intermediate.pem"} {
		b, err := os.ReadFile(filepath.Join(c.Dir, p))
		if err != nil {
			t.Fatal(err)
		}
		devCA.Write(b)
	}
	devCAFile, aclFile := filepath.Join(dir, "devices-ca.pem"), filepath.Join(dir, "edgeagent.acl")
	servers := testpki.New(t, "broker-ca")
	srv := servers.Server(t)
	for p, b := range map[string][]byte{devCAFile: devCA.Bytes(), aclFile: []byte(acl)} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	for from, to := range map[string]string{
		"listener 8883\n": "listener " + port + " 127.0.0.1\n",
		"/etc/mosquitto/certs/edgeagent-devices-ca.pem": devCAFile,
		"/etc/mosquitto/certs/broker.pem":               srv.CertFile,
		"/etc/mosquitto/certs/broker.key":               srv.KeyFile,
		"/etc/mosquitto/edgeagent.acl":                  aclFile,
	} {
		if !strings.Contains(conf, from) {
			t.Fatalf("the recipe lost %q", from)
		}
		conf = strings.ReplaceAll(conf, from, to)
	}
	confFile := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(confFile, []byte("user root\n"+conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "-c", confFile)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("mosquitto:\n%s", out.String())
		}
	})
	poll.Until(t, 30*time.Second, "mosquitto listening", func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})

	// The consumer: a certificate from the same CA, as the README says.
	readerDir := filepath.Join(dir, "reader")
	ks, err := file.Open(readerDir)
	if err != nil {
		t.Fatal(err)
	}
	tok := c.Token(t, "telemetry-reader")
	reader, err := Enroll(context.Background(), EnrollOptions{StateDir: readerDir, DeviceID: "telemetry-reader", Keystore: ks, Token: &tok})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]string{} // message id -> topic
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + addr).SetClientID("telemetry-reader").
		SetTLSConfig(&tls.Config{RootCAs: servers.Pool(), Certificates: []tls.Certificate{*reader.TLSCertificate()}, MinVersion: tls.VersionTLS12}).
		SetOnConnectHandler(func(cl paho.Client) {
			cl.Subscribe("devices/+/telemetry", 1, func(_ paho.Client, m paho.Message) {
				var env struct{ ID string }
				_ = json.Unmarshal(m.Payload(), &env)
				mu.Lock()
				seen[env.ID] = m.Topic()
				mu.Unlock()
			}).Wait()
		}))
	if tk := sub.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("consumer: %v\n%s", tk.Error(), out.String())
	}
	t.Cleanup(func() { sub.Disconnect(0) })

	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(c.Token(t, "sensor-0001").String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonConfig(dir, "sensor-0001")
	cfg.Enroll.TokenFile = tokFile
	cfg.MQTT.URL, cfg.MQTT.CABundle = "mqtts://"+addr, servers.CAFile(t)
	cfg.Spool.Sync = "never"
	api := startDaemon(t, Options{Config: cfg, EchoGrace: time.Nanosecond})
	ids := postTelemetry(t, api, 10)
	poll.Until(t, 30*time.Second, "every message at the consumer", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			if seen[id] != "devices/sensor-0001/telemetry" {
				return false
			}
		}
		return true
	})
	poll.Until(t, 30*time.Second, "the agent's own status back through the broker", func() bool {
		st := fetchStatus(t, api)
		return st.Healthy && !st.Uplinks["mqtt"].Dropping
	})
}
