// Package sysservice installs, removes, starts and stops edgeagent as a
// system service through github.com/kardianos/service. On systemd it writes
// the hardened unit the packages ship (packaging/systemd/edgeagent.service),
// with ExecStart pointed at the installing binary and its --config, and
// makes the service account from packaging/sysusers; other init systems get
// the library's defaults.
package sysservice

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kardianos/service"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/packaging"
)

// Name is the service (and systemd unit) name.
const Name = "edgeagent"

// Systemd is the name kardianos/service gives systemd.
const Systemd = "linux-systemd"

// sysv is the library's fallback when no other init system is detected.
const sysv = "unix-systemv"

// Actions lists what Control does.
func Actions() []string { return []string{"install", "uninstall", "start", "stop", "restart"} }

// Options say what to control and how the service runs.
type Options struct {
	// Action is one of Actions.
	Action string
	// ConfigPath is the agent's config file, passed as `run --config`.
	ConfigPath string
	// Executable is the binary the service runs; "" means this process's.
	Executable string
	// System is the init system by its kardianos/service name (see
	// Systems); "" means the one detected on this machine. Naming it helps
	// when installing into an image whose init is not running.
	System string
	// Out receives one line per step taken.
	Out io.Writer
}

// Systems lists the init systems this build knows, detected or not.
func Systems() []string {
	var names []string
	for _, s := range service.AvailableSystems() {
		names = append(names, s.String())
	}
	return names
}

// Detected names the init system detected on this machine, or "" if none.
func Detected() string {
	if s := service.ChosenSystem(); s != nil {
		return s.String()
	}
	return ""
}

// Control performs o.Action for the edgeagent service.
func Control(o Options) error {
	if !slices.Contains(Actions(), o.Action) {
		return fmt.Errorf("service: unknown action %q: use one of %s", o.Action, strings.Join(Actions(), ", "))
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	sys, err := chooseSystem(o.System)
	if err != nil {
		return err
	}
	exe := o.Executable
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("service: finding this program's path: %w", err)
		}
	}
	if exe, err = filepath.Abs(exe); err != nil {
		return fmt.Errorf("service: executable: %w", err)
	}
	cfgPath, err := filepath.Abs(o.ConfigPath)
	if err != nil || o.ConfigPath == "" {
		return fmt.Errorf("service: --config %q: give the config file's path", o.ConfigPath)
	}
	tmpl, err := SystemdTemplate()
	if err != nil {
		return err
	}
	svc, err := sys.New(program{}, &service.Config{
		Name:        Name,
		DisplayName: "edgeagent",
		Description: "edgeagent device identity and telemetry agent",
		Executable:  exe,
		Arguments:   []string{"run", "--config", cfgPath},
		Option:      service.KeyValue{"SystemdScript": tmpl},
	})
	if err != nil {
		return fmt.Errorf("service: %s: %w", sys, err)
	}
	what := fmt.Sprintf("service: %s edgeagent (%s)", o.Action, sys)
	switch o.Action {
	case "install":
		err = install(svc, sys.String(), exe, cfgPath, o.Out)
	case "uninstall":
		err = uninstall(svc, sys.String(), o.Out)
	case "start":
		err = svc.Start()
	case "stop":
		err = svc.Stop()
	case "restart":
		err = svc.Restart()
	}
	if err != nil {
		return fmt.Errorf("%s: %w%s", what, err, hint(sys.String(), err))
	}
	fmt.Fprintf(o.Out, "%s: done\n", what)
	return nil
}

// hint adds what to do for the failures an operator is likely to meet.
func hint(system string, err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "already exists"):
		return " (run 'edgeagent uninstall' first)"
	case errors.Is(err, os.ErrPermission) || strings.Contains(msg, "permission denied"):
		return " (run as root)"
	case system == Systemd && strings.Contains(msg, "exit status"):
		return " (systemctl failed; in an image whose systemd is not running, set SYSTEMD_OFFLINE=1)"
	}
	return ""
}

