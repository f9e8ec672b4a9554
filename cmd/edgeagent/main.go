// Command edgeagent is the device agent: it enrolls the device with a CA,
// renews its certificate and ships telemetry over mutual TLS. This file only
// parses the command line; the work is in package agent.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/edgeagent/edgeagent/agent"
	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/internal/version"
	"github.com/edgeagent/edgeagent/keystore"
)

const usage = `usage: edgeagent <command> [flags]

commands:
  run       run the agent: enroll if needed, renew, ship telemetry (--config FILE)
  status    show identity, renewal, uplinks and spools of the running agent
  send      queue one telemetry message (a JSON object) with the running agent
  enroll    enroll this device with a CA (EST simpleenroll) using a token
  renew     renew the certificate now (EST simplereenroll over mutual TLS; through the agent when it runs)
  config check  validate the config file and the environment, print the effective config
  install   install the agent as a system service (--config FILE; systemd: hardened unit)
  uninstall, start, stop, restart   manage that service
  version   print the version

Run 'edgeagent <command> -h' for the command's flags.
`

// usageError makes main exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	// First, as runtime.MemProfileRate asks.
	tuneMemory(os.Getenv)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := runIO(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "edgeagent:", err)
	}
	os.Exit(exitCode(err))
}

// exitNeedsOperator is the exit status of a failure that retrying cannot
// fix (sysexits' EX_CONFIG): a bad config, a refused token, a device id
// that contradicts the identity, a damaged identity. The packaged unit's
// RestartPreventExitStatus names it, so systemd stops restarting and the
// unit shows failed with this error in the journal.
const exitNeedsOperator = 78

// exitCode is 0 for success and -h, 2 for usage errors, 78 for failures
// that need the operator, 1 for other failures.
func exitCode(err error) int {
	var ue usageError
	var ce configError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		return 2
	case errors.As(err, &ce), errors.Is(err, agent.ErrNeedsOperator):
		return exitNeedsOperator
	}
	return 1
}

// configError is a config file or environment that does not load.
type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

// run is runIO without standard input (tests).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	return runIO(ctx, args, nil, stdout, stderr, getenv)
}

