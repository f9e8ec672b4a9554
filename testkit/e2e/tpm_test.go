package e2e

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/agent"
	"github.com/edgeagent/edgeagent/keystore/tpm"
	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestTPMKeyEnrollsRenewsAndConnects: with the key in a (software) TPM, the
// edgeagent binary enrolls and renews (rekey included) against edgeca, the
// chains verify with openssl, no private key is ever on disk, and the TPM
// key completes a TLS 1.3 handshake with mosquitto (require_certificate)
// and publishes. For ECDSA P-256 and RSA 2048 (PSS in TLS 1.3).
func TestTPMKeyEnrollsRenewsAndConnects(t *testing.T) {
	requireTools(t, "openssl")
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

	for _, alg := range []string{"ecdsa-p256", "rsa-2048"} {
		t.Run(alg, func(t *testing.T) {
			sim := swtpm.Start(t)
			dev := "tpm-" + strings.Split(alg, "-")[0]
			tok := strings.TrimSpace(run(t, built.ca, "token", "create", "--dir", caDir, "--url", caURL, "--device", dev))
			state := filepath.Join(t.TempDir(), "state")
			tpmFlags := []string{"--keystore", "tpm", "--tpm-address", sim.Addr(), "--state-dir", state}
			run(t, built.agent, append([]string{"enroll", "--token", tok, "--device-id", dev, "--key-alg", alg}, tpmFlags...)...)
			opensslVerify(t, filepath.Join(state, "ca.pem"), filepath.Join(state, "cert.pem"))
			first := pemCerts(t, filepath.Join(state, "cert.pem"))[0]
			pubBefore, err := os.ReadFile(filepath.Join(state, tpm.PubFile))
			if err != nil {
				t.Fatalf("no TPM key blob: %v", err)
			}

			run(t, built.agent, append([]string{"renew", "--rekey"}, tpmFlags...)...)
			opensslVerify(t, filepath.Join(state, "ca.pem"), filepath.Join(state, "cert.pem"))
			renewed := pemCerts(t, filepath.Join(state, "cert.pem"))[0]
			pubAfter, _ := os.ReadFile(filepath.Join(state, tpm.PubFile))
			if renewed.SerialNumber.Cmp(first.SerialNumber) == 0 || string(pubAfter) == string(pubBefore) {
				t.Fatal("renew --rekey with the TPM kept the serial or the key")
			}
			entries, _ := os.ReadDir(state)
			for _, e := range entries {
				b, _ := os.ReadFile(filepath.Join(state, e.Name()))
				if strings.Contains(string(b), "PRIVATE KEY") {
					t.Fatalf("%s holds a private key in clear", e.Name())
				}
			}

			// The TPM key, in this process now, against mosquitto over TLS 1.3.
			ks, err := tpm.Open(tpm.Options{Address: sim.Addr(), Dir: state})
			if err != nil {
				t.Fatal(err)
			}
			defer ks.Close()
			id, err := agent.LoadIdentity(state, ks)
			if err != nil {
				t.Fatal(err)
			}
			cfg := &tls.Config{RootCAs: pki.Pool(), Certificates: []tls.Certificate{*id.TLSCertificate()}, MinVersion: tls.VersionTLS13}
			conn, err := tls.Dial("tcp", broker.Addr, cfg)
			if err != nil {
				t.Fatalf("TLS 1.3 handshake with the TPM key: %v", err)
			}
			if v := conn.ConnectionState().Version; v != tls.VersionTLS13 {
				t.Fatalf("negotiated TLS version %x", v)
			}
			conn.Close()
			c := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + broker.Addr).SetClientID(dev).SetTLSConfig(cfg))
			if tk := c.Connect(); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
				t.Fatalf("MQTT connect with the TPM key: %v", tk.Error())
			}
			defer c.Disconnect(0)
			if tk := c.Publish("devices/"+dev+"/telemetry", 1, false, `{"from":"tpm"}`); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
				t.Fatalf("publish: %v", tk.Error())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := broker.WaitLog(ctx, "as "+dev+" "); err != nil {
				t.Fatal(err)
			}
		})
	}
}
