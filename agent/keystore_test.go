package agent

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

// TestStatusNamesTheTPM: with keystore: tpm the status says so, with the
// TPM's manufacturer and firmware.
func TestStatusNamesTheTPM(t *testing.T) {
	sim := swtpm.Start(t)
	cfg := config.Default()
	cfg.Keystore, cfg.StateDir, cfg.TPM.Address = "tpm", t.TempDir(), sim.Addr()
	ks, err := OpenKeystore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	info := ks.Info()
	st := Status{DeviceID: "d", Keystore: info.Backend, KeystoreInfo: info.Details, Serial: "01", NotAfter: time.Now().Add(time.Hour)}
	var out bytes.Buffer
	if err := WriteStatus(&out, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	line := ""
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "keystore") {
			line = l
		}
	}
	if !strings.Contains(line, "tpm") || !strings.Contains(line, "manufacturer IBM") || !strings.Contains(line, "firmware") {
		t.Fatalf("status keystore line %q", line)
	}
	cfg.Keystore = "hsm"
	if _, err := OpenKeystore(cfg); err == nil {
		t.Fatal("unknown keystore accepted")
	}
}
