package e2e

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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

// TestARMBuildsEnrollAndPublishUnderQEMU cross-compiles edgeagent for arm64
// and armv7 (static, CGO_ENABLED=0), runs each under qemu-user: it enrolls
// against edgeca, then runs as a daemon and publishes to mosquitto over
// mutual TLS.
func TestARMBuildsEnrollAndPublishUnderQEMU(t *testing.T) {
	requireTools(t, "qemu-aarch64-static", "qemu-arm-static")
	mosquitto.Binary(t)
	caDir, caURL := startCA(t)
	rootPEM, _ := os.ReadFile(filepath.Join(caDir, "root.pem"))
	interPEM, _ := os.ReadFile(filepath.Join(caDir, "intermediate.pem"))
	pki := testpki.New(t, "backend-ca")
	brokerCert := pki.Server(t)
	cafile := filepath.Join(t.TempDir(), "ca.pem")
	backendCA, _ := os.ReadFile(pki.CAFile(t))
	if err := os.WriteFile(cafile, append(append(interPEM, rootPEM...), backendCA...), 0o600); err != nil {
		t.Fatal(err)
	}
	broker := mosquitto.Start(t, mosquitto.Options{CAFile: cafile, CertFile: brokerCert.CertFile, KeyFile: brokerCert.KeyFile, Readers: []string{"admin"}})
	var got atomic.Int64
	admin := pki.Client(t, "admin")
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + broker.Addr).SetClientID("qemu-admin").
		SetTLSConfig(&tls.Config{RootCAs: pki.Pool(), Certificates: []tls.Certificate{*admin.TLS}, MinVersion: tls.VersionTLS12}))
	if tk := sub.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("subscriber: %v", tk.Error())
	}
	defer sub.Disconnect(0)
	sub.Subscribe("devices/+/telemetry", 1, func(_ paho.Client, m paho.Message) {
		if strings.Contains(string(m.Payload()), `"arch":`) {
			got.Add(1)
		}
	}).Wait()

	for i, target := range []struct{ goarch, goarm, qemu string }{{"arm64", "", "qemu-aarch64-static"}, {"arm", "7", "qemu-arm-static"}} {
		t.Run(target.goarch+target.goarm, func(t *testing.T) {
			bin := filepath.Join(t.TempDir(), "edgeagent")
			build := exec.Command("go", "build", "-trimpath", "-o", bin, "../../cmd/edgeagent")
			build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+target.goarch, "GOARM="+target.goarm)
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("cross build: %v\n%s", err, out)
			}
			dev := "arm-" + target.goarch + target.goarm
			tok := strings.TrimSpace(run(t, built.ca, "token", "create", "--dir", caDir, "--url", caURL, "--device", dev))
			work := t.TempDir()
			state := filepath.Join(work, "state")
			out := run(t, target.qemu, bin, "enroll", "--token", tok, "--device-id", dev, "--state-dir", state)
			if !strings.Contains(out, "enrolled device "+dev) {
				t.Fatalf("enroll under %s: %s", target.qemu, out)
			}
			opensslVerify(t, filepath.Join(state, "ca.pem"), filepath.Join(state, "cert.pem"))

			sock := filepath.Join(work, "api.sock")
			cfgFile := filepath.Join(work, "edgeagent.yaml")
			cfg := fmt.Sprintf("device_id: %s\nstate_dir: %s\napi:\n  socket: %s\nmetrics:\n  listen: \"\"\ncollector:\n  interval: 0s\nmqtt:\n  url: %s\n  ca_bundle: %s\nlog:\n  level: warn\n",
				dev, state, sock, broker.URL(), pki.CAFile(t))
			if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(target.qemu, bin, "run", "--config", cfgFile)
			var logs bytes.Buffer
			cmd.Stdout, cmd.Stderr = &logs, &logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				if t.Failed() {
					t.Logf("agent log:\n%s", logs.String())
				}
			}()
			api := localapi.Client(sock, 30*time.Second)
			poll.Until(t, 60*time.Second, "the agent's API under qemu", func() bool {
				resp, err := api.Post("http://agent/v1/telemetry", "application/json", strings.NewReader(`{"arch":"`+dev+`"}`))
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusAccepted
			})
			poll.Until(t, 60*time.Second, "the message at the subscriber", func() bool { return got.Load() >= int64(i+1) })
		})
	}
}
