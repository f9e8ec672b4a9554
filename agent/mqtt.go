package agent

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/uplink"
	"github.com/edgeagent/edgeagent/uplink/mqtt"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

// newMQTT builds the MQTT uplink; commands on the device's command topic go
// to local apps through the API's command stream.
func (d *Daemon) newMQTT(c config.MQTT, sp *spool.Spool) (Uplink, error) {
	roots, err := d.backendRoots(c.CABundle)
	if err != nil {
		return nil, fmt.Errorf("agent: mqtt.ca_bundle: %w", err)
	}
	var pub *mqtt.Publisher
	echo := &statusEcho{now: d.clock.Now, grace: d.o.EchoGrace, conns: func() uint64 { return pub.Setup() }}
	if echo.grace <= 0 {
		echo.grace = defaultEchoGrace
	}
	p, err := mqtt.New(mqtt.Options{
		OnStatusEcho:   echo.saw,
		BrokerURL:      c.URL,
		TLS:            uplink.ClientTLSConfig(uplink.TLSOptions{RootCAs: roots, Identity: d.holder, Time: d.clock.Now}),
		ClientID:       d.deviceID,
		TelemetryTopic: config.ExpandTopic(c.TelemetryTopic, d.deviceID),
		StatusTopic:    config.ExpandTopic(c.StatusTopic, d.deviceID),
		CommandTopic:   config.ExpandTopic(c.CommandTopic, d.deviceID),
		KeepAlive:      c.KeepAlive,
		Spool:          sp,
		Logger:         d.log.With("uplink", "mqtt"),
		Rand:           d.o.Rand,
		OnCommand: func(topic string, payload []byte) {
			raw := json.RawMessage(payload)
			if !json.Valid(payload) {
				// Local apps get JSON lines; wrap a non-JSON command as a string.
				raw, _ = json.Marshal(string(payload))
			}
			d.hub.Publish(localapi.Command{Topic: topic, Payload: raw, Time: d.clock.Now().UTC()})
		},
	})
	if err != nil {
		return nil, err
	}
	pub = p
	return mqttUplink{Publisher: p, echo: echo}, nil
}

// defaultEchoGrace is how long the MQTT uplink's own retained status may
// take to come back before the broker is deemed to drop its publishes.
const defaultEchoGrace = 15 * time.Second
