// Package config is the agent's configuration: one YAML file in which every
// key has a default, overridable from the environment (EDGEAGENT_ plus the
// key path in upper case joined by '_', e.g. EDGEAGENT_MQTT_URL), and
// validated at start with errors that name the key.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/edgeagent/edgeagent/deviceid"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/keystore"
)

// Config is the whole agent configuration.
type Config struct {
	// DeviceID names the device for its first enrollment only ("": the
	// host name); from then on the device id is the enrolled identity's,
	// and a config that names another device is refused.
	DeviceID     string `yaml:"device_id"`
	StateDir     string `yaml:"state_dir"`     // key, certificate, CA bundle, spool
	Keystore     string `yaml:"keystore"`      // file or tpm
	KeyAlgorithm string `yaml:"key_algorithm"` // ecdsa-p256, rsa-2048, rsa-3072

	TPM       TPM       `yaml:"tpm"`
	Enroll    Enroll    `yaml:"enroll"`
	Renew     Renew     `yaml:"renew"`
	API       API       `yaml:"api"`
	Metrics   Metrics   `yaml:"metrics"`
	Collector Collector `yaml:"collector"`
	MQTT      MQTT      `yaml:"mqtt"`
	HTTPS     HTTPS     `yaml:"https"`
	Spool     Spool     `yaml:"spool"`
	Shutdown  Shutdown  `yaml:"shutdown"`
	Health    Health    `yaml:"health"`
	Log       Log       `yaml:"log"`
}

// Health says when the agent calls itself unhealthy (/healthz, status).
type Health struct {
	// StallAfter: an uplink that delivered nothing for this long while
	// messages wait in its spool makes the agent unhealthy; 0 disables.
	StallAfter time.Duration `yaml:"stall_after"`
}