func runIO(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{"no command given"}
	}
	switch args[0] {
	case "enroll":
		return cmdEnroll(ctx, args[1:], stdin, stdout, stderr, getenv)
	case "renew":
		return cmdRenew(ctx, args[1:], stdout, stderr, getenv)
	case "run":
		return cmdRun(ctx, args[1:], stderr, getenv)
	case "status":
		return cmdStatus(ctx, args[1:], stdout, stderr, getenv)
	case "send":
		return cmdSend(ctx, args[1:], stdout, stderr, getenv)
	case "config":
		return cmdConfig(args[1:], stdout, stderr, getenv)
	case "install", "uninstall", "start", "stop", "restart":
		return cmdService(args[0], args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "edgeagent", version.String())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usageError{fmt.Sprintf("unknown command %q", args[0])}
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("edgeagent "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

const defaultStateDir = "/var/lib/edgeagent"

// enrollFlags maps each flag of enroll onto the config key it sets (or the
// secret it gives), so the identity source's errors can name the flag.
func enrollFlags() [][2]string {
	return [][2]string{
		{"enroll.password_file", "--password-file"}, {"enroll.token_file", "--token-file"}, {"enroll.ca_bundle", "--ca-bundle"},
		{"enroll.username", "--username"}, {"enroll.password", "--password"}, {"enroll.ca_pin", "--ca-pin"},
		{"enroll.server", "--server"}, {"enroll.label", "--label"}, {"enroll.token", "--token"},
		{"key_algorithm", "--key-alg"}, {"device_id", "--device-id"}, {"state_dir", "--state-dir"},
	}
}

// flagError turns the identity source's error about a config key into a
// usage error about the flag that set it.
func flagError(err error) error {
	var fe *config.FieldError
	if !errors.As(err, &fe) {
		return err
	}
	msg := fe.Key + ": " + fe.Msg
	for _, kf := range enrollFlags() {
		msg = strings.ReplaceAll(msg, kf[0], kf[1])
	}
	return usageError{msg}
}

func cmdEnroll(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("enroll", stderr)
	tokenStr := fs.String("token", "", "enrollment token from 'edgeca token create'; - reads it from standard input (prefer --token-file or env EDGEAGENT_TOKEN: a token on the command line shows in ps)")
	tokenFile := fs.String("token-file", "", "read the enrollment token from this file")
	stateDir := fs.String("state-dir", defaultStateDir, "where the key, certificate and CA bundle are kept")
	deviceID := fs.String("device-id", "", "device id: the certificate's CN and SAN URI (default: the earlier identity's with --force, else the host name)")
	keyAlg := fs.String("key-alg", string(keystore.DefaultAlgorithm), "key algorithm: ecdsa-p256, rsa-2048 or rsa-3072")
	server := fs.String("server", "", "EST server URL https://host[:port], instead of a token")
	label := fs.String("label", "", "EST CA label (/.well-known/est/<label>/)")
	caPin := fs.String("ca-pin", "", "sha256:HEX fingerprint of a CA certificate in the server's chain")
	caBundle := fs.String("ca-bundle", "", "PEM file of CA certificates that authenticate the server")
	username := fs.String("username", "", "HTTP Basic user name, instead of a token")
	password := fs.String("password", "", "HTTP Basic password (prefer --password-file)")
	passwordFile := fs.String("password-file", "", "read the HTTP Basic password from this file")
	force := fs.Bool("force", false, "enroll again even if this device has an identity, whole or damaged (the key is kept)")
	ksFlags := keystoreFlags(fs)
	attest := fs.String("attest", "", "tpm: enroll with TPM attestation (needs --keystore tpm); without a token or credentials a CA with attested recovery enrolls a device whose TPM it knows")
	timeout := fs.Duration("timeout", 30*time.Second, "timeout of each request to the EST server")
	cfgPath := fs.String("config", "", "start from this config file (the daemon's: state_dir, keystore, tpm, device_id, enroll.*); flags given override it")
	if err := parse(fs, args); err != nil {
		return err
	}
	// Flags are config keys: the identity source applies the same rules
	// to them as to the daemon's config. With --config they override
	// only what they name.
	cfg, fromFile, err := baseConfig(fs, *cfgPath, getenv)
	if err != nil {
		return err
	}
	set := func(name string) bool { return !fromFile || isSet(fs, name) }
	if set("device-id") {
		cfg.DeviceID = *deviceID
	}
	if set("state-dir") {
		cfg.StateDir = *stateDir
	}
	if set("key-alg") {
		cfg.KeyAlgorithm = *keyAlg
	}
	if set("label") {
		cfg.Enroll.Label = *label
	}
	if set("ca-bundle") {
		cfg.Enroll.CABundle = *caBundle
	}
	credFlags := []string{"token", "token-file", "server", "ca-pin", "username", "password", "password-file"}
	if !fromFile || slices.ContainsFunc(credFlags, func(f string) bool { return isSet(fs, f) }) {
		// Credentials on the command line replace the config's.
		cfg.Enroll.TokenFile, cfg.Enroll.Server, cfg.Enroll.CAPin = *tokenFile, *server, *caPin
		cfg.Enroll.Username, cfg.Enroll.PasswordFile = *username, *passwordFile
	}
	ksFlags.apply(fs, &cfg, fromFile)
	if set("attest") {
		cfg.Enroll.Attest = *attest
	}
	switch cfg.Enroll.Attest {
	case "":
	case "tpm":
		if cfg.Keystore != "tpm" {
			return usageError{"--attest tpm needs --keystore tpm"}
		}
	default:
		return usageError{fmt.Sprintf("--attest %q: use tpm", cfg.Enroll.Attest)}
	}
	sec := agent.Secrets{Token: *tokenStr, TokenFrom: "--token", Password: *password}
	if *tokenStr == "-" {
		if stdin == nil {
			return usageError{"--token -: no standard input"}
		}
		b, err := io.ReadAll(io.LimitReader(stdin, token.MaxLen+1))
		if err != nil {
			return fmt.Errorf("--token -: read standard input: %w", err)
		}
		sec.Token, sec.TokenFrom = string(b), "standard input"
		if strings.TrimSpace(sec.Token) == "" {
			return usageError{"--token -: standard input is empty"}
		}
	}
	if sec.Token == "" && cfg.Enroll.TokenFile == "" && cfg.Enroll.Server == "" {
		sec.Token, sec.TokenFrom = getenv("EDGEAGENT_TOKEN"), "EDGEAGENT_TOKEN"
	}
	opts, err := agent.PlanEnrollment(cfg, sec)
	if err != nil {
		return flagError(err)
	}
	opts.Force, opts.Timeout = *force, *timeout
	opts.CorrectClock, opts.BuildTime, opts.Logger = true, version.Built(), slog.New(slog.NewTextHandler(stderr, nil))
	lock, err := agent.LockStateDir(cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	ks, err := agent.OpenKeystore(cfg)
	if err != nil {
		return err
	}
	defer ks.Close()
	opts.Keystore = ks
	id, err := agent.Enroll(ctx, opts)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "enrolled", id.Summary())
	return nil
}

func cmdRenew(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("renew", stderr)
	stateDir := fs.String("state-dir", defaultStateDir, "where the key, certificate and CA bundle are kept")
	rekey := fs.Bool("rekey", false, "make a new key for the new certificate")
	ksFlags := keystoreFlags(fs)
	timeout := fs.Duration("timeout", 30*time.Second, "timeout of each request to the EST server")
	username := fs.String("username", "", "HTTP Basic user name for a server that wants it on reenroll too (sent only after its 401; default enroll.username)")
	passwordFile := fs.String("password-file", "", "read that HTTP Basic password from this file (default enroll.password_file)")
	cfgPath, socket := socketFor(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if (*username == "") != (*passwordFile == "") {
		return usageError{"give --username and --password-file together"}
	}
	cfg, fromFile, err := baseConfig(fs, *cfgPath, getenv)
	if err != nil {
		return err
	}
	if !fromFile || isSet(fs, "state-dir") {
		cfg.StateDir = *stateDir
	}
	ksFlags.apply(fs, &cfg, fromFile)
	if *username != "" {
		cfg.Enroll.Username, cfg.Enroll.PasswordFile = *username, *passwordFile
	}
	var password string
	if cfg.Enroll.Username != "" && cfg.Enroll.PasswordFile != "" {
		b, err := agent.ReadSecretFile(cfg.Enroll.PasswordFile)
		if err != nil {
			src := "enroll.password_file"
			if *passwordFile != "" {
				src = "--password-file"
			}
			return usageError{src + ": " + err.Error()}
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	lock, err := agent.LockStateDir(cfg.StateDir)
	if errors.Is(err, agent.ErrStateLocked) {
		// The daemon is the state dir's writer: it renews, and its
		// uplinks reconnect with the new certificate.
		if *rekey {
			return fmt.Errorf("renew --rekey: %w; the running agent renews with renew.rekey from its config: set it there and SIGHUP the agent, or stop it first", err)
		}
		sock, serr := resolveSocket(*cfgPath, isSet(fs, "config"), *socket, getenv)
		if serr != nil {
			return fmt.Errorf("%w; and its API socket is unknown: %v", err, serr)
		}
		return renewThroughDaemon(ctx, sock, *timeout, stdout, stderr)
	}
	if err != nil {
		return err
	}
	defer lock.Unlock()
	ks, err := agent.OpenKeystore(cfg)
	if err != nil {
		return err
	}
	defer ks.Close()
	id, err := agent.Renew(ctx, agent.RenewOptions{StateDir: cfg.StateDir, Keystore: ks, Rekey: *rekey, Timeout: *timeout,
		CorrectClock: true, BuildTime: version.Built(), Logger: slog.New(slog.NewTextHandler(stderr, nil)),
		Username: cfg.Enroll.Username, Password: password})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "renewed", id.Summary())
	return nil
}

// renewThroughDaemon asks the running agent to renew now (POST /v1/renew;
// concurrent asks share one renewal) and prints the result.
func renewThroughDaemon(ctx context.Context, sock string, timeout time.Duration, stdout, stderr io.Writer) error {
	fmt.Fprintln(stderr, "edgeagent: the agent is running; asking it to renew through", sock)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/renew", nil)
	// The daemon may retry a deferred enrollment (202 Retry-After) inside
	// one renewal: allow a few request timeouts.
	resp, err := localapi.Client(sock, 4*timeout).Do(req)
	if err != nil {
		return apiError("renew", err, sock)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("renew (by the running agent): %s", e.Error)
		}
		return fmt.Errorf("renew (by the running agent): %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var st agent.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("renew: the agent's answer: %w", err)
	}
	fmt.Fprintf(stdout, "renewed device %s serial %s not-after %s\n", st.DeviceID, st.Serial, st.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// ksFlagSet selects the key backend for enroll and renew.
type ksFlagSet struct {
	backend, device, address *string
}

func keystoreFlags(fs *flag.FlagSet) ksFlagSet {
	return ksFlagSet{
		backend: fs.String("keystore", "file", "where the device key lives: file or tpm"),
		device:  fs.String("tpm-device", "/dev/tpmrm0", "TPM device (with --keystore tpm)"),
		address: fs.String("tpm-address", "", "host:port of a TPM simulator such as swtpm, instead of --tpm-device"),
	}
}

// apply sets the keystore keys of cfg from the flags: all of them, or
// with a config file only those given.
func (f ksFlagSet) apply(fs *flag.FlagSet, cfg *config.Config, fromFile bool) {
	if !fromFile || isSet(fs, "keystore") {
		cfg.Keystore = *f.backend
	}
	if !fromFile || isSet(fs, "tpm-device") {
		cfg.TPM.Device = *f.device
	}
	if !fromFile || isSet(fs, "tpm-address") {
		cfg.TPM.Address = *f.address
	}
}

// baseConfig is what enroll and renew start from: the file given with
// --config (as run reads it, environment included), or the defaults.
func baseConfig(fs *flag.FlagSet, path string, getenv func(string) string) (config.Config, bool, error) {
	if !isSet(fs, "config") || path == "" {
		return config.Default(), false, nil
	}
	cfg, err := loadConfig(path, true, getenv)
	return cfg, true, err
}
