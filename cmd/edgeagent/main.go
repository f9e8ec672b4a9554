// Command edgeagent is the device agent: it enrolls the device with a CA,
// renews its certificate and ships telemetry over mutual TLS. This file only
// parses the command line; the work is in package agent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/edgeagent/edgeagent/agent"
	"github.com/edgeagent/edgeagent/agent/config"
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
  renew     renew the certificate now (EST simplereenroll over mutual TLS)
  install   install the agent as a system service (--config FILE; systemd: hardened unit)
  uninstall, start, stop, restart   manage that service
  version   print the version

Run 'edgeagent <command> -h' for the command's flags.
`

// usageError makes main exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "edgeagent:", err)
	}
	os.Exit(exitCode(err))
}

// exitCode is 0 for success and -h, 2 for usage errors, 1 for failures.
func exitCode(err error) int {
	var ue usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		return 2
	}
	return 1
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{"no command given"}
	}
	switch args[0] {
	case "enroll":
		return cmdEnroll(ctx, args[1:], stdout, stderr, getenv)
	case "renew":
		return cmdRenew(ctx, args[1:], stdout, stderr)
	case "run":
		return cmdRun(ctx, args[1:], stderr, getenv)
	case "status":
		return cmdStatus(ctx, args[1:], stdout, stderr, getenv)
	case "send":
		return cmdSend(ctx, args[1:], stdout, stderr, getenv)
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

func cmdEnroll(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("enroll", stderr)
	tokenStr := fs.String("token", "", "enrollment token from 'edgeca token create' (or env EDGEAGENT_TOKEN)")
	tokenFile := fs.String("token-file", "", "read the enrollment token from this file")
	stateDir := fs.String("state-dir", defaultStateDir, "where the key, certificate and CA bundle are kept")
	host, _ := os.Hostname()
	deviceID := fs.String("device-id", host, "device id: the certificate's CN and SAN URI")
	keyAlg := fs.String("key-alg", string(keystore.DefaultAlgorithm), "key algorithm: ecdsa-p256, rsa-2048 or rsa-3072")
	server := fs.String("server", "", "EST server URL https://host[:port], instead of a token")
	label := fs.String("label", "", "EST CA label (/.well-known/est/<label>/)")
	caPin := fs.String("ca-pin", "", "sha256:HEX fingerprint of a CA certificate in the server's chain")
	caBundle := fs.String("ca-bundle", "", "PEM file of CA certificates that authenticate the server")
	username := fs.String("username", "", "HTTP Basic user name, instead of a token")
	password := fs.String("password", "", "HTTP Basic password (prefer --password-file)")
	passwordFile := fs.String("password-file", "", "read the HTTP Basic password from this file")
	force := fs.Bool("force", false, "enroll again even if this device has an identity (the key is kept)")
	ksFlags := keystoreFlags(fs)
	attest := fs.String("attest", "", "tpm: enroll with TPM attestation (needs --keystore tpm); without a token or credentials a CA with attested recovery enrolls a device whose TPM it knows")
	timeout := fs.Duration("timeout", 30*time.Second, "timeout of each request to the EST server")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch *attest {
	case "":
	case "tpm":
		if *ksFlags.backend != "tpm" {
			return usageError{"--attest tpm needs --keystore tpm"}
		}
	default:
		return usageError{fmt.Sprintf("--attest %q: use tpm", *attest)}
	}
	alg, err := keystore.ParseAlgorithm(*keyAlg)
	if err != nil {
		return usageError{"--key-alg: " + err.Error()}
	}
	opts := agent.EnrollOptions{StateDir: *stateDir, DeviceID: *deviceID, KeyAlg: alg, Force: *force, Timeout: *timeout, Label: *label,
		CorrectClock: true, BuildTime: version.Built(), Logger: slog.New(slog.NewTextHandler(stderr, nil)), Attest: *attest == "tpm"}

	tokText := *tokenStr
	if *tokenFile != "" {
		if tokText != "" {
			return usageError{"give --token or --token-file, not both"}
		}
		b, err := agent.ReadSecretFile(*tokenFile)
		if err != nil {
			return usageError{"--token-file: " + err.Error()}
		}
		tokText = string(b)
	}
	if tokText == "" && *server == "" {
		tokText = getenv("EDGEAGENT_TOKEN")
	}
	if tokText != "" {
		if *server != "" || *caPin != "" || *username != "" || *password != "" || *passwordFile != "" {
			return usageError{"a token carries the server, CA pin and credentials: do not also give --server, --ca-pin, --username or --password"}
		}
		tok, err := token.Parse(tokText)
		if err != nil {
			return usageError{"--token: " + err.Error()}
		}
		opts.Token = &tok
	} else {
		if *server == "" {
			return usageError{"give --token (or EDGEAGENT_TOKEN, --token-file), or --server with --ca-pin or --ca-bundle and --username/--password"}
		}
		if err := token.ValidateURL(*server); err != nil {
			return usageError{"--server: " + err.Error()}
		}
		opts.Server = *server
		if *caPin != "" {
			p, err := token.ParsePin(*caPin)
			if err != nil {
				return usageError{"--ca-pin: " + err.Error()}
			}
			opts.CAPin = p
		}
		if *caPin == "" && *caBundle == "" {
			return usageError{"--server needs --ca-pin or --ca-bundle to authenticate the EST server"}
		}
		opts.Username, opts.Password = *username, *password
		if *passwordFile != "" {
			if *password != "" {
				return usageError{"give --password or --password-file, not both"}
			}
			b, err := agent.ReadSecretFile(*passwordFile)
			if err != nil {
				return usageError{"--password-file: " + err.Error()}
			}
			opts.Password = strings.TrimRight(string(b), "\r\n")
		}
		if (opts.Username == "" || opts.Password == "") && !opts.Attest {
			return usageError{"--server needs --username and --password (or --password-file)"}
		}
	}
	if *caBundle != "" {
		b, err := readSmallFile(*caBundle)
		if err != nil {
			return usageError{"--ca-bundle: " + err.Error()}
		}
		certs, err := agent.ParseCertsPEM(b)
		if err != nil {
			return usageError{"--ca-bundle: " + err.Error()}
		}
		opts.CABundle = certs
		if opts.Token != nil {
			// An operator-supplied bundle replaces the token's pin.
			opts.Token.Pin = token.Pin{}
		}
	}
	ks, err := ksFlags.open(*stateDir)
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

func cmdRenew(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("renew", stderr)
	stateDir := fs.String("state-dir", defaultStateDir, "where the key, certificate and CA bundle are kept")
	rekey := fs.Bool("rekey", false, "make a new key for the new certificate")
	ksFlags := keystoreFlags(fs)
	timeout := fs.Duration("timeout", 30*time.Second, "timeout of each request to the EST server")
	username := fs.String("username", "", "HTTP Basic user name for a server that wants it on reenroll too (sent only after its 401)")
	passwordFile := fs.String("password-file", "", "read that HTTP Basic password from this file")
	if err := parse(fs, args); err != nil {
		return err
	}
	var password string
	if (*username == "") != (*passwordFile == "") {
		return usageError{"give --username and --password-file together"}
	}
	if *passwordFile != "" {
		b, err := agent.ReadSecretFile(*passwordFile)
		if err != nil {
			return usageError{"--password-file: " + err.Error()}
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	ks, err := ksFlags.open(*stateDir)
	if err != nil {
		return err
	}
	defer ks.Close()
	id, err := agent.Renew(ctx, agent.RenewOptions{StateDir: *stateDir, Keystore: ks, Rekey: *rekey, Timeout: *timeout,
		CorrectClock: true, BuildTime: version.Built(), Logger: slog.New(slog.NewTextHandler(stderr, nil)), Username: *username, Password: password})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "renewed", id.Summary())
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

func (f ksFlagSet) open(stateDir string) (keystore.Keystore, error) {
	if *f.backend != "file" && *f.backend != "tpm" {
		return nil, usageError{fmt.Sprintf("--keystore %q: use file or tpm", *f.backend)}
	}
	cfg := config.Default()
	cfg.Keystore, cfg.StateDir = *f.backend, stateDir
	cfg.TPM.Device, cfg.TPM.Address = *f.device, *f.address
	return agent.OpenKeystore(cfg)
}

// readSmallFile reads a CA bundle file, bounded.
func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	if err != nil {
		return nil, err
	}
	if len(b) > 1<<20 {
		return nil, fmt.Errorf("%s is over 1 MiB", path)
	}
	return b, nil
}