// Shutdown says how SIGTERM/SIGINT stop the agent.
type Shutdown struct {
	// DrainTimeout bounds how long the uplinks keep sending what is
	// spooled after the local API stopped accepting; what is left stays
	// in the spool for the next start.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

// TPM selects the TPM device or simulator.
type TPM struct {
	Device           string `yaml:"device"`            // default /dev/tpmrm0
	Address          string `yaml:"address"`           // host:port of a TPM simulator instead of the device
	PersistentHandle uint32 `yaml:"persistent_handle"` // 0: keep key blobs in state_dir
}

// Enroll says how to get the first certificate.
type Enroll struct {
	TokenFile    string `yaml:"token_file"` // or EDGEAGENT_TOKEN; never logged
	Server       string `yaml:"server"`     // EST server, for plain credentials
	Label        string `yaml:"label"`
	CAPin        string `yaml:"ca_pin"`
	CABundle     string `yaml:"ca_bundle"`
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// PostQuantumTLS offers the EST server hybrid post-quantum key
	// exchanges (X25519MLKEM768); off by default, as in edgeca.
	PostQuantumTLS bool `yaml:"post_quantum_tls"`
	// DamagedIdentity is what run does with a state dir that holds part
	// of an identity: refuse (the default: stop and say how to recover)
	// or reenroll (move the damaged files aside and enroll again with
	// the token, keeping the key and the device id).
	DamagedIdentity string `yaml:"damaged_identity"`
	// Attest "tpm" enrolls with TPM attestation (EK, AK, Certify of the
	// device key): needed by --require-tpm tokens, and what lets an
	// expired device recover without a token. "" is plain enrollment.
	Attest string `yaml:"attest"`
}

// Renew is the renewal policy.
type Renew struct {
	Fraction      float64       `yaml:"fraction"`       // of the lifetime after NotBefore; default 0.66
	Jitter        float64       `yaml:"jitter"`         // of the lifetime; default 0.05
	Rekey         bool          `yaml:"rekey"`          // new key on every renewal
	RetryMin      time.Duration `yaml:"retry_min"`      // first backoff after a failure
	RetryMax      time.Duration `yaml:"retry_max"`      // backoff cap
	ExpiredPolicy string        `yaml:"expired_policy"` // rebootstrap or wait
	// Server, when set, is where renewals go instead of the EST server
	// the device enrolled with: a CA that moved to a new URL. The first
	// renewal there records it in identity.json. Applied on SIGHUP.
	Server string `yaml:"server"`
	// RenewalInfoInterval is how often the CA's renewal-info is asked
	// whether to renew now (edgeca device renew-now); 0 disables.
	RenewalInfoInterval time.Duration `yaml:"renewal_info_interval"`
}

// API is the local API for apps on the device.
type API struct {
	Socket string `yaml:"socket"`
}

// Metrics is the localhost health and Prometheus endpoint.
type Metrics struct {
	Listen string `yaml:"listen"` // "" disables
}

// Collector samples system metrics.
type Collector struct {
	Interval time.Duration `yaml:"interval"` // 0 disables
	Disks    []string      `yaml:"disks"`
}

// MQTT is the MQTT uplink; empty URL disables it.
type MQTT struct {
	URL            string        `yaml:"url"`       // mqtts://host:8883
	CABundle       string        `yaml:"ca_bundle"` // broker CA; default: the enrolled CA bundle
	TelemetryTopic string        `yaml:"telemetry_topic"`
	StatusTopic    string        `yaml:"status_topic"`
	CommandTopic   string        `yaml:"command_topic"`
	KeepAlive      time.Duration `yaml:"keepalive"`
}

// HTTPS is the HTTPS uplink; empty URL disables it.
type HTTPS struct {
	URL      string `yaml:"url"`
	CABundle string `yaml:"ca_bundle"`
	BatchMax int    `yaml:"batch_max"`
}

// Spool bounds the store-and-forward queue of each uplink.
type Spool struct {
	MaxBytes ByteSize `yaml:"max_bytes"`
	Sync     string   `yaml:"sync"` // always or never
}

// Log selects the log format.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// Default returns the configuration used for every key the file omits.
func Default() Config {
	return Config{
		StateDir:     "/var/lib/edgeagent",
		Keystore:     "file",
		KeyAlgorithm: string(keystore.DefaultAlgorithm),
		TPM:          TPM{Device: "/dev/tpmrm0"},
		Enroll:       Enroll{DamagedIdentity: "refuse"},
		Renew:        Renew{Fraction: 0.66, Jitter: 0.05, RetryMin: 10 * time.Second, RetryMax: 30 * time.Minute, ExpiredPolicy: "rebootstrap", RenewalInfoInterval: time.Hour},
		API:          API{Socket: "/run/edgeagent/api.sock"},
		Metrics:      Metrics{Listen: "127.0.0.1:9810"},
		Collector:    Collector{Interval: 60 * time.Second, Disks: []string{"/"}},
		MQTT: MQTT{
			TelemetryTopic: "devices/{device_id}/telemetry",
			StatusTopic:    "devices/{device_id}/status",
			CommandTopic:   "devices/{device_id}/commands",
			KeepAlive:      30 * time.Second,
		},
		HTTPS:    HTTPS{BatchMax: 500},
		Spool:    Spool{MaxBytes: 64 << 20, Sync: "always"},
		Shutdown: Shutdown{DrainTimeout: 10 * time.Second},
		Health:   Health{StallAfter: 10 * time.Minute},
		Log:      Log{Level: "info", Format: "text"},
	}
}

// MaxFileBytes bounds the config file.
const MaxFileBytes = 1 << 20

// Load reads path (if not "") over the defaults, applies environment
// overrides from env (os.Environ() form) and validates the result.
func Load(path string, env []string) (Config, error) {
	cfg := Default()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return Config{}, fmt.Errorf("config: read %s: %w", path, err)
		}
		if len(b) > MaxFileBytes {
			return Config{}, fmt.Errorf("config: %s is %d bytes, at most %d", path, len(b), MaxFileBytes)
		}
		if err := Parse(b, &cfg); err != nil {
			return Config{}, fmt.Errorf("config: %s: %w", path, err)
		}
	}
	if err := applyEnv(&cfg, env); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// Parse decodes YAML over cfg. Unknown keys are refused (a typo must not be
// silently ignored) and every error names the key it is about.
func Parse(b []byte, cfg *Config) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("parse YAML: %w", err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil // empty file: all defaults
	}
	return decodeNode(doc.Content[0], reflect.ValueOf(cfg).Elem(), "")
}

