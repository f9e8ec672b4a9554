package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func valid() Config {
	c := Default()
	c.DeviceID = "dev-1"
	return c
}

func TestShippedConfigIsTheDefault(t *testing.T) {
	cfg, err := Load("../../packaging/edgeagent.yaml", []string{"EDGEAGENT_DEVICE_ID=dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := valid(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("packaging/edgeagent.yaml differs from Default():\n got %+v\nwant %+v", cfg, want)
	}
	// Every key is documented in the shipped file.
	b, err := os.ReadFile("../../packaging/edgeagent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys() {
		leaf := k[strings.LastIndex(k, ".")+1:]
		if !strings.Contains(string(b), leaf+":") {
			t.Errorf("key %s is not in packaging/edgeagent.yaml", k)
		}
	}
}

// TestReadmeReferenceIsTheShippedConfig keeps README's "Configuration
// reference" block equal to packaging/edgeagent.yaml, so the README never
// documents a default the agent does not have.
func TestReadmeReferenceIsTheShippedConfig(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	shipped, err := os.ReadFile("../../packaging/edgeagent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(readme), "## Configuration reference\n")
	if !ok {
		t.Fatal(`README.md has no "## Configuration reference" section`)
	}
	_, block, ok := strings.Cut(sec, "```yaml\n")
	if !ok {
		t.Fatal("README.md's configuration reference has no ```yaml block")
	}
	block, _, ok = strings.Cut(block, "```\n")
	if !ok {
		t.Fatal("README.md's configuration reference block is not closed")
	}
	if block != string(shipped) {
		t.Errorf("README.md's configuration reference differs from packaging/edgeagent.yaml: copy the file into the block")
	}
}

func TestValidateNamesTheKey(t *testing.T) {
	cases := []struct {
		key string
		mod func(*Config)
	}{
		{"device_id", func(c *Config) { c.DeviceID = "bad id" }},
		{"device_id", func(c *Config) { c.DeviceID = ".." }},
		{"device_id", func(c *Config) { c.DeviceID = "-rf" }},
		{"state_dir", func(c *Config) { c.StateDir = "" }},
		{"keystore", func(c *Config) { c.Keystore = "hsm" }},
		{"key_algorithm", func(c *Config) { c.KeyAlgorithm = "dsa" }},
		{"enroll.server", func(c *Config) { c.Enroll.Server = "http://ca" }},
		{"enroll.ca_pin", func(c *Config) { c.Enroll.CAPin = "sha256:12" }},
		{"enroll.attest", func(c *Config) { c.Enroll.Attest = "sgx" }},
		{"enroll.attest", func(c *Config) { c.Keystore = "file"; c.Enroll.Attest = "tpm" }},
		{"renew.fraction", func(c *Config) { c.Renew.Fraction = 1 }},
		{"renew.jitter", func(c *Config) { c.Renew.Jitter = -1 }},
		{"renew.retry_min", func(c *Config) { c.Renew.RetryMin = time.Hour }},
		{"renew.expired_policy", func(c *Config) { c.Renew.ExpiredPolicy = "panic" }},
		{"renew.server", func(c *Config) { c.Renew.Server = "http://ca.example:8443" }},
		{"api.socket", func(c *Config) { c.API.Socket = "" }},
		{"collector.interval", func(c *Config) { c.Collector.Interval = time.Millisecond }},
		{"mqtt.url", func(c *Config) { c.MQTT.URL = "mqtt://broker:1883" }},
		{"mqtt.telemetry_topic", func(c *Config) { c.MQTT.URL = "mqtts://b:8883"; c.MQTT.TelemetryTopic = "devices/#" }},
		{"mqtt.keepalive", func(c *Config) { c.MQTT.URL = "mqtts://b:8883"; c.MQTT.KeepAlive = 0 }},
		{"https.url", func(c *Config) { c.HTTPS.URL = "ftp://x" }},
		{"https.batch_max", func(c *Config) { c.HTTPS.URL = "https://x/in"; c.HTTPS.BatchMax = 0 }},
		{"spool.max_bytes", func(c *Config) { c.Spool.MaxBytes = 10 }},
		{"spool.sync", func(c *Config) { c.Spool.Sync = "sometimes" }},
		{"log.level", func(c *Config) { c.Log.Level = "loud" }},
		{"log.format", func(c *Config) { c.Log.Format = "xml" }},
	}
	for _, tc := range cases {
		t.Run(tc.key, func(t *testing.T) {
			c := valid()
			tc.mod(&c)
			err := c.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Key != tc.key {
				t.Fatalf("err = %v, want a FieldError for %s", err, tc.key)
			}
		})
	}
	if err := valid().Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
}

func TestLoadFileAndEnv(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.yaml")
	yml := "device_id: from-file\nmqtt:\n  url: mqtts://broker:8883\n  keepalive: 5s\nspool:\n  max_bytes: 2MiB\ncollector:\n  disks: [/, /data]\n"
	if err := os.WriteFile(p, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(p, []string{"EDGEAGENT_MQTT_KEEPALIVE=7s", "EDGEAGENT_RENEW_REKEY=true", "EDGEAGENT_COLLECTOR_DISKS=/a, /b", "OTHER=1", "EDGEAGENT_TOKEN=not-a-key"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DeviceID != "from-file" || cfg.MQTT.URL != "mqtts://broker:8883" || cfg.MQTT.KeepAlive != 7*time.Second ||
		!cfg.Renew.Rekey || cfg.Spool.MaxBytes != 2<<20 || !reflect.DeepEqual(cfg.Collector.Disks, []string{"/a", "/b"}) {
		t.Fatalf("got %+v", cfg)
	}
}

func TestLoadRejects(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name, path string
		env        []string
		want       string
	}{
		{"missing file", filepath.Join(dir, "nope.yaml"), nil, "no such file"},
		{"unknown key", write("u.yaml", "device_id: a\nmqtt:\n  ulr: x\n"), nil, "ulr"},
		{"bad yaml", write("b.yaml", "device_id: [\n"), nil, "parse YAML"},
		{"bad duration", write("d.yaml", "device_id: a\nmqtt:\n  keepalive: soon\n"), nil, "keepalive"},
		{"bad env", "", []string{"EDGEAGENT_DEVICE_ID=a", "EDGEAGENT_RENEW_FRACTION=lots"}, "renew.fraction: from EDGEAGENT_RENEW_FRACTION"},
		{"bad size", write("s.yaml", "device_id: a\nspool:\n  max_bytes: 3 apples\n"), nil, "max_bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.path, tc.env)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"1024": 1024, "64MiB": 64 << 20, "2 KiB": 2048, "1GiB": 1 << 30, "7B": 7} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(in)); err != nil || b != want {
			t.Errorf("%q: %d %v", in, b, err)
		}
	}
	for _, in := range []string{"", "-1", "1TB", "MiB", "99999999999999999999"} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func FuzzParse(f *testing.F) {
	b, _ := os.ReadFile("../../packaging/edgeagent.yaml")
	f.Add(b)
	f.Add([]byte("mqtt: {url: 1}"))
	f.Fuzz(func(t *testing.T, in []byte) {
		c := Default()
		if err := Parse(in, &c); err != nil {
			return
		}
		_ = c.Validate() // must not panic
	})
}

// TestFormatReadsBack: the effective config printed by `config check`
// parses back to the same config, for the defaults and for a config with
// every kind of value set.
func TestFormatReadsBack(t *testing.T) {
	full := Default()
	full.DeviceID, full.MQTT.URL, full.Enroll.CAPin = "dev-1", "mqtts://broker:8883", "sha256:"+strings.Repeat("ab", 32)
	full.Collector.Disks = []string{"/", "/data", "yes"}
	full.Renew.Rekey, full.TPM.PersistentHandle, full.Collector.Interval = true, 0x81010001, 0
	full.Log.Level = "debug"
	for _, cfg := range []Config{Default(), full} {
		var got Config
		if err := Parse(Format(cfg), &got); err != nil {
			t.Fatalf("%v\n%s", err, Format(cfg))
		}
		if d := Diff(cfg, got); len(d) != 0 {
			t.Fatalf("keys %v differ after Format and Parse:\n%s", d, Format(cfg))
		}
	}
}

// TestConfigMistakesNamed: duplicate keys, bad durations and unknown
// EDGEAGENT_ variables are named.
func TestConfigMistakesNamed(t *testing.T) {
	for _, c := range []struct {
		name, yml string
		want      []string
	}{
		{"duplicate top-level key", "device_id: a\ndevice_id: b\n", []string{"device_id", "line 2", "given twice", "line 1"}},
		{"duplicate nested key", "mqtt:\n  url: mqtts://a:1\n  keepalive: 5s\n  url: mqtts://b:1\n", []string{"mqtt.url", "given twice"}},
		{"duplicate section", "mqtt:\n  url: mqtts://a:1\nmqtt:\n  keepalive: 5s\n", []string{"mqtt", "given twice"}},
		{"bad duration", "renew:\n  retry_max: 30 minutes\n", []string{"renew.retry_max", `"30 minutes" is not a duration`, "30m"}},
		{"duration as a list", "renew:\n  retry_max: [1]\n", []string{"renew.retry_max", "not a duration"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := Default()
			err := Parse([]byte(c.yml), &cfg)
			for _, w := range c.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Fatalf("Parse: %v, want it to mention %q", err, w)
				}
			}
		})
	}
	if _, err := Load("", []string{"EDGEAGENT_RENEW_RETRY_MAX=soon"}); err == nil || !strings.Contains(err.Error(), "30m") {
		t.Fatalf("bad duration from the environment: %v", err)
	}
	cfg := Default()
	if err := Parse([]byte("collector:\n  interval: 0\n"), &cfg); err != nil || cfg.Collector.Interval != 0 || cfg.Validate() != nil {
		t.Fatalf("collector.interval 0 (disables): %v, %v", err, cfg.Collector.Interval)
	}
	got := UnknownEnv([]string{"EDGEAGENT_MQTT_ULR=x", "EDGEAGENT_MQTT_URL=y", "EDGEAGENT_TOKEN=t", "HOME=/", "EDGEAGENT_A=1"})
	if !reflect.DeepEqual(got, []string{"EDGEAGENT_A", "EDGEAGENT_MQTT_ULR"}) {
		t.Fatalf("UnknownEnv: %v", got)
	}
}
