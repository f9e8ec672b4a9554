package sysservice

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/packaging"
)

func TestSystemdTemplate(t *testing.T) {
	tmpl, err := SystemdTemplate()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(packaging.AgentUnit(), "ExecStart=/usr/bin/edgeagent run --config /etc/edgeagent/edgeagent.yaml\n",
		"ExecStart={{Path | cmdEscape}}{{range Arguments}} {{. | cmd}}{{end}}\n", 1)
	if tmpl != want {
		t.Errorf("template is not the packaged unit with the library's ExecStart:\n%s", tmpl)
	}
	for _, must := range []string{"Type=notify", "WatchdogSec=", "Restart=always", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"StateDirectory=edgeagent", "RuntimeDirectory=edgeagent", "User=edgeagent", "SupplementaryGroups=tss", "DeviceAllow=char-tpmrm rw"} {
		if !strings.Contains(tmpl, "\n"+must) {
			t.Errorf("unit lacks %s", must)
		}
	}
}

func TestCheckPaths(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "edgeagent")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	noexec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noexec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, exe, cfg, wantErr string
	}{
		{"ok", exe, "/etc/edgeagent/edgeagent.yaml", ""},
		{"missing binary", filepath.Join(dir, "nope"), "/etc/edgeagent/edgeagent.yaml", "no such file"},
		{"not executable", noexec, "/etc/edgeagent/edgeagent.yaml", "not an executable"},
		{"config in /root", exe, "/root/edgeagent.yaml", "ProtectHome"},
		{"config in /home", exe, "/home/pi/edgeagent.yaml", "copy it to"},
		{"/homestead is not /home", exe, "/homestead/edgeagent.yaml", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkPaths(tt.exe, tt.cfg)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("checkPaths(%s, %s) = %v, want error containing %q", tt.exe, tt.cfg, err, tt.wantErr)
			}
		})
	}
}

func TestControlRejects(t *testing.T) {
	tests := []struct {
		name    string
		o       Options
		wantErr string
	}{
		{"action", Options{Action: "reinstall", ConfigPath: "/etc/x"}, "unknown action"},
		{"init system", Options{Action: "install", ConfigPath: "/etc/x", System: "launchd"}, "unknown init system \"launchd\": use one of linux-systemd"},
		{"no config", Options{Action: "install", System: Systemd}, "--config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Control(tt.o); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Control = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestSandboxConflicts(t *testing.T) {
	tests := []struct {
		name, state, socket string
		want                []string
	}{
		{"defaults", "/var/lib/edgeagent", "/run/edgeagent/api.sock", nil},
		{"below the state dir", "/var/lib/edgeagent/a", "/run/edgeagent/x/api.sock", nil},
		{"state elsewhere", "/srv/agent", "/run/edgeagent/api.sock", []string{"state_dir /srv/agent is read-only"}},
		{"sibling prefix", "/var/lib/edgeagent2", "/run/edgeagent/api.sock", []string{"state_dir /var/lib/edgeagent2"}},
		{"socket elsewhere", "/var/lib/edgeagent", "/var/run/agent.sock", []string{"api.socket /var/run/agent.sock is in /var/run"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.StateDir, cfg.API.Socket = tt.state, tt.socket
			got := sandboxConflicts(cfg)
			if len(got) != len(tt.want) {
				t.Fatalf("sandboxConflicts = %q, want %d warnings", got, len(tt.want))
			}
			for i := range got {
				if !strings.Contains(got[i], tt.want[i]) || !strings.Contains(got[i], "ReadWritePaths=") {
					t.Errorf("warning %q, want it to contain %q and the drop-in fix", got[i], tt.want[i])
				}
			}
		})
	}
}