func decodeNode(n *yaml.Node, v reflect.Value, key string) error {
	if v.Kind() == reflect.Struct {
		if n.Kind != yaml.MappingNode {
			return &FieldError{Key: orTop(key), Msg: fmt.Sprintf("line %d: want a mapping of keys", n.Line)}
		}
		t := v.Type()
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			name := n.Content[i].Value
			sub := name
			if key != "" {
				sub = key + "." + name
			}
			// A key given twice: YAML says the document is invalid, and
			// silently taking one of them hides a mistake.
			if line, dup := seen[name]; dup {
				return &FieldError{Key: sub, Msg: fmt.Sprintf("line %d: given twice (first on line %d)", n.Content[i].Line, line)}
			}
			seen[name] = n.Content[i].Line
			idx := -1
			for j := 0; j < t.NumField(); j++ {
				if strings.Split(t.Field(j).Tag.Get("yaml"), ",")[0] == name {
					idx = j
					break
				}
			}
			if idx < 0 {
				return &FieldError{Key: sub, Msg: fmt.Sprintf("line %d: unknown key (see packaging/edgeagent.yaml for all keys)", n.Content[i].Line)}
			}
			if err := decodeNode(n.Content[i+1], v.Field(idx), sub); err != nil {
				return err
			}
		}
		return nil
	}
	if v.Type() == reflect.TypeOf(time.Duration(0)) {
		if n.Kind != yaml.ScalarNode {
			return &FieldError{Key: key, Msg: fmt.Sprintf("line %d: %s", n.Line, durationHint(n.Value))}
		}
		d, err := parseDuration(n.Value)
		if err != nil {
			return &FieldError{Key: key, Msg: fmt.Sprintf("line %d: %v", n.Line, err)}
		}
		v.SetInt(int64(d))
		return nil
	}
	if err := n.Decode(v.Addr().Interface()); err != nil {
		msg := err.Error()
		if te := (*yaml.TypeError)(nil); errors.As(err, &te) && len(te.Errors) > 0 {
			msg = strings.Join(te.Errors, "; ")
		}
		msg = strings.TrimPrefix(msg, fmt.Sprintf("line %d: ", n.Line))
		return &FieldError{Key: key, Msg: fmt.Sprintf("line %d: %s", n.Line, msg)}
	}
	return nil
}

func orTop(key string) string {
	if key == "" {
		return "(top level)"
	}
	return key
}

// FieldError is a validation failure of one key.
type FieldError struct {
	Key string // YAML path, e.g. mqtt.url
	Msg string
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Msg }

// Validate checks every key and returns all problems at once.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &FieldError{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	if c.DeviceID != "" {
		if err := deviceid.Validate(c.DeviceID); err != nil {
			bad("device_id", "%v (set device_id or EDGEAGENT_DEVICE_ID)", err)
		}
	}
	if c.StateDir == "" {
		bad("state_dir", "must not be empty")
	}
	switch c.Keystore {
	case "file", "tpm":
	default:
		bad("keystore", "%q: use file or tpm", c.Keystore)
	}
	if _, err := keystore.ParseAlgorithm(c.KeyAlgorithm); err != nil {
		bad("key_algorithm", "%v", err)
	}
	if c.Enroll.Server != "" {
		if err := token.ValidateURL(c.Enroll.Server); err != nil {
			bad("enroll.server", "%v", err)
		}
	}
	switch c.Enroll.Attest {
	case "":
	case "tpm":
		if c.Keystore != "tpm" {
			bad("enroll.attest", "tpm needs keystore: tpm (the key attested is the TPM's device key)")
		}
	default:
		bad("enroll.attest", "%q: use tpm, or leave it out for plain enrollment", c.Enroll.Attest)
	}
	if c.Enroll.CAPin != "" {
		if _, err := token.ParsePin(c.Enroll.CAPin); err != nil {
			bad("enroll.ca_pin", "%v", err)
		}
	}
	switch c.Enroll.DamagedIdentity {
	case "refuse", "reenroll":
	default:
		bad("enroll.damaged_identity", "%q: use refuse or reenroll", c.Enroll.DamagedIdentity)
	}
	if c.Renew.Fraction <= 0.1 || c.Renew.Fraction >= 0.95 {
		bad("renew.fraction", "%v: must be between 0.1 and 0.95 of the certificate lifetime", c.Renew.Fraction)
	}
	if c.Renew.Jitter < 0 || c.Renew.Jitter > 0.2 {
		bad("renew.jitter", "%v: must be between 0 and 0.2", c.Renew.Jitter)
	}
	if c.Renew.RenewalInfoInterval != 0 && (c.Renew.RenewalInfoInterval < time.Minute || c.Renew.RenewalInfoInterval > 24*time.Hour) {
		bad("renew.renewal_info_interval", "must be 0 (off) or between 1m and 24h, got %v", c.Renew.RenewalInfoInterval)
	}
	if c.Renew.RetryMin <= 0 || c.Renew.RetryMax < c.Renew.RetryMin {
		bad("renew.retry_min", "must be positive and at most renew.retry_max (%v, %v)", c.Renew.RetryMin, c.Renew.RetryMax)
	}
	if c.Renew.Server != "" {
		if err := token.ValidateURL(c.Renew.Server); err != nil {
			bad("renew.server", "%v", err)
		}
	}
	switch c.Renew.ExpiredPolicy {
	case "rebootstrap", "wait":
	default:
		bad("renew.expired_policy", "%q: use rebootstrap or wait", c.Renew.ExpiredPolicy)
	}
	if c.API.Socket == "" {
		bad("api.socket", "must not be empty")
	}
	if c.Shutdown.DrainTimeout < 0 {
		bad("shutdown.drain_timeout", "%v: must not be negative (0 exits without draining)", c.Shutdown.DrainTimeout)
	}
	if c.Health.StallAfter < 0 {
		bad("health.stall_after", "%v: must not be negative (0 disables the check)", c.Health.StallAfter)
	}
	if c.Collector.Interval < 0 || (c.Collector.Interval > 0 && c.Collector.Interval < time.Second) {
		bad("collector.interval", "%v: 0 disables, otherwise at least 1s", c.Collector.Interval)
	}
	if c.MQTT.URL != "" {
		u, err := url.Parse(c.MQTT.URL)
		if err != nil || u.Scheme != "mqtts" || u.Hostname() == "" {
			bad("mqtt.url", "%q: want mqtts://host:port (plain mqtt is refused: the uplink is mutual TLS)", c.MQTT.URL)
		}
		for key, topic := range map[string]string{"mqtt.telemetry_topic": c.MQTT.TelemetryTopic, "mqtt.status_topic": c.MQTT.StatusTopic, "mqtt.command_topic": c.MQTT.CommandTopic} {
			if topic == "" || strings.ContainsAny(topic, "+#") {
				bad(key, "%q: must be a topic name without wildcards", topic)
			}
		}
		if c.MQTT.KeepAlive < time.Second {
			bad("mqtt.keepalive", "%v: at least 1s", c.MQTT.KeepAlive)
		}
	}
	if c.HTTPS.URL != "" {
		u, err := url.Parse(c.HTTPS.URL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			bad("https.url", "%q: want https://host[:port]/path", c.HTTPS.URL)
		}
		if c.HTTPS.BatchMax < 1 || c.HTTPS.BatchMax > 10000 {
			bad("https.batch_max", "%d: between 1 and 10000", c.HTTPS.BatchMax)
		}
	}
	if c.Spool.MaxBytes < 1<<20 {
		bad("spool.max_bytes", "%d: at least 1MiB", c.Spool.MaxBytes)
	}
	switch c.Spool.Sync {
	case "always", "never":
	default:
		bad("spool.sync", "%q: use always or never", c.Spool.Sync)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q: use debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%q: use text or json", c.Log.Format)
	}
	return errors.Join(errs...)
}

