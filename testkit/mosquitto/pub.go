package mosquitto

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"time"
)

// PubOptions say how mosquitto_pub connects: the same mTLS listener and
// certificate an agent would use.
type PubOptions struct {
	Addr                      string // host:port of the TLS listener
	CAFile, CertFile, KeyFile string
	ClientID                  string
	Topic                     string
}

// PubThroughput publishes lines with `mosquitto_pub -q 1 -l` (one message
// per line, QoS 1, one connection) and returns messages per second. The
// clock stops when mosquitto_pub has exited and arrived returns: pass a
// function that waits until a subscriber counted every line, because
// mosquitto_pub can be disconnected under load and still exit 0. A nil
// arrived measures until exit only. It is the baseline next to the agent's
// own throughput in `make bench`.
func PubThroughput(ctx context.Context, o PubOptions, lines [][]byte, arrived func(context.Context) error) (float64, error) {
	if len(lines) == 0 {
		return 0, errors.New("mosquitto_pub throughput: no lines to publish")
	}
	bin, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		return 0, fmt.Errorf("mosquitto_pub throughput: mosquitto_pub not found (`make test` installs mosquitto-clients): %w", err)
	}
	host, port, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return 0, fmt.Errorf("mosquitto_pub throughput: broker address %q: %w", o.Addr, err)
	}
	var in bytes.Buffer
	for i, l := range lines {
		if bytes.IndexByte(l, '\n') >= 0 {
			return 0, fmt.Errorf("mosquitto_pub throughput: line %d contains a newline", i)
		}
		in.Write(l)
		in.WriteByte('\n')
	}
	cmd := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "--cafile", o.CAFile, "--cert", o.CertFile, "--key", o.KeyFile,
		"-i", o.ClientID, "-q", "1", "-t", o.Topic, "-l")
	cmd.Stdin = &in
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("mosquitto_pub throughput: mosquitto_pub: %w: %s", err, out.String())
	}
	if arrived != nil {
		if err := arrived(ctx); err != nil {
			return 0, fmt.Errorf("mosquitto_pub throughput: waiting for deliveries: %w", err)
		}
	}
	return float64(len(lines)) / time.Since(start).Seconds(), nil
}
