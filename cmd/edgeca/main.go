// Command edgeca is the edgeagent CA server: it creates or imports a CA,
// serves EST (RFC 7030) to devices, and manages enrollment tokens, devices
// and the audit log. See `edgeca help`.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/ca/attest"
	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/internal/version"
)

const usage = `usage: edgeca COMMAND [flags]

commands:
  init      --dir DIR [--url https://HOST:PORT] [--name NAME] [--root-key-out FILE]
            [--import-root-cert F [--import-root-key F]
             [--import-intermediate-cert F --import-intermediate-key F]]
  serve     --dir DIR [--listen 127.0.0.1:8443] [--hostname name,ip,...]
            [--cert-ttl 24h] [--renew-grace 72h] [--audit-max-rows 1000000]
            [--audit-refusals-per-minute 10] [--max-conns-per-peer 64] [--max-conns 4096]
            [--addr-file F] [--log-format text|json] [--log-level info]
            [--health-listen 127.0.0.1:8442] [--health-addr-file F]
            [--shed-max-wait 500ms] [--shed-retry-spread 30s] [--shed-off]
  migrate   --from DIR --db postgres://...   copy a SQLite CA's state into PostgreSQL
            [--webhook-url URL]... [--webhook-secret-file F]
            [--authorize-url URL [--authorize-default deny|allow] [--authorize-timeout 5s]]
  token create --dir DIR [--url URL] [--device ID | --pattern 'sensor-*'] [--uses 1] [--ttl 24h]
               [--count N] [--label key=value]... [--json | --csv]
  token list   --dir DIR [--json]
  token revoke --dir DIR ID
  device list   --dir DIR [--state active|expiring|renewal-failing|expired|revoked]
                [--expiring 72h] [--token ID] [--sort id|expiry|last-seen] [--limit N] [--json|--csv]
  device show   --dir DIR [--json] ID
  device revoke --dir DIR ID | --serial HEX | --label key=value...
  device label  --dir DIR [--json] ID [key=value | key-]...
  device renew-now --dir DIR ID... | --label key=value...
  device unrevoke --dir DIR ID
  device delete --dir DIR ID
  enforcer create --dir DIR [--out .] NAME
  crl       --dir DIR [--out FILE]
  mosquitto-sync --ca-url URL --cert F --key F --ca-bundle F --crl-file F
            (--pid-file F | --pid N) --broker HOST:PORT [--broker-ca F]
  audit     --dir DIR [--json] [--limit 100]
  audit prune --dir DIR [--older-than 2160h] [--keep N]
  backup    --dir DIR --out BACKUPDIR [--json]       online copy of the store and the CA files
  restore   --from BACKUPDIR --dir NEWDIR [--force]
  rotate intermediate --dir DIR [--root-key F]      new issuing CA under the root
  rotate root --dir DIR [--root-key F --root-key-out F]  new root; its intermediate cross-certified by the old root
  rotate retire --dir DIR [--renew-grace 72h] [--force]  end the overlap of a rotation
  cacerts   --dir DIR [--out FILE]                   the published CA bundle (a broker's cafile)
  version

--dir defaults to $EDGECA_DIR, else /var/lib/edgeca. Every command takes
--db URL (default $EDGECA_DB): a PostgreSQL database shared by several
serve replicas instead of edgeca.db in --dir.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errUsage marks command line mistakes (exit status 2).
var errUsage = errors.New("usage")

// helpError is -h on a subcommand: its own flags are printed, not only the
// general usage (which names no flag of serve's).
type helpError struct{ fs *flag.FlagSet }

func (e helpError) Error() string { return "help for " + e.fs.Name() }
func (e helpError) Unwrap() error { return flag.ErrHelp }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		var h helpError
		if errors.As(err, &h) {
			fmt.Fprintf(stdout, "usage: edgeca %s [flags]\n\nflags:\n", h.fs.Name())
			h.fs.SetOutput(stdout)
			h.fs.PrintDefaults()
			return 0
		}
		fmt.Fprint(stdout, usage)
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "edgeca: %v\n\n%s", err, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "edgeca: %v\n", err)
		return 1
	}
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command given", errUsage)
	}
	cmd, rest := args[0], args[1:]
	sub := func() (string, []string, error) {
		if len(rest) == 0 {
			return "", nil, fmt.Errorf("%w: %s needs a subcommand", errUsage, cmd)
		}
		return rest[0], rest[1:], nil
	}
	switch cmd {
	case "init":
		return cmdInit(ctx, rest, stderr)
	case "serve":
		return cmdServe(ctx, rest, stderr)
	case "token":
		s, r, err := sub()
		if err != nil {
			return err
		}
		switch s {
		case "create":
			return cmdTokensCreate(ctx, r, stdout, stderr) // tokens.go
		case "list":
			return cmdTokenList(ctx, r, stdout)
		case "revoke":
			return cmdTokenRevoke(ctx, r, stderr)
		}
		return fmt.Errorf("%w: unknown command token %q", errUsage, s)
	case "device":
		s, r, err := sub()
		if err != nil {
			return err
		}
		switch s {
		case "list":
			return cmdDeviceList(ctx, r, stdout)
		case "show":
			return cmdDeviceShow(ctx, r, stdout)
		case "revoke":
			return cmdDeviceRevokeAny(ctx, r, stderr) // labels.go
		case "label":
			return cmdDeviceLabel(ctx, r, stdout)
		case "renew-now":
			return cmdDeviceRenewNow(ctx, r, stderr)
		case "unrevoke":
			return cmdDeviceUnrevoke(ctx, r, stderr)
		case "delete":
			return cmdDeviceDelete(ctx, r, stderr)
		}
		return fmt.Errorf("%w: unknown command device %q", errUsage, s)
	case "enforcer":
		s, r, err := sub()
		if err != nil {
			return err
		}
		if s == "create" {
			return cmdEnforcerCreate(ctx, r, stderr)
		}
		return fmt.Errorf("%w: unknown command enforcer %q", errUsage, s)
	case "crl":
		return cmdCRL(ctx, rest, stdout)
	case "mosquitto-sync":
		return cmdMosquittoSync(ctx, rest, stderr)
	case "audit":
		if len(rest) > 0 && rest[0] == "prune" {
			return cmdAuditPrune(ctx, rest[1:], stderr)
		}
		return cmdAudit(ctx, rest, stdout)
	case "migrate":
		return cmdMigrate(ctx, rest, stderr)
	case "backup", "restore", "rotate", "cacerts":
		return dispatchCAKeys(ctx, cmd, rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "edgeca", version.String())
		return nil
	case "help", "-h", "--help":
		return flag.ErrHelp
	}
	return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
}

// newFlags makes a flag set with the --dir flag every command has.
func newFlags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	def := os.Getenv("EDGECA_DIR")
	if def == "" {
		def = "/var/lib/edgeca"
	}
	dir := fs.String("dir", def, "CA directory")
	fs.String("db", os.Getenv("EDGECA_DB"), "the CA's database: a PostgreSQL URL (postgres://user@host/db?sslmode=verify-full) that several edgeca replicas share, or a SQLite file; default $EDGECA_DB, else edgeca.db in --dir")
	return fs, dir
}

// dbOf is the --db flag of fs.
func dbOf(fs *flag.FlagSet) string { return fs.Lookup("db").Value.String() }

// parse parses flags anywhere on the command line (before or after the
// positional arguments) and checks the number of positional arguments.
func parse(fs *flag.FlagSet, args []string, positional ...string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, helpError{fs}
			}
			return nil, fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) != len(positional) {
		want := "no arguments"
		if len(positional) > 0 {
			want = strings.Join(positional, " ")
		}
		return nil, fmt.Errorf("%w: %s takes %s, got %q", errUsage, fs.Name(), want, pos)
	}
	return pos, nil
}

// open opens the CA for a management command. The issuing key may be
// absent (a host with a copy of the certificates and --db): what must sign
// then says so (ca.ErrNoSigningKey); serve opens the CA itself and needs it.
func open(ctx context.Context, dir string, fs *flag.FlagSet) (*ca.CA, error) {
	return ca.Open(ctx, dir, ca.Options{Logger: slog.New(slog.DiscardHandler), DB: dbOf(fs), KeyOptional: true})
}

func cmdInit(ctx context.Context, args []string, stderr io.Writer) error {
	fs, dir := newFlags("init")
	var o ca.InitOptions
	fs.StringVar(&o.URL, "url", "", "EST server URL put in tokens (https://HOST:PORT)")
	fs.StringVar(&o.Name, "name", "edgeca", "CA common name prefix")
	fs.StringVar(&o.ImportRootCert, "import-root-cert", "", "import this root certificate (PEM)")
	fs.StringVar(&o.ImportRootKey, "import-root-key", "", "import this root key (PEM, mode 0600)")
	fs.StringVar(&o.ImportIntermediateCert, "import-intermediate-cert", "", "import this issuing certificate (PEM)")
	fs.StringVar(&o.ImportIntermediateKey, "import-intermediate-key", "", "import this issuing key (PEM, mode 0600)")
	fs.StringVar(&o.RootKeyOut, "root-key-out", "", "write the root key to this file (e.g. on removable media) instead of the CA directory: serve never reads it")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	o.DB = dbOf(fs)
	if err := ca.Init(ctx, *dir, o); err != nil {
		return err
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(stderr, "CA initialized in %s\nroot:         %s\nintermediate: %s\nroot pin:     %s\n",
		*dir, c.Root().Subject, c.Intermediate().Subject, c.Pin())
	switch {
	case o.RootKeyOut != "":
		fmt.Fprintf(stderr, "root key:     %s (not in the CA directory: keep it offline)\n", o.RootKeyOut)
	case o.ImportRootCert != "" && o.ImportRootKey == "":
		fmt.Fprintf(stderr, "root key:     not imported (stays offline)\n")
	default:
		fmt.Fprintf(stderr, "root key:     %s (serve never reads it: move it off the server)\n", filepath.Join(*dir, ca.RootKeyFile))
	}
	return nil
}

func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs, dir := newFlags("serve")
	cfg := ca.ServeConfig{}
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:8443", "address to listen on (port 0: any free port)")
	hostnames := fs.String("hostname", "", "comma-separated DNS names and IPs of the TLS server certificate (default localhost,127.0.0.1,::1,$(hostname) and the listen host)")
	fs.DurationVar(&cfg.CertTTL, "cert-ttl", ca.DefaultCertTTL, "lifetime of device certificates (1m to 720h)")
	fs.DurationVar(&cfg.RenewGrace, "renew-grace", ca.DefaultRenewGrace, "renew a device certificate up to this long after it expired (0: never; at most 720h): a device whose certificate ran out while the CA was down recovers without a new token")
	fs.IntVar(&cfg.AuditMaxRows, "audit-max-rows", ca.DefaultAuditMaxRows, "keep at most this many audit records, deleting the oldest every minute (-1: no maximum)")
	fs.IntVar(&cfg.AuditRefusalsPerMinute, "audit-refusals-per-minute", ca.DefaultRefusalsPerMinute, "refusals of one peer a minute audited and logged one by one; the rest go into one summary record (-1: all)")
	fs.IntVar(&cfg.MaxConnsPerPeer, "max-conns-per-peer", ca.DefaultMaxConnsPerPeer, "open connections allowed from one IP address")
	fs.IntVar(&cfg.MaxConns, "max-conns", ca.DefaultMaxConns, "open connections allowed in total")
	fs.StringVar(&cfg.AddrFile, "addr-file", "", "write the bound address (host:port) to this file once listening")
	fs.StringVar(&cfg.CRLBaseURL, "crl-url", "", "http://HOST:PORT relying parties fetch the CRL from (the CRL distribution point in every certificate); default http:// the first --hostname that is not loopback and the listen port")
	fs.BoolVar(&cfg.PostQuantumTLS, "tls-post-quantum", false, "use a hybrid post-quantum TLS key exchange (X25519MLKEM768) with clients that offer one; off by default because EST traffic holds no secret that outlives its token")
	attestRoots := fs.String("attest-roots", "", "offer TPM-attested enrollment: PEM file of TPM manufacturer CAs that EK certificates must chain to")
	attestAllow := fs.String("attest-allowlist", "", "offer TPM-attested enrollment: file of EK public key SHA-256 hashes (hex, one a line) accepted without an EK certificate")
	attestRecovery := fs.Bool("attest-recovery", false, "let a device recover without a token by attestation from the TPM it enrolled with (e.g. after its certificate expired)")
	requireTPM := fs.Bool("require-tpm", false, "every token enrollment must be TPM-attested (the CA-wide default of token create --require-tpm)")
	fs.StringVar(&cfg.HealthListen, "health-listen", ca.DefaultHealthListen, "plain-HTTP address of /healthz (alive) and /readyz (can issue) for a load balancer; off: none")
	fs.StringVar(&cfg.HealthAddrFile, "health-addr-file", "", "write the bound health address to this file once listening")
	fs.BoolVar(&cfg.Shed.Off, "shed-off", false, "never shed load: every enrollment waits its turn, however long")
	fs.DurationVar(&cfg.Shed.MaxWait, "shed-max-wait", ca.DefaultShedMaxWait, "an enrollment that waits longer than this for a worker is refused with 503 and a jittered Retry-After")
	fs.DurationVar(&cfg.Shed.RetrySpread, "shed-retry-spread", ca.DefaultShedRetrySpread, "spread of the Retry-After of shed enrollments")
	fleet := addFleetFlags(fs) // webhooks.go
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *attestRoots != "" || *attestAllow != "" {
		o := &ca.AttestOptions{Recovery: *attestRecovery, RequireTPM: *requireTPM}
		if *attestRoots != "" {
			var err error
			if o.Roots, o.Intermediates, _, err = attest.LoadRoots(*attestRoots); err != nil {
				return fmt.Errorf("%w: --attest-roots: %v", errUsage, err)
			}
		}
		if *attestAllow != "" {
			var err error
			if o.Allowlist, err = attest.LoadAllowlist(*attestAllow); err != nil {
				return fmt.Errorf("%w: --attest-allowlist: %v", errUsage, err)
			}
		}
		cfg.Attestation = o
	} else if *attestRecovery || *requireTPM {
		return fmt.Errorf("%w: --attest-recovery and --require-tpm need --attest-roots or --attest-allowlist (which TPMs to trust)", errUsage)
	}
	var err error
	if cfg.Fleet, err = fleet.options(); err != nil {
		return err
	}
	if cfg.CertTTL < ca.MinCertTTL {
		return fmt.Errorf("%w: --cert-ttl %s is below the minimum of %s", errUsage, cfg.CertTTL, ca.MinCertTTL)
	}
	if cfg.CertTTL > ca.MaxCertTTL {
		return fmt.Errorf("%w: --cert-ttl %s is above the maximum of %s (720h): device certificates are short-lived", errUsage, cfg.CertTTL, ca.MaxCertTTL)
	}
	if cfg.RenewGrace < 0 || cfg.RenewGrace > ca.MaxRenewGrace {
		return fmt.Errorf("%w: --renew-grace %s: must be between 0 and %s", errUsage, cfg.RenewGrace, ca.MaxRenewGrace)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", errUsage, *logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch *logFormat {
	case "text":
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, hopts))
	case "json":
		cfg.Logger = slog.New(slog.NewJSONHandler(stderr, hopts))
	default:
		return fmt.Errorf("%w: --log-format %q: want text or json", errUsage, *logFormat)
	}
	for _, h := range strings.Split(*hostnames, ",") {
		if h = strings.TrimSpace(h); h != "" {
			cfg.Hostnames = append(cfg.Hostnames, h)
		}
	}
	cfg.Dir = *dir
	cfg.DB = dbOf(fs)
	return ca.Run(ctx, cfg)
}

func cmdTokenCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, dir := newFlags("token create")
	var o ca.TokenOptions
	fs.StringVar(&o.URL, "url", "", "EST server URL (default: the init --url, else the running server's address)")
	fs.StringVar(&o.Device, "device", "", "bind the token to this device id")
	fs.StringVar(&o.Pattern, "pattern", "", "allow only device ids matching this pattern, e.g. 'sensor-*'")
	fs.IntVar(&o.Uses, "uses", 1, "number of enrollments the token allows")
	fs.DurationVar(&o.TTL, "ttl", 24*time.Hour, "how long the token is valid")
	fs.BoolVar(&o.RequireTPM, "require-tpm", false, "the token enrolls only with TPM attestation (agent enroll.attest: tpm; edgeca serve --attest-roots or --attest-allowlist)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if o.Uses < 1 {
		return fmt.Errorf("%w: --uses %d: must be at least 1", errUsage, o.Uses)
	}
	if o.TTL <= 0 {
		return fmt.Errorf("%w: --ttl %s: must be positive", errUsage, o.TTL)
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	tok, rec, err := c.CreateToken(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok.String())
	fmt.Fprintf(stderr, "token %s for %s, %d use(s), expires %s\nserver %s, CA pin %s\n",
		rec.ID, binding(rec), rec.MaxUses, rec.ExpiresAt.Local().Format(time.RFC3339), tok.URL, tok.Pin)
	if o.RequireTPM {
		fmt.Fprintln(stderr, "requires TPM attestation")
	}
	return nil
}

func binding(t store.Token) string {
	switch {
	case t.Device != "":
		return "device " + t.Device
	case t.Pattern != "":
		return "devices matching " + t.Pattern
	default:
		return "any device"
	}
}

// tokenJSON is the --json form of a token; it never holds the secret.
type tokenJSON struct {
	ID        string    `json:"id"`
	State     string    `json:"state"`
	Device    string    `json:"device,omitempty"`
	Pattern   string    `json:"pattern,omitempty"`
	Uses      int       `json:"uses"`
	MaxUses   int       `json:"max_uses"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	LastUsed  time.Time `json:"last_used_at,omitzero"`
	// RequireTPM: created with --require-tpm.
	RequireTPM bool `json:"require_tpm,omitempty"`
}

