package agent

import (
	"fmt"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/keystore/file"
	"github.com/edgeagent/edgeagent/keystore/tpm"
)

// OpenKeystore opens the configured key backend: a key file in the state
// dir, or a key inside the TPM (blobs in the state dir, or a persistent
// handle).
func OpenKeystore(cfg config.Config) (keystore.Keystore, error) {
	switch cfg.Keystore {
	case "file":
		return file.Open(cfg.StateDir)
	case "tpm":
		o := tpm.Options{Dir: cfg.StateDir, PersistentHandle: cfg.TPM.PersistentHandle}
		if cfg.TPM.Address != "" {
			o.Address = cfg.TPM.Address
		} else {
			o.Device = cfg.TPM.Device
		}
		return tpm.Open(o)
	}
	return nil, fmt.Errorf("keystore %q: use file or tpm", cfg.Keystore)
}
