package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
)

// caProc is `edgeca serve` as a process on a fixed address, stopped and
// started again around each rotation (a rotation takes effect at start).
type caProc struct {
	t      testing.TB
	dir    string
	listen string
	cmd    *exec.Cmd
	exited chan error
	logs   bytes.Buffer
}

func (c *caProc) start() {
	c.t.Helper()
	addrFile := filepath.Join(c.t.TempDir(), "addr")
	c.cmd = exec.Command(built.ca, "serve", "--dir", c.dir, "--listen", c.listen, "--addr-file", addrFile,
		"--cert-ttl", "1m", "--health-listen", "off")
	c.cmd.Stdout, c.cmd.Stderr = &c.logs, &c.logs
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.exited = make(chan error, 1)
	cmd, exited := c.cmd, c.exited
	go func() { exited <- cmd.Wait() }()
	poll.Until(c.t, 30*time.Second, "edgeca serve listening on "+c.listen, func() bool {
		select {
		case err := <-exited:
			c.t.Fatalf("edgeca serve exited: %v\n%s", err, c.logs.String())
		default:
		}
		b, err := os.ReadFile(addrFile)
		return err == nil && len(bytes.TrimSpace(b)) > 0
	})
}

func (c *caProc) stop() {
	if c.cmd == nil {
		return
	}
	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	c.cmd = nil
}

// agentCert reads the agent's current leaf and CA bundle from its state.
func agentCert(t testing.TB, stateDir string) (leaf *x509.Certificate, bundle []*x509.Certificate) {
	t.Helper()
	chain := pemCerts(t, filepath.Join(stateDir, "cert.pem"))
	return chain[0], pemCerts(t, filepath.Join(stateDir, "ca.pem"))
}

type identityJSON struct {
	DeviceID   string    `json:"device_id"`
	Server     string    `json:"server"`
	EnrolledAt time.Time `json:"enrolled_at"`
}