func chooseSystem(name string) (service.System, error) {
	if name == "" {
		if s := service.ChosenSystem(); s != nil {
			return s, nil
		}
		return nil, fmt.Errorf("service: no init system detected; name one with --init-system (%s)", strings.Join(Systems(), ", "))
	}
	for _, s := range service.AvailableSystems() {
		if s.String() == name {
			return s, nil
		}
	}
	return nil, fmt.Errorf("service: unknown init system %q: use one of %s", name, strings.Join(Systems(), ", "))
}

// SystemdTemplate is the packaged unit as a kardianos/service template: its
// ExecStart line becomes the library's, which names the executable and the
// arguments given in the service config (quoted as systemd expects).
func SystemdTemplate() (string, error) {
	unit := packaging.AgentUnit()
	if strings.Contains(unit, "{{") {
		return "", errors.New("service: the packaged unit contains '{{', which the service template would interpret")
	}
	var out []string
	n := 0
	for _, line := range strings.SplitAfter(unit, "\n") {
		if strings.HasPrefix(line, "ExecStart=") {
			line = "ExecStart={{Path | cmdEscape}}{{range Arguments}} {{. | cmd}}{{end}}\n"
			n++
		}
		out = append(out, line)
	}
	if n != 1 {
		return "", fmt.Errorf("service: the packaged unit has %d ExecStart lines, want 1", n)
	}
	return strings.Join(out, ""), nil
}

// checkPaths refuses paths the hardened unit cannot reach, before anything
// is written: the executable, the config file, and the files the config
// names for the agent to read.
func checkPaths(exe, cfgPath string, cfg config.Config) error {
	for _, p := range []struct{ what, path, fix string }{
		{"executable", exe, "copy it to /usr/local/bin first"},
		{"config", cfgPath, "copy it to /etc/edgeagent first"},
		{"enroll.token_file", cfg.Enroll.TokenFile, ""},
		{"enroll.ca_bundle", cfg.Enroll.CABundle, ""},
		{"enroll.password_file", cfg.Enroll.PasswordFile, ""},
		{"mqtt.ca_bundle", cfg.MQTT.CABundle, ""},
		{"https.ca_bundle", cfg.HTTPS.CABundle, ""},
	} {
		if p.path == "" {
			continue
		}
		dir, why := hiddenFromService(filepath.Clean(p.path))
		if dir == "" {
			continue
		}
		fix := p.fix
		if fix == "" {
			fix = fmt.Sprintf("copy it to /etc/edgeagent and set %s to the new path in %s", p.what, cfgPath)
		}
		return fmt.Errorf("the %s %s is under %s, which the unit hides from the service (%s): %s", p.what, p.path, dir, why, fix)
	}
	st, err := os.Stat(exe)
	if err != nil {
		return fmt.Errorf("executable: %w", err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("executable %s is not an executable file", exe)
	}
	return nil
}

// hiddenFromService returns the directory of path the hardened unit hides
// from the service, and the unit setting that does, or "" when none does:
// ProtectHome=yes hides home directories, PrivateTmp=yes gives the service
// its own empty /tmp and /var/tmp.
func hiddenFromService(path string) (dir, why string) {
	for _, h := range []struct{ dir, why string }{
		{"/home", "ProtectHome=yes"}, {"/root", "ProtectHome=yes"}, {"/run/user", "ProtectHome=yes"},
		{"/tmp", "PrivateTmp=yes"}, {"/var/tmp", "PrivateTmp=yes"},
	} {
		if path == h.dir || strings.HasPrefix(path, h.dir+"/") {
			return h.dir, h.why
		}
	}
	return "", ""
}

func install(svc service.Service, system, exe, cfgPath string, out io.Writer) error {
	cfg := config.Default()
	if _, err := os.Stat(cfgPath); err != nil {
		fmt.Fprintf(out, "note: %s does not exist yet; the agent uses defaults and EDGEAGENT_* variables until it does (reference: packaging/edgeagent.yaml)\n", cfgPath)
	} else if cfg, err = config.Load(cfgPath, nil); err != nil {
		return fmt.Errorf("config %s: %w (fix it before installing)", cfgPath, err)
	}
	if system == Systemd {
		if err := checkPaths(exe, cfgPath, cfg); err != nil {
			return err
		}
		for _, w := range sandboxConflicts(cfg) {
			fmt.Fprintln(out, "warning:", w)
		}
		if err := ensureAccount(out); err != nil {
			return err
		}
	}
	if err := svc.Install(); err != nil {
		return err
	}
	fmt.Fprintf(out, "installed: %s run --config %s\nstart it with: edgeagent start\n", exe, cfgPath)
	return nil
}

// sandboxConflicts names the config's paths the unit's sandbox does not let
// the agent write (ProtectSystem=strict leaves only its state and runtime
// directories writable).
func sandboxConflicts(cfg config.Config) []string {
	var w []string
	dropIn := "; use the default or add ReadWritePaths=%s with 'systemctl edit edgeagent'"
	if d := filepath.Clean(cfg.StateDir); d != packaging.AgentState && !strings.HasPrefix(d, packaging.AgentState+"/") {
		w = append(w, fmt.Sprintf("state_dir %s is read-only for the service (ProtectSystem=strict)"+dropIn, d, d))
	}
	if d := filepath.Dir(cfg.API.Socket); d != "/run/edgeagent" && !strings.HasPrefix(d, "/run/edgeagent/") {
		w = append(w, fmt.Sprintf("api.socket %s is in %s, read-only for the service (ProtectSystem=strict)"+dropIn, cfg.API.Socket, d, d))
	}
	return w
}

// ensureAccount makes the service user and its TPM group with
// systemd-sysusers from the packaged sysusers.d lines, so install and the
// packages make the same account. sysusers only adds what is missing (the
// user, the tss group, the membership), so it runs every time.
func ensureAccount(out io.Writer) error {
	_, lookupErr := user.Lookup(packaging.AgentUser)
	cmd := exec.Command("systemd-sysusers", "-")
	cmd.Stdin = strings.NewReader(packaging.AgentSysusers())
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("creating user %s with systemd-sysusers: %w: %s", packaging.AgentUser, err, strings.TrimSpace(buf.String()))
	}
	if lookupErr != nil {
		fmt.Fprintf(out, "created system user %s (groups %s, %s)\n", packaging.AgentUser, packaging.AgentUser, packaging.TPMGroup)
	}
	return nil
}

