package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// agentStatus is the part of GET /v1/status these tests read.
type agentStatus struct {
	Serial, Phase, Expired string
	Connected              bool
	Counts                 map[string]float64
}

func (d *daemon) mustStatus() agentStatus {
	d.t.Helper()
	st, err := d.status()
	if err != nil {
		d.t.Fatal(err)
	}
	out := agentStatus{Counts: map[string]float64{}}
	out.Serial, _ = st["serial"].(string)
	out.Phase, _ = st["phase"].(string)
	out.Expired, _ = st["expired"].(string)
	if ups, ok := st["uplinks"].(map[string]any); ok {
		if m, ok := ups["mqtt"].(map[string]any); ok {
			out.Connected, _ = m["connected"].(bool)
		}
	}
	if lr, ok := st["last_renewal"].(map[string]any); ok {
		if cs, ok := lr["counts"].(map[string]any); ok {
			for k, v := range cs {
				out.Counts[k], _ = v.(float64)
			}
		}
	}
	return out
}

// deliver sends one message and waits until the subscriber has it.
func deliver(t testing.TB, a *daemon, be *backend, what string) {
	t.Helper()
	id, err := a.send(fmt.Sprintf(`{"what":%q}`, what))
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, what+" at the subscriber", func() bool { return be.has([]string{id}) })
}

// outageSetup starts a CA issuing ttl certificates, a broker and the agent
// process with a two-use token (so re-enrollment after expiry is possible)
// and the given expired policy, and waits until it publishes.
func outageSetup(t *testing.T, device string, ttl time.Duration, policy string) (*testpki.EdgeCA, *backend, *daemon) {
	t.Helper()
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{CertTTL: ttl, MinTTL: ttl})
	tok, _, err := c.CreateToken(context.Background(), ca.TokenOptions{URL: c.URL, Device: device, Uses: 2})
	if err != nil {
		t.Fatal(err)
	}
	be := startBackend(t, c.Dir)
	work := t.TempDir()
	sock := filepath.Join(work, "api.sock")
	cfgFile := filepath.Join(work, "edgeagent.yaml")
	agentConfig{DeviceID: device, StateDir: filepath.Join(work, "state"), Socket: sock, MQTTURL: be.broker.URL(), MQTTCA: be.caFile,
		RetryMin: "1s", RetryMax: "3s", Policy: policy}.write(t, cfgFile)
	a := startDaemon(t, cfgFile, sock, "EDGEAGENT_TOKEN="+tok.String())
	deliver(t, a, be, "first message")
	return c, be, a
}