// EnvPrefix starts every environment override.
const EnvPrefix = "EDGEAGENT_"

// UnknownEnv lists the EDGEAGENT_* variables in env (os.Environ() form)
// that name no config key, sorted: a typo (EDGEAGENT_MQTT_ULR) would
// otherwise be silently ignored.
func UnknownEnv(env []string) []string {
	known := map[string]bool{}
	for _, k := range Keys() {
		known[EnvName(k)] = true
	}
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		// EDGEAGENT_TOKEN is no key: the token is read where it is used.
		if strings.HasPrefix(k, EnvPrefix) && !known[k] && k != "EDGEAGENT_TOKEN" {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// EnvName is the environment variable that overrides key.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// applyEnv sets fields from EDGEAGENT_* variables. EDGEAGENT_TOKEN is not a
// key (the token is read where it is used) and is skipped here.
func applyEnv(cfg *Config, env []string) error {
	vars := map[string]string{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, EnvPrefix) {
			vars[k] = v
		}
	}
	var errs []error
	walk(reflect.ValueOf(cfg).Elem(), "", func(key string, f reflect.Value) {
		name := EnvName(key)
		v, ok := vars[name]
		if !ok {
			return
		}
		if err := setFromString(f, v); err != nil {
			errs = append(errs, &FieldError{Key: key, Msg: fmt.Sprintf("from %s: %v", name, err)})
		}
	})
	return errors.Join(errs...)
}

// walk calls fn for every leaf field with its dotted YAML key.
func walk(v reflect.Value, prefix string, fn func(key string, f reflect.Value)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		key := tag
		if prefix != "" {
			key = prefix + "." + tag
		}
		f := v.Field(i)
		if f.Kind() == reflect.Struct && f.Type() != reflect.TypeOf(time.Duration(0)) {
			walk(f, key, fn)
			continue
		}
		fn(key, f)
	}
}