func readIdentity(t testing.TB, stateDir string) identityJSON {
	t.Helper()
	var id identityJSON
	b, err := os.ReadFile(filepath.Join(stateDir, "identity.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &id); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestRotationWhileRenewing rotates the intermediate, then the root, and
// then moves the CA to a new URL, while one agent process keeps renewing
// 1-minute certificates (renew.fraction 0.3: every 7.5 s) and publishing
// to mosquitto every 100 ms. The broker's cafile follows `edgeca cacerts`
// (mosquitto re-reads it on SIGHUP). Every message arrives at the
// subscriber, the token is used once, the device never enrolls again, and
// its certificate comes from each new intermediate in turn, then from the
// CA at its new URL.
func TestRotationWhileRenewing(t *testing.T) {
	t.Parallel()
	mosquitto.Binary(t)
	dir := filepath.Join(t.TempDir(), "ca")
	run(t, built.ca, "init", "--dir", dir)
	ca := &caProc{t: t, dir: dir, listen: freePort(t)}
	ca.start()
	t.Cleanup(func() {
		ca.stop()
		if t.Failed() {
			t.Logf("edgeca serve log:\n%s", ca.logs.String())
		}
	})
	url := "https://" + ca.listen
	tok := strings.TrimSpace(run(t, built.ca, "token", "create", "--dir", dir, "--url", url, "--device", "rot-dev"))

	var cafile string
	be := startBackend(t, dir, func(o *mosquitto.Options) { cafile = o.CAFile })
	backendCA, err := os.ReadFile(be.caFile)
	if err != nil {
		t.Fatal(err)
	}
	// The operator's step after a rotation: the broker's cafile is the
	// CA's published bundle (plus, here, the CA of the test subscriber).
	updateBroker := func() {
		bundle := filepath.Join(t.TempDir(), "bundle.pem")
		run(t, built.ca, "cacerts", "--dir", dir, "--out", bundle)
		b, err := os.ReadFile(bundle)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cafile, append(b, backendCA...), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(be.broker.Pid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	work := t.TempDir()
	state := filepath.Join(work, "state")
	sock := filepath.Join(work, "api.sock")
	cfgFile := filepath.Join(work, "edgeagent.yaml")
	writeCfg := func(renewServer string) {
		y := fmt.Sprintf(`device_id: rot-dev
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
renew:
  fraction: 0.3
  jitter: 0
  retry_min: 500ms
  retry_max: 2s
  expired_policy: wait
  server: %q
spool:
  sync: never
`, state, sock, be.broker.URL(), be.caFile, renewServer)
		if err := os.WriteFile(cfgFile, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg("")
	a := startDaemon(t, cfgFile, sock, "EDGEAGENT_TOKEN="+tok)
	s := startStream(a, 100*time.Millisecond)
	enrolled := func() identityJSON {
		var id identityJSON
		poll.Until(t, 30*time.Second, "the agent's identity", func() bool {
			_, err := os.Stat(filepath.Join(state, "identity.json"))
			return err == nil
		})
		id = readIdentity(t, state)
		return id
	}()

	// issuedBy waits until the agent holds a certificate that the current
	// intermediate in the CA directory issued, then for one renewal more,
	// and until the subscriber has everything sent so far.
	issuedBy := func(what string) *x509.Certificate {
		t.Helper()
		inter := pemCerts(t, filepath.Join(dir, "intermediate.pem"))[0]
		var serial string
		poll.Until(t, 90*time.Second, "a certificate of "+what, func() bool {
			leaf, _ := agentCert(t, state)
			if leaf.CheckSignatureFrom(inter) != nil {
				return false
			}
			serial = leaf.SerialNumber.String()
			return true
		})
		poll.Until(t, 60*time.Second, "a renewal after the first certificate of "+what, func() bool {
			leaf, _ := agentCert(t, state)
			return leaf.SerialNumber.String() != serial && leaf.CheckSignatureFrom(inter) == nil
		})
		s.mu.Lock()
		sent := append([]string(nil), s.ids...)
		s.mu.Unlock()
		poll.Until(t, 60*time.Second, "the messages sent so far at the subscriber", func() bool { return be.has(sent) })
		return inter
	}
	inter1 := issuedBy("the first intermediate")

	ca.stop()
	run(t, built.ca, "rotate", "intermediate", "--dir", dir)
	updateBroker()
	ca.start()
	inter2 := issuedBy("the rotated intermediate")
	if inter2.Equal(inter1) {
		t.Fatal("the intermediate did not change")
	}

	root1 := pemCerts(t, filepath.Join(dir, "root.pem"))[0]
	ca.stop()
	run(t, built.ca, "rotate", "root", "--dir", dir)
	updateBroker()
	ca.start()
	inter3 := issuedBy("the intermediate of the new root")
	root2 := pemCerts(t, filepath.Join(dir, "root.pem"))[0]
	if root2.Equal(root1) || inter3.CheckSignatureFrom(root2) != nil {
		t.Fatal("the root did not roll over")
	}
	if _, bundle := agentCert(t, state); !containsCert(bundle, root2) {
		t.Error("the agent's CA bundle lacks the new root")
	}

	// The CA moves to a new URL: renew.server and SIGHUP, no re-enrollment.
	ca.stop()
	ca.listen = freePort(t)
	ca.start()
	moved := "https://" + ca.listen
	writeCfg(moved)
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 60*time.Second, "a renewal at the CA's new URL", func() bool { return readIdentity(t, state).Server == moved })
	issuedBy("the CA at its new URL")

	ids := s.end()
	poll.Until(t, 60*time.Second, "every accepted message at the subscriber", func() bool { return be.has(ids) })
	missing, dups := be.seen.check(ids)
	if missing != 0 || s.errs > 0 {
		t.Fatalf("%d messages lost, %d refused by the agent", missing, s.errs)
	}
	var toks []struct {
		Uses int `json:"uses"`
	}
	if err := json.Unmarshal([]byte(run(t, built.ca, "token", "list", "--dir", dir, "--json")), &toks); err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 || toks[0].Uses != 1 {
		t.Errorf("tokens %+v: want one, used once", toks)
	}
	if id := readIdentity(t, state); !id.EnrolledAt.Equal(enrolled.EnrolledAt) || id.DeviceID != "rot-dev" {
		t.Errorf("identity %+v after the rotations, enrolled %+v: the device enrolled again", id, enrolled)
	}
	var dev struct {
		Enrollments int `json:"enrollments"`
	}
	if err := json.Unmarshal([]byte(run(t, built.ca, "device", "show", "--dir", dir, "--json", "rot-dev")), &dev); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(a.logs.String(), "re-enrolled") {
		t.Error("the agent re-enrolled")
	}
	t.Logf("%d messages, all delivered (%d duplicates); %d certificates, one enrollment", len(ids), dups, dev.Enrollments)
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range list {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

// brokerCertUnder issues mosquitto a server certificate from the CA's
// current intermediate (read from its directory), chain [leaf,
// intermediate] only, so only a client that holds this intermediate's
// root accepts it.
func brokerCertUnder(t testing.TB, caDir, outDir string) (certFile, keyFile string) {
	t.Helper()
	inter := pemCerts(t, filepath.Join(caDir, "intermediate.pem"))[0]
	kb, err := os.ReadFile(filepath.Join(caDir, "intermediate-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(kb)
	if blk == nil {
		t.Fatal("intermediate-key.pem: no PEM")
	}
	ik, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "broker"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, inter, &key.PublicKey, ik.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(outDir, "broker.pem"), filepath.Join(outDir, "broker-key.pem")
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: inter.Raw})...)
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestUplinkTrustFollowsRootRollover: an agent whose MQTT uplink trusts
// the enrolled CA bundle (no mqtt.ca_bundle) connects, after a root
// rollover and its next renewal, to a broker whose server certificate now
// comes from the new root's intermediate alone, without a restart: the
// uplink is rebuilt with the bundle the renewal brought from /cacerts.
func TestUplinkTrustFollowsRootRollover(t *testing.T) {
	t.Parallel()
	mosquitto.Binary(t)
	dir := filepath.Join(t.TempDir(), "ca")
	run(t, built.ca, "init", "--dir", dir)
	ca := &caProc{t: t, dir: dir, listen: freePort(t)}
	ca.start()
	t.Cleanup(func() {
		ca.stop()
		if t.Failed() {
			t.Logf("edgeca serve log:\n%s", ca.logs.String())
		}
	})
	tok := strings.TrimSpace(run(t, built.ca, "token", "create", "--dir", dir, "--url", "https://"+ca.listen, "--device", "trust-dev"))
	brokerDir := t.TempDir()
	cafile := filepath.Join(brokerDir, "cafile.pem")
	run(t, built.ca, "cacerts", "--dir", dir, "--out", cafile)
	certFile, keyFile := brokerCertUnder(t, dir, brokerDir)
	broker := mosquitto.Start(t, mosquitto.Options{CAFile: cafile, CertFile: certFile, KeyFile: keyFile})

	work := t.TempDir()
	state := filepath.Join(work, "state")
	sock := filepath.Join(work, "api.sock")
	cfgFile := filepath.Join(work, "edgeagent.yaml")
	y := fmt.Sprintf(`device_id: trust-dev
state_dir: %s
api:
  socket: %s
metrics:
  listen: ""
collector:
  interval: 0s
mqtt:
  url: %s
renew:
  fraction: 0.3
  jitter: 0
  retry_min: 500ms
  retry_max: 2s
  expired_policy: wait
spool:
  sync: never
`, state, sock, broker.URL())
	if err := os.WriteFile(cfgFile, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startDaemon(t, cfgFile, sock, "EDGEAGENT_TOKEN="+tok)
	connections := func() int { return strings.Count(broker.Log(), " as trust-dev") }
	poll.Until(t, 60*time.Second, "the agent connected to the broker", func() bool { return connections() > 0 })

	ca.stop()
	run(t, built.ca, "rotate", "root", "--dir", dir)
	run(t, built.ca, "cacerts", "--dir", dir, "--out", cafile)
	if err := syscall.Kill(broker.Pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ca.start()
	root2 := pemCerts(t, filepath.Join(dir, "root.pem"))[0]
	poll.Until(t, 90*time.Second, "the new root in the agent's bundle", func() bool {
		_, bundle := agentCert(t, state)
		return containsCert(bundle, root2)
	})

	// The broker's own certificate now comes from under the new root.
	broker.Stop()
	brokerCertUnder(t, dir, brokerDir)
	before := connections()
	broker.Start()
	poll.Until(t, 60*time.Second, "the agent connected to the broker with the broker's new certificate", func() bool { return connections() > before })
	if st := a.mustStatus(); !st.Connected {
		poll.Until(t, 30*time.Second, "the agent's MQTT uplink up", func() bool { return a.mustStatus().Connected })
	}
	if strings.Contains(a.logs.String(), "re-enrolled") {
		t.Error("the agent re-enrolled")
	}
}
