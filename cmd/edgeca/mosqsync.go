package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/edgeagent/edgeagent/revocation/mosquittosync"
)

// cmdMosquittoSync runs the mosquitto companion (package mosquittosync).
func cmdMosquittoSync(ctx context.Context, args []string, stderr io.Writer) error {
	fs, _ := newFlags("mosquitto-sync")
	caURL := fs.String("ca-url", "", "edgeca's URL, https://HOST:PORT")
	certFile := fs.String("cert", "", "enforcer certificate (edgeca enforcer create)")
	keyFile := fs.String("key", "", "enforcer key")
	caBundle := fs.String("ca-bundle", "", "PEM of edgeca's root (authenticates edgeca)")
	crlFile := fs.String("crl-file", "", "mosquitto's crlfile, rewritten atomically")
	pidFile := fs.String("pid-file", "", "mosquitto's pid_file (SIGHUP makes it reload the CRL)")
	pid := fs.Int("pid", 0, "mosquitto's pid, instead of --pid-file")
	broker := fs.String("broker", "", "mosquitto's TLS listener HOST:PORT, to disconnect revoked devices' open sessions (empty: CRL only)")
	brokerCA := fs.String("broker-ca", "", "PEM that authenticates mosquitto's server certificate (default --ca-bundle)")
	var extra stringList
	fs.Var(&extra, "extra-crl", "PEM CRL file of another CA in mosquitto's cafile, appended to edgeca's (repeatable): OpenSSL refuses clients whose issuer has no CRL")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *caURL == "" || *certFile == "" || *keyFile == "" || *caBundle == "" || *crlFile == "" || (*pidFile == "") == (*pid == 0) {
		return fmt.Errorf("%w: mosquitto-sync needs --ca-url, --cert, --key, --ca-bundle, --crl-file and one of --pid-file, --pid", errUsage)
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return fmt.Errorf("mosquitto-sync: enforcer certificate: %w", err)
	}
	pool := func(file string) (*x509.CertPool, error) {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		p := x509.NewCertPool()
		if !p.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("%s: no PEM certificate", file)
		}
		return p, nil
	}
	roots, err := pool(*caBundle)
	if err != nil {
		return fmt.Errorf("mosquitto-sync: --ca-bundle: %w", err)
	}
	bRoots := roots
	if *brokerCA != "" {
		if bRoots, err = pool(*brokerCA); err != nil {
			return fmt.Errorf("mosquitto-sync: --broker-ca: %w", err)
		}
	}
	getPid := func() (int, error) {
		if *pid != 0 {
			return *pid, nil
		}
		b, err := os.ReadFile(*pidFile)
		if err != nil {
			return 0, err
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%s holds %q, not a pid", *pidFile, strings.TrimSpace(string(b)))
		}
		return n, nil
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	s, err := mosquittosync.New(mosquittosync.Options{
		CAURL:     *caURL,
		TLS:       &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		CRLFile:   *crlFile,
		ExtraCRLs: extra,
		Pid:       getPid,
		Broker:    *broker,
		BrokerTLS: &tls.Config{RootCAs: bRoots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		Logger:    log,
	})
	if err != nil {
		return err
	}
	log.Info("mosquitto-sync following edgeca's revocations", "ca", *caURL, "crl_file", *crlFile, "broker", *broker)
	if err := s.Run(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }
