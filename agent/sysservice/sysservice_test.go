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
	// The service cannot see /tmp (PrivateTmp=yes), so the binaries that
	// pass are the system's: any regular executable outside the hidden
	// directories will do.
	exe, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	// An executable that works from a shell but not for the service: in
	// /tmp itself, whatever TMPDIR says.
	tmpDir, err := os.MkdirTemp("/tmp", "edgeagent-checkpaths-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmpDir) })
	tmpExe := filepath.Join(tmpDir, "edgeagent")
	if err := os.WriteFile(tmpExe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	const etc = "/etc/edgeagent/edgeagent.yaml"
	with := func(f func(*config.Config)) config.Config {
		c := config.Default()
		f(&c)
		return c
	}
	def := config.Default()
	tests := []struct {
		name, exe, cfgPath string
		cfg                config.Config
		wantErr            string
	}{
		{"ok", exe, etc, def, ""},
		{"missing binary", "/usr/lib/edgeagent-test-no-such-binary", etc, def, "no such file"},
		{"not executable", "/etc/passwd", etc, def, "not an executable"},
		{"binary in /tmp", tmpExe, etc, def, "PrivateTmp=yes"},
		{"binary in /var/tmp", "/var/tmp/edgeagent", etc, def, "copy it to /usr/local/bin"},
		{"config in /root", exe, "/root/edgeagent.yaml", def, "ProtectHome"},
		{"config in /home", exe, "/home/pi/edgeagent.yaml", def, "copy it to /etc/edgeagent"},
		{"config in /tmp", exe, "/tmp/edgeagent.yaml", def, "PrivateTmp=yes"},
		{"/homestead is not /home", exe, "/homestead/edgeagent.yaml", def, ""},
		{"/tmpfs is not /tmp", exe, "/tmpfs/edgeagent.yaml", def, ""},
		{"token in /tmp", exe, etc, with(func(c *config.Config) { c.Enroll.TokenFile = "/tmp/token" }), "enroll.token_file /tmp/token"},
		{"enroll bundle at home", exe, etc, with(func(c *config.Config) { c.Enroll.CABundle = "/home/pi/ca.pem" }), "set enroll.ca_bundle to the new path"},
		{"password in /var/tmp", exe, etc, with(func(c *config.Config) { c.Enroll.PasswordFile = "/var/tmp/pw" }), "enroll.password_file"},
		{"mqtt bundle in /root", exe, etc, with(func(c *config.Config) { c.MQTT.CABundle = "/root/broker.pem" }), "mqtt.ca_bundle"},
		{"https bundle in /run/user", exe, etc, with(func(c *config.Config) { c.HTTPS.CABundle = "/run/user/1000/ca.pem" }), "https.ca_bundle"},
		{"files in /etc", exe, etc, with(func(c *config.Config) {
			c.Enroll.TokenFile, c.Enroll.CABundle, c.MQTT.CABundle = "/etc/edgeagent/token", "/etc/edgeagent/ca.pem", "/etc/ssl/certs/ca-certificates.crt"
		}), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkPaths(tt.exe, tt.cfgPath, tt.cfg)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("checkPaths(%s, %s) = %v, want error containing %q", tt.exe, tt.cfgPath, err, tt.wantErr)
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