// installedPath is where the library puts the service definition on the
// init systems whose files this package knows.
func installedPath(system string) string {
	switch system {
	case Systemd:
		return "/etc/systemd/system/" + Name + ".service"
	case sysv:
		return "/etc/init.d/" + Name
	}
	return ""
}

func uninstall(svc service.Service, system string, out io.Writer) error {
	// The library would first disable the unit, even one a package
	// installed, and only then fail to find its file.
	if p := installedPath(system); p != "" {
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("not installed by 'edgeagent install' (no %s); a packaged edgeagent is removed with the package manager", p)
		}
	}
	// The library's Uninstall leaves a running service running.
	if st, err := svc.Status(); err == nil && st == service.StatusRunning {
		if err := svc.Stop(); err != nil {
			return fmt.Errorf("stopping before uninstall: %w", err)
		}
		fmt.Fprintln(out, "stopped")
	}
	if err := svc.Uninstall(); err != nil {
		return err
	}
	if system == sysv {
		return removeSysvLinks("/etc", out)
	}
	return nil
}

// removeSysvLinks removes the /etc/rcN.d links the library's System V
// Install makes and its Uninstall leaves behind (kardianos/service v1.3.0),
// only where they still point at this service's init script.
func removeSysvLinks(etc string, out io.Writer) error {
	script := "/etc/init.d/" + Name
	var errs []error
	for _, l := range []string{"2S50", "3S50", "4S50", "5S50", "0K02", "1K02", "6K02"} {
		link := filepath.Join(etc, "rc"+l[:1]+".d", l[1:]+Name)
		if target, err := os.Readlink(link); err != nil || target != script {
			continue
		}
		if err := os.Remove(link); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(out, "removed %s\n", link)
	}
	return errors.Join(errs...)
}

// program satisfies service.Interface. The service manager runs
// `edgeagent run`, which does the work; this package only manages the
// service's definition and state.
type program struct{}

func (program) Start(service.Service) error { return nil }
func (program) Stop(service.Service) error  { return nil }
