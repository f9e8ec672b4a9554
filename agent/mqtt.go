package agent

import (
	"crypto/x509"
	"errors"

	"github.com/edgeagent/edgeagent/uplink/spool"
)

// newMQTT builds the MQTT uplink.
func newMQTT(d *Daemon, sp *spool.Spool, roots *x509.CertPool) (Uplink, error) {
	return nil, errors.New("agent: the MQTT uplink is not in this build yet; leave mqtt.url empty")
}
