package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/edgeagent/edgeagent/agent"
	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/internal/version"
)

const defaultConfig = "/etc/edgeagent/edgeagent.yaml"

// loadConfig reads the config file; the default path may be absent (then
// defaults and environment apply), an explicit one must exist.
func loadConfig(path string, explicit bool, getenv func(string) string) (config.Config, error) {
	if !explicit {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			path = ""
		}
	}
	cfg, err := config.Load(path, environ(getenv))
	if err != nil {
		return cfg, configError{err}
	}
	return cfg, nil
}

// environ rebuilds an environment list from getenv for the keys config
// knows, so tests can inject an environment.
func environ(getenv func(string) string) []string {
	var env []string
	for _, k := range config.Keys() {
		name := config.EnvPrefix + strings.ToUpper(strings.ReplaceAll(k, ".", "_"))
		if v := getenv(name); v != "" {
			env = append(env, name+"="+v)
		}
	}
	return env
}

func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", defaultConfig, "config file (YAML); every key can also come from EDGEAGENT_* variables")
}

// isSet reports whether the flag was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// setLevel sets lvl from log.level (validated by config.Load).
func setLevel(lvl *slog.LevelVar, cfg config.Config) {
	var l slog.Level
	_ = l.UnmarshalText([]byte(cfg.Log.Level))
	lvl.Set(l)
}

func newLoggerAt(cfg config.Config, w io.Writer, lvl slog.Leveler) *slog.Logger {
	o := &slog.HandlerOptions{Level: lvl}
	mk := func(w io.Writer) slog.Handler {
		if cfg.Log.Format == "json" {
			return slog.NewJSONHandler(w, o)
		}
		return slog.NewTextHandler(w, o)
	}
	if f, ok := w.(*os.File); ok && stderrIsJournal(f, os.Getenv("JOURNAL_STREAM")) {
		return slog.New(newJournalHandler(w, mk))
	}
	return slog.New(mk(w))
}

func cmdRun(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("run", stderr)
	cfgPath := configFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath, isSet(fs, "config"), getenv)
	if err != nil {
		return err
	}
	var level slog.LevelVar
	setLevel(&level, cfg)
	log := newLoggerAt(cfg, stderr, &level)
	log.Info("edgeagent starting", "version", version.String())
	if unknown := config.UnknownEnv(os.Environ()); len(unknown) > 0 {
		log.Warn("these EDGEAGENT_ variables name no config key and are ignored (see 'edgeagent config check')", "vars", unknown)
	}
	// SIGHUP re-reads the config file: a valid one is handed to the
	// daemon (which applies what it can live), a bad one is logged and
	// the running config stays. SIGTERM/SIGINT end ctx (main): the daemon
	// then drains and Run returns nil, so the exit status is 0.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan config.Config)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			next, err := loadConfig(*cfgPath, isSet(fs, "config"), getenv)
			if err != nil {
				log.Error("SIGHUP: config not reloaded; the running config stays", "err", err)
				continue
			}
			log.Info("SIGHUP: config re-read", "path", *cfgPath)
			select {
			case reload <- next:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer wg.Wait()
	defer cancel()
	return agent.Run(ctx, agent.Options{Config: cfg, Getenv: getenv, Logger: log, BuildTime: version.Built(), Reload: reload,
		Reloaded: func(c config.Config) { setLevel(&level, c) }})
}

// cmdConfig is `edgeagent config check`: load the config as run would,
// print the effective config, and fail on anything run would refuse or
// ignore.
func cmdConfig(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 || args[0] != "check" {
		return usageError{"usage: edgeagent config check [--config FILE]"}
	}
	fs := newFlagSet("config check", stderr)
	cfgPath := configFlag(fs)
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath, isSet(fs, "config"), getenv)
	if err != nil {
		return err
	}
	if unknown := config.UnknownEnv(os.Environ()); len(unknown) > 0 {
		return configError{fmt.Errorf("config: these EDGEAGENT_ variables name no config key: %s (keys: see %s)", strings.Join(unknown, ", "), *cfgPath)}
	}
	if _, err := stdout.Write(config.Format(cfg)); err != nil {
		return err
	}
	src := *cfgPath
	if _, err := os.Stat(src); err != nil && !isSet(fs, "config") {
		src = "defaults (no " + src + ")"
	}
	fmt.Fprintf(stderr, "edgeagent: config ok: %s and the environment\n", src)
	return nil
}

func socketFor(fs *flag.FlagSet) (*string, *string) {
	return configFlag(fs), fs.String("socket", "", "the agent's API socket (default: api.socket from the config)")
}

func resolveSocket(cfgPath string, explicit bool, socket string, getenv func(string) string) (string, error) {
	if socket != "" {
		return socket, nil
	}
	cfg, err := loadConfig(cfgPath, explicit, getenv)
	if err != nil {
		return "", err
	}
	return cfg.API.Socket, nil
}

func apiError(op string, err error, socket string) error {
	return fmt.Errorf("%s: is the agent running? cannot reach %s: %w", op, socket, err)
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("status", stderr)
	cfgPath, socket := socketFor(fs)
	asJSON := fs.Bool("json", false, "print JSON for machines")
	if err := parse(fs, args); err != nil {
		return err
	}
	sock, err := resolveSocket(*cfgPath, isSet(fs, "config"), *socket, getenv)
	if err != nil {
		return err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/v1/status", nil)
	resp, err := localapi.Client(sock, 60*time.Second).Do(req)
	if err != nil {
		return apiError("status", err, sock)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var st agent.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if *asJSON {
		if _, err = stdout.Write(body); err != nil {
			return err
		}
	} else {
		// Relative times count from the agent's clock, which may be
		// corrected while the system clock is not.
		now := st.Now
		if now.IsZero() {
			now = time.Now()
		}
		if err := agent.WriteStatus(stdout, st, now); err != nil {
			return err
		}
	}
	if !st.Healthy {
		return unhealthyError{st.Problems}
	}
	return nil
}

// unhealthyError makes `edgeagent status` exit 1 after printing the
// status of an agent that is unhealthy.
type unhealthyError struct{ problems []string }

func (e unhealthyError) Error() string {
	if len(e.problems) == 0 {
		return "status: the agent is unhealthy"
	}
	return "status: the agent is unhealthy: " + strings.Join(e.problems, "; ")
}

func cmdSend(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("send", stderr)
	cfgPath, socket := socketFor(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() != 1 {
		return usageError{"send takes one JSON object (or array of objects) as its argument, or - for standard input"}
	}
	msg := []byte(fs.Arg(0))
	if fs.Arg(0) == "-" {
		b, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<20+1))
		if err != nil {
			return err
		}
		msg = b
	}
	sock, err := resolveSocket(*cfgPath, isSet(fs, "config"), *socket, getenv)
	if err != nil {
		return err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/telemetry", bytes.NewReader(msg))
	req.Header.Set("Content-Type", "application/json")
	resp, err := localapi.Client(sock, 60*time.Second).Do(req)
	if err != nil {
		return apiError("send", err, sock)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("send: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	_, err = stdout.Write(body)
	return err
}