// TestCAOutage stops the CA (in-process edgeca, on the same port when it
// comes back) while the agent process runs, three ways in parallel.
func TestCAOutage(t *testing.T) {
	t.Parallel()
	mosquitto.Binary(t)

	// Across a renewal window: the agent keeps publishing with its
	// certificate, fails and backs off, and renews on its next attempts
	// after the CA's return (at most 2 more failures), before expiry.
	t.Run("across a renewal window", func(t *testing.T) {
		t.Parallel()
		const ttl = 40 * time.Second
		c, be, a := outageSetup(t, "outage-dev", ttl, "rebootstrap")
		first := a.mustStatus().Serial
		c.Stop()
		poll.Until(t, ttl, "two failed renewal attempts", func() bool { return a.mustStatus().Counts["error"] >= 2 })
		deliver(t, a, be, "a message while the CA is down")
		if st := a.mustStatus(); st.Serial != first || st.Phase != "renewing" {
			t.Fatalf("while the CA is down: %+v", st)
		}
		failedBefore := a.mustStatus().Counts["error"]
		back := time.Now()
		c.Resume()
		poll.Until(t, 20*time.Second, "a renewal after the CA returned", func() bool { return a.mustStatus().Serial != first })
		certs := issuedTo(t, c, "outage-dev")
		if len(certs) != 2 || certs[1].Op != "simplereenroll" {
			t.Fatalf("issued %+v", certs)
		}
		// The agent's next attempt after the CA's return renews: counted
		// in attempts, not seconds, so a loaded machine cannot fail it. At
		// most one attempt that was already under way when the CA came back
		// may fail, and one more for the listener's first moments.
		failedAfter := a.mustStatus().Counts["error"] - failedBefore
		t.Logf("renewed %v after the CA returned, %v failed attempts since", certs[1].At.Sub(back).Round(time.Millisecond), failedAfter)
		if failedAfter > 2 {
			t.Errorf("%v renewal attempts failed after the CA returned, want at most 2", failedAfter)
		}
		if !certs[1].At.Before(certs[0].At.Add(ttl)) {
			t.Errorf("renewed at %v, after the certificate expired", certs[1].At)
		}
		if !strings.Contains(a.logs.String(), `msg="renewal failed"`) || !strings.Contains(a.logs.String(), "retry_at=") {
			t.Errorf("no backoff in the log:\n%s", a.logs.String())
		}
		deliver(t, a, be, "a message with the renewed certificate")
	})

	// Down past expiry with renew.expired_policy wait: the agent says so
	// (status and an error log) and keeps trying to renew, but does not
	// re-enroll even though its token would still allow it.
	t.Run("past expiry, policy wait", func(t *testing.T) {
		t.Parallel()
		const ttl = 20 * time.Second
		c, _, a := outageSetup(t, "wait-dev", ttl, "wait")
		first := a.mustStatus().Serial
		c.Stop()
		poll.Until(t, 2*ttl, "the certificate expired, reported", func() bool {
			st := a.mustStatus()
			return st.Phase == "expired" && strings.Contains(st.Expired, "renew.expired_policy: wait")
		})
		a.waitLog(10*time.Second, `level=ERROR msg="certificate expired before it could be renewed" device_id=wait-dev`)
		if !strings.Contains(a.logs.String(), "policy=wait") {
			t.Fatalf("the error log does not name the policy:\n%s", a.logs.String())
		}
		c.Resume()
		errs := a.mustStatus().Counts["error"]
		poll.Until(t, 20*time.Second, "two more renewal attempts with the CA back", func() bool { return a.mustStatus().Counts["error"] >= errs+2 })
		st := a.mustStatus()
		if st.Serial != first || st.Phase != "expired" || st.Counts["rebootstrap"] != 0 {
			t.Fatalf("with policy wait the agent changed identity: %+v", st)
		}
		if certs := issuedTo(t, c, "wait-dev"); len(certs) != 1 {
			t.Fatalf("the CA issued %d certificates, want only the enrollment's: %+v", len(certs), certs)
		}
	})

	// Down past expiry with renew.expired_policy rebootstrap: the agent
	// reports the expiry, tries to re-enroll with its token, and does so
	// once the CA is back; the new certificate works with the broker.
	t.Run("past expiry, policy rebootstrap", func(t *testing.T) {
		t.Parallel()
		const ttl = 20 * time.Second
		c, be, a := outageSetup(t, "reboot-dev", ttl, "rebootstrap")
		first := a.mustStatus().Serial
		c.Stop()
		poll.Until(t, 2*ttl, "the certificate expired, reported", func() bool {
			st := a.mustStatus()
			return st.Phase == "expired" && strings.Contains(st.Expired, "renew.expired_policy: rebootstrap")
		})
		a.waitLog(10*time.Second, `level=ERROR msg="re-enrollment after expiry failed; will retry"`)
		c.Resume()
		poll.Until(t, 20*time.Second, "re-enrollment after the CA returned", func() bool {
			st := a.mustStatus()
			return st.Serial != first && st.Counts["rebootstrap"] == 1 && st.Phase == "valid"
		})
		certs := issuedTo(t, c, "reboot-dev")
		if len(certs) != 2 || certs[1].Op != "simpleenroll" {
			t.Fatalf("issued %+v, want a second simpleenroll", certs)
		}
		a.waitLog(10*time.Second, `msg="re-enrolled after expiry"`)
		deliver(t, a, be, "a message after re-enrollment")
	})
}
