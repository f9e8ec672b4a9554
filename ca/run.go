package ca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/edgeagent/edgeagent/internal/atomicfile"
)

// ServeConfig is what `edgeca serve` runs.
type ServeConfig struct {
	Dir       string
	Listen    string        // host:port; port 0 picks a free one
	Hostnames []string      // TLS server certificate names; DefaultHostnames() plus the listen host when empty
	CertTTL   time.Duration // device certificate lifetime
	// RenewGrace, AuditMaxRows, AuditRefusalsPerMinute: see Options.
	RenewGrace             time.Duration
	AuditMaxRows           int
	AuditRefusalsPerMinute int
	MaxConnsPerPeer        int
	MaxConns               int
	AddrFile               string // if set, the bound address is written here after listening
	Logger                 *slog.Logger
	// PostQuantumTLS: see Options.PostQuantumTLS.
	PostQuantumTLS bool
	// CRLBaseURL: see Options.CRLBaseURL; when empty, http:// the first
	// host name that is not a loopback one and the bound port.
	CRLBaseURL string
	// Attestation: see Options.Attestation.
	Attestation *AttestOptions
	// DB: see Options.DB.
	DB string
	// HealthListen is the plain-HTTP address of /healthz and /readyz
	// (DefaultHealthListen when empty, "off" for none); HealthAddrFile,
	// if set, gets its bound address.
	HealthListen, HealthAddrFile string
	// Shed: see Options.Shed.
	Shed ShedOptions
	// Fleet: see Options.Fleet.
	Fleet FleetOptions
}

// defaultCRLBase picks the CRL distribution point host: relying parties
// on other machines cannot use localhost.
func defaultCRLBase(hosts []string, port string) string {
	host := ""
	for _, h := range hosts {
		if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
			host = h
			break
		}
	}
	if host == "" && len(hosts) > 0 {
		host = hosts[0]
	}
	return "http://" + net.JoinHostPort(host, port)
}

// Run opens the CA, listens, records the bound address (in AddrFile and in
// the CA directory, for `edgeca token create`) and serves EST until ctx is
// done.
func Run(ctx context.Context, cfg ServeConfig) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	hosts := cfg.Hostnames
	if len(hosts) == 0 {
		hosts = DefaultHostnames()
		if h, _, err := net.SplitHostPort(cfg.Listen); err == nil && h != "" {
			if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
				hosts = appendMissing(hosts, h)
			}
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("serve: listen on %s: %w", cfg.Listen, err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	crlBase := cfg.CRLBaseURL
	if crlBase == "" {
		_, port, _ := net.SplitHostPort(addr)
		crlBase = defaultCRLBase(hosts, port)
	}
	if err := atomicfile.Write(filepath.Join(cfg.Dir, CRLBaseFile), []byte(crlBase+"\n"), 0o644); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	c, err := Open(ctx, cfg.Dir, Options{CRLBaseURL: crlBase, CertTTL: cfg.CertTTL, RenewGrace: cfg.RenewGrace, AuditMaxRows: cfg.AuditMaxRows, AuditRefusalsPerMinute: cfg.AuditRefusalsPerMinute,
		MaxConnsPerPeer: cfg.MaxConnsPerPeer, MaxConns: cfg.MaxConns, Hostnames: hosts, Logger: log, PostQuantumTLS: cfg.PostQuantumTLS,
		Attestation: cfg.Attestation, DB: cfg.DB, Shed: cfg.Shed, Fleet: cfg.Fleet})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := atomicfile.Write(filepath.Join(cfg.Dir, ServeAddrFile), []byte(addr+"\n"), 0o644); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if cfg.AddrFile != "" {
		if err := atomicfile.Write(cfg.AddrFile, []byte(addr+"\n"), 0o644); err != nil {
			return fmt.Errorf("serve: --addr-file: %w", err)
		}
	}
	defaultHealth := cfg.HealthListen == "" || cfg.HealthListen == DefaultHealthListen
	if cfg.HealthListen == "" {
		cfg.HealthListen = DefaultHealthListen
	}
	var hln net.Listener
	if cfg.HealthListen != "off" {
		hln, err = lc.Listen(ctx, "tcp", cfg.HealthListen)
		if err != nil && defaultHealth && errors.Is(err, syscall.EADDRINUSE) {
			// A second edgeca on one host (a test, a staging copy) keeps
			// serving EST; an address given on purpose must work.
			log.Warn("health endpoints off: the default health address is taken (give --health-listen)", "addr", cfg.HealthListen, "err", err)
		} else if err != nil {
			return fmt.Errorf("serve: --health-listen %s: %w", cfg.HealthListen, err)
		}
	}
	if hln != nil {
		defer hln.Close()
		if cfg.HealthAddrFile != "" {
			if err := atomicfile.Write(cfg.HealthAddrFile, []byte(hln.Addr().String()+"\n"), 0o644); err != nil {
				return fmt.Errorf("serve: --health-addr-file: %w", err)
			}
		}
		hctx, stopHealth := context.WithCancel(ctx)
		healthDone := make(chan struct{})
		go func() {
			defer close(healthDone)
			if err := c.ServeHealth(hctx, hln); err != nil {
				log.Error("health server", "err", err)
			}
		}()
		defer func() { stopHealth(); <-healthDone }()
		log.Info("edgeca health endpoints", "addr", hln.Addr().String(), "paths", "/healthz /readyz "+MetricsPath+" "+FleetPath+" "+CRLPathPrefix)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, RootKeyFile)); err == nil {
		log.Warn("the root CA key is on this server; serve never reads it: move it offline (see README, Root key offline)", "file", filepath.Join(cfg.Dir, RootKeyFile))
	}
	log.Info("edgeca serving EST", "addr", addr, "hostnames", hosts, "cert_ttl", c.CertTTL().String(), "renew_grace", cfg.RenewGrace.String(),
		"root_pin", c.Pin().String(), "dir", cfg.Dir, "store", c.StoreKind(), "tls_post_quantum", cfg.PostQuantumTLS, "crl_url", c.CRLURL())
	err = c.Serve(ctx, ln)
	if rmErr := os.Remove(filepath.Join(cfg.Dir, ServeAddrFile)); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		log.Warn("remove address file", "err", rmErr)
	}
	log.Info("edgeca stopped")
	return err
}

func appendMissing(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}
