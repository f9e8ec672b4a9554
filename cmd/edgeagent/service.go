package main

import (
	"io"
	"strings"

	"github.com/edgeagent/edgeagent/agent/sysservice"
)

// cmdService runs install, uninstall, start, stop and restart.
func cmdService(action string, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(action, stderr)
	cfgPath := configFlag(fs)
	system := fs.String("init-system", "", "init system: "+strings.Join(sysservice.Systems(), ", ")+" (default: the one detected, here "+detected()+")")
	exe := fs.String("executable", "", "binary the service runs (default: this one)")
	if err := parse(fs, args); err != nil {
		return err
	}
	return sysservice.Control(sysservice.Options{Action: action, ConfigPath: *cfgPath, Executable: *exe, System: *system, Out: stdout})
}

func detected() string {
	if s := sysservice.Detected(); s != "" {
		return s
	}
	return "none"
}