func cmdTokenList(ctx context.Context, args []string, stdout io.Writer) error {
	fs, dir := newFlags("token list")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	toks, err := c.Tokens(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	tpmOnly := make([]bool, len(toks))
	for i, t := range toks {
		if tpmOnly[i], err = c.TokenRequiresTPM(ctx, t.ID); err != nil {
			return err
		}
	}
	if *asJSON {
		out := make([]tokenJSON, 0, len(toks))
		for i, t := range toks {
			out = append(out, tokenJSON{ID: t.ID, State: ca.TokenState(t, now), Device: t.Device, Pattern: t.Pattern,
				Uses: t.Uses, MaxUses: t.MaxUses, CreatedAt: t.CreatedAt, ExpiresAt: t.ExpiresAt, RevokedAt: t.RevokedAt, LastUsed: t.LastUsedAt,
				RequireTPM: tpmOnly[i]})
		}
		return writeJSON(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tFOR\tUSES\tEXPIRES")
	for i, t := range toks {
		b := binding(t)
		if tpmOnly[i] {
			b += ", TPM-attested only"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\n", t.ID, ca.TokenState(t, now), b, t.Uses, t.MaxUses, t.ExpiresAt.Local().Format(time.RFC3339))
	}
	return tw.Flush()
}

func cmdTokenRevoke(ctx context.Context, args []string, stderr io.Writer) error {
	fs, dir := newFlags("token revoke")
	pos, err := parse(fs, args, "ID")
	if err != nil {
		return err
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.RevokeToken(ctx, pos[0]); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "token %s revoked\n", pos[0])
	return nil
}

// device list and device show are in inventory.go.

func cmdDeviceRevoke(ctx context.Context, args []string, stderr io.Writer) error {
	fs, dir := newFlags("device revoke")
	serial := fs.String("serial", "", "revoke only the certificate with this serial (hex)")
	want := []string{"ID"}
	if hasFlag(args, "serial") {
		want = nil
	}
	pos, err := parse(fs, args, want...)
	if err != nil {
		return err
	}
	if *serial != "" {
		return cmdRevokeSerial(ctx, *dir, *serial, fs, stderr)
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	rv, err := c.Revoke(ctx, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "device %s revoked: it can no longer renew or enroll; %d certificate(s) added to the CRL\n", rv.DeviceID, len(rv.Certs))
	return nil
}

// auditJSON is the --json form of an audit record.
type auditJSON struct {
	Seq      int64     `json:"seq"`
	Time     time.Time `json:"time"`
	Op       string    `json:"op"`
	Peer     string    `json:"peer,omitempty"`
	TokenID  string    `json:"token_id,omitempty"`
	DeviceID string    `json:"device_id,omitempty"`
	Result   string    `json:"result"`
	Code     string    `json:"code,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Serial   string    `json:"serial,omitempty"`
}

func cmdAudit(ctx context.Context, args []string, stdout io.Writer) error {
	fs, dir := newFlags("audit")
	asJSON := fs.Bool("json", false, "print JSON")
	limit := fs.Int("limit", 100, "show the newest N records (0: all)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	recs, err := c.Audit(ctx, *limit)
	if err != nil {
		return err
	}
	if *asJSON {
		out := make([]auditJSON, 0, len(recs))
		for _, a := range recs {
			out = append(out, auditJSON(a))
		}
		return writeJSON(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tOP\tPEER\tTOKEN\tDEVICE\tRESULT\tCODE\tREASON")
	// Every field is escaped again on output: a record written by an
	// older edgeca may hold raw control characters.
	for _, a := range recs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Time.Local().Format(time.RFC3339), p(a.Op), p(a.Peer),
			dash(p(a.TokenID)), dash(p(a.DeviceID)), p(a.Result), dash(p(a.Code)), pr(a.Reason))
	}
	return tw.Flush()
}

func p(s string) string  { return ca.Printable(s, 128) }
func pr(s string) string { return ca.Printable(s, 512) }

func cmdAuditPrune(ctx context.Context, args []string, stderr io.Writer) error {
	fs, dir := newFlags("audit prune")
	olderThan := fs.Duration("older-than", 0, "delete records older than this (e.g. 2160h for 90 days)")
	keep := fs.Int("keep", 0, "keep only the newest N records")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *olderThan < 0 || *keep < 0 {
		return fmt.Errorf("%w: audit prune: --older-than and --keep must not be negative", errUsage)
	}
	if *olderThan == 0 && *keep == 0 {
		return fmt.Errorf("%w: audit prune: give --older-than or --keep", errUsage)
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	var before time.Time
	if *olderThan > 0 {
		before = time.Now().Add(-*olderThan)
	}
	n, err := c.PruneAudit(ctx, before, *keep)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "%d audit records deleted\n", n)
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdMigrate(ctx context.Context, args []string, stderr io.Writer) error {
	fs, _ := newFlags("migrate")
	from := fs.String("from", "", "CA directory whose SQLite database to copy (stop its server first)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *from == "" || dbOf(fs) == "" {
		return fmt.Errorf("%w: migrate needs --from DIR and --db postgres://...", errUsage)
	}
	snap, err := ca.Migrate(ctx, *from, dbOf(fs))
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "copied %d tokens, %d devices, %d audit records, %d settings, %d issued and %d revoked certificates and %d revocation events from %s\nserve with: edgeca serve --dir %s --db URL (every replica with a copy of %s, %s and %s)\n",
		len(snap.Tokens), len(snap.Devices), len(snap.Audit), len(snap.Settings), len(snap.Issued), len(snap.Revoked), len(snap.Events), *from, *from, ca.RootCertFile, ca.IntermediateCertFile, ca.IntermediateKeyFile)
	return nil
}