// Walk calls fn for every key of cfg with its field, which fn may set.
func Walk(cfg *Config, fn func(key string, f reflect.Value)) {
	walk(reflect.ValueOf(cfg).Elem(), "", fn)
}

// Diff lists the keys whose values differ between a and b, in Keys order.
func Diff(a, b Config) []string {
	old := map[string]any{}
	Walk(&a, func(key string, f reflect.Value) { old[key] = f.Interface() })
	var out []string
	Walk(&b, func(key string, f reflect.Value) {
		if !reflect.DeepEqual(old[key], f.Interface()) {
			out = append(out, key)
		}
	})
	return out
}

// Keys lists every configuration key, for documentation and tests.
func Keys() []string {
	var out []string
	cfg := Default()
	walk(reflect.ValueOf(&cfg).Elem(), "", func(key string, _ reflect.Value) { out = append(out, key) })
	return out
}

func setFromString(f reflect.Value, s string) error {
	if f.Type() == reflect.TypeOf(time.Duration(0)) {
		d, err := parseDuration(s)
		if err != nil {
			return err
		}
		f.SetInt(int64(d))
		return nil
	}
	if f.Type() == reflect.TypeOf(ByteSize(0)) {
		var b ByteSize
		if err := b.UnmarshalText([]byte(s)); err != nil {
			return err
		}
		f.SetInt(int64(b))
		return nil
	}
	switch f.Kind() {
	case reflect.String:
		f.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		f.SetInt(n)
	case reflect.Uint32:
		n, err := strconv.ParseUint(s, 0, 32)
		if err != nil {
			return err
		}
		f.SetUint(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		f.SetFloat(n)
	case reflect.Slice:
		var parts []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		f.Set(reflect.ValueOf(parts))
	default:
		return fmt.Errorf("unsupported type %s", f.Type())
	}
	return nil
}

// parseDuration reads a duration as Go writes them; a bare 0 is zero.
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New(durationHint(s))
	}
	return d, nil
}

func durationHint(s string) string {
	return fmt.Sprintf("%q is not a duration: write a number with a unit, such as 30s, 30m, 1h30m or 0", s)
}

// ByteSize is a size in bytes that also reads "64MiB", "512KiB", "1GiB".
type ByteSize int64

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *ByteSize) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<50)/mult {
		return fmt.Errorf("size %q: want a number of bytes, optionally with KiB, MiB or GiB", string(text))
	}
	*b = ByteSize(n * mult)
	return nil
}

// Format writes cfg as YAML, every key in Keys order: the effective
// configuration, which Parse reads back to cfg.
func Format(cfg Config) []byte {
	var b strings.Builder
	section := ""
	Walk(&cfg, func(key string, f reflect.Value) {
		sec, name, nested := strings.Cut(key, ".")
		if !nested {
			name, sec = key, ""
		}
		if sec != section {
			if sec != "" {
				fmt.Fprintf(&b, "%s:\n", sec)
			}
			section = sec
		}
		indent := ""
		if sec != "" {
			indent = "  "
		}
		fmt.Fprintf(&b, "%s%s: %s\n", indent, name, formatValue(f))
	})
	return []byte(b.String())
}

func formatValue(f reflect.Value) string {
	switch {
	case f.Type() == reflect.TypeOf(time.Duration(0)):
		return time.Duration(f.Int()).String()
	case f.Kind() == reflect.String:
		return yamlString(f.String())
	case f.Kind() == reflect.Bool:
		return strconv.FormatBool(f.Bool())
	case f.Kind() == reflect.Int, f.Kind() == reflect.Int64:
		return strconv.FormatInt(f.Int(), 10)
	case f.Kind() == reflect.Uint32:
		return strconv.FormatUint(f.Uint(), 10)
	case f.Kind() == reflect.Float64:
		return strconv.FormatFloat(f.Float(), 'g', -1, 64)
	case f.Kind() == reflect.Slice:
		parts := make([]string, f.Len())
		for i := range parts {
			parts[i] = yamlString(f.Index(i).String())
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	return fmt.Sprint(f.Interface())
}

// yamlString quotes s when YAML would read it as something else.
func yamlString(s string) string {
	if s == "" {
		return `""`
	}
	b, err := yaml.Marshal(s)
	if err != nil {
		return strconv.Quote(s)
	}
	return strings.TrimSuffix(string(b), "\n")
}

// ExpandTopic replaces {device_id} in an MQTT topic template.
func ExpandTopic(tmpl, deviceID string) string {
	return strings.ReplaceAll(tmpl, "{device_id}", deviceID)
}
