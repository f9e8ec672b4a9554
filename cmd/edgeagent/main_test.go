package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/testkit/testpki"
)

func TestUsageErrors(t *testing.T) {
	pinFile := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(pinFile, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "no command"},
		{"unknown command", []string{"explode"}, "unknown command"},
		{"unknown flag", []string{"enroll", "--tokn", "x"}, "tokn"},
		{"extra argument", []string{"renew", "now"}, "unexpected argument"},
		{"nothing to enroll with", []string{"enroll"}, "no enrollment token"},
		{"empty token on stdin", []string{"enroll", "--token", "-"}, "--token -"},
		{"bad token", []string{"enroll", "--token", "edgetok1.xyz"}, "--token"},
		{"token and server", []string{"enroll", "--token", "x", "--server", "https://ca"}, "do not also give"},
		{"http server", []string{"enroll", "--server", "http://ca", "--ca-pin", "x"}, "--server"},
		{"server without trust", []string{"enroll", "--server", "https://ca", "--username", "u", "--password", "p"}, "--ca-pin or --ca-bundle"},
		{"bad pin", []string{"enroll", "--server", "https://ca", "--ca-pin", "sha256:12", "--username", "u", "--password", "p"}, "--ca-pin"},
		{"no password", []string{"enroll", "--server", "https://ca", "--ca-pin", "sha256:" + strings.Repeat("a", 64), "--username", "u"}, "--password"},
		{"bad bundle", []string{"enroll", "--server", "https://ca", "--ca-bundle", pinFile, "--username", "u", "--password", "p"}, "--ca-bundle"},
		{"missing token file", []string{"enroll", "--token-file", "/nonexistent/token"}, "--token-file"},
		{"bad key alg", []string{"enroll", "--key-alg", "dsa"}, "--key-alg"},
		{"renew user without password", []string{"renew", "--username", "u"}, "--password-file together"},
		{"renew password without user", []string{"renew", "--password-file", "/nonexistent/pw"}, "--password-file together"},
		{"renew missing password file", []string{"renew", "--username", "u", "--password-file", "/nonexistent/pw"}, "--password-file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), c.args, &out, &errOut, func(string) string { return "" })
			var ue usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want a usage error mentioning %q", err, c.want)
			}
		})
	}
}

func TestEnrollFromEnvAndRenew(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	state := filepath.Join(t.TempDir(), "s")
	tok := c.Token(t, "env-dev")
	env := func(k string) string {
		if k == "EDGEAGENT_TOKEN" {
			return tok.String()
		}
		return ""
	}
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"enroll", "--state-dir", state, "--device-id", "env-dev"}, &out, &errOut, env); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "enrolled device env-dev serial ") || strings.Contains(errOut.String(), tok.Secret) {
		t.Fatalf("stdout %q stderr %q", out.String(), errOut.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"renew", "--state-dir", state, "--rekey"}, &out, &errOut, env); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "renewed device env-dev") {
		t.Fatalf("renew printed %q", out.String())
	}
	// --token - reads the token from standard input (it stays out of ps);
	// --force without --device-id keeps the device's id.
	tok2 := c.Token(t, "env-dev")
	out.Reset()
	if err := runIO(context.Background(), []string{"enroll", "--state-dir", state, "--force", "--token", "-"}, strings.NewReader(tok2.String()+"\n"), &out, &errOut, env); err != nil {
		t.Fatalf("enroll --token -: %v", err)
	}
	if !strings.Contains(out.String(), "enrolled device env-dev serial ") {
		t.Fatalf("enroll --force --token -: %q", out.String())
	}
	// Enrolling again needs --force.
	if err := run(context.Background(), []string{"enroll", "--state-dir", state, "--device-id", "env-dev"}, &out, &errOut, env); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("re-enroll without --force: %v", err)
	}
}

// TestConfigCheck: `config check` prints the effective config (file,
// environment, defaults) and exits 78 on a bad file or an unknown
// EDGEAGENT_ variable, naming it.
func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("mqtt:\n  url: mqtts://broker:8883\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dup := filepath.Join(dir, "dup.yaml")
	if err := os.WriteFile(dup, []byte("mqtt:\n  url: mqtts://broker:8883\n  url: mqtts://other:8883\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(k string) string { return map[string]string{"EDGEAGENT_RENEW_RETRY_MAX": "5m"}[k] }
	out, errOut, err := edgeagentEnv(t, env, "config", "check", "--config", good)
	if err != nil || !strings.Contains(out, "  url: mqtts://broker:8883\n") || !strings.Contains(out, "  retry_max: 5m0s\n") || !strings.Contains(errOut, "config ok") {
		t.Fatalf("config check: %v\nstdout:\n%s\nstderr: %s", err, out, errOut)
	}
	if _, _, err := edgeagentEnv(t, env, "config", "check", "--config", dup); exitCode(err) != exitNeedsOperator || !strings.Contains(err.Error(), "mqtt.url") {
		t.Fatalf("duplicate key: exit %d, %v", exitCode(err), err)
	}
	t.Setenv("EDGEAGENT_MQTT_ULR", "mqtts://typo:8883")
	if _, _, err := edgeagentEnv(t, env, "config", "check", "--config", good); exitCode(err) != exitNeedsOperator || !strings.Contains(err.Error(), "EDGEAGENT_MQTT_ULR") {
		t.Fatalf("unknown variable: exit %d, %v", exitCode(err), err)
	}
	if _, _, err := edgeagentEnv(t, env, "config"); exitCode(err) != 2 {
		t.Fatalf("config without check: %v", err)
	}
}

func edgeagentEnv(t *testing.T, getenv func(string) string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut, getenv)
	return out.String(), errOut.String(), err
}

// TestEnrollAndRenewWithTheDaemonsConfig: `enroll --config` and `renew
// --config` take state_dir, the keystore, device_id and enroll.* from the
// daemon's config file, so a hand enrollment cannot land elsewhere than
// where `run` looks; flags given override only what they name.
func TestEnrollAndRenewWithTheDaemonsConfig(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(c.Token(t, "cfg-dev").String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "edgeagent.yaml")
	if err := os.WriteFile(cfgFile, []byte("device_id: cfg-dev\nstate_dir: "+state+"\nenroll:\n  token_file: "+tokFile+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := edgeagentEnv(t, func(string) string { return "" }, "enroll", "--config", cfgFile)
	if err != nil || !strings.HasPrefix(out, "enrolled device cfg-dev ") {
		t.Fatalf("enroll --config: %v %q\n%s", err, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(state, "cert.pem")); err != nil {
		t.Fatalf("not enrolled in the config's state_dir: %v", err)
	}
	out, errOut, err = edgeagentEnv(t, func(string) string { return "" }, "renew", "--config", cfgFile)
	if err != nil || !strings.HasPrefix(out, "renewed device cfg-dev ") {
		t.Fatalf("renew --config: %v %q\n%s", err, out, errOut)
	}
	// A flag overrides its key: another device id with a token for it.
	other := filepath.Join(dir, "other")
	tok2 := c.Token(t, "cfg-other")
	out, errOut, err = edgeagentEnv(t, func(k string) string { return map[string]string{"EDGEAGENT_TOKEN": tok2.String()}[k] },
		"enroll", "--config", cfgFile, "--state-dir", other, "--device-id", "cfg-other", "--token", tok2.String())
	if err != nil || !strings.HasPrefix(out, "enrolled device cfg-other ") {
		t.Fatalf("enroll --config with overrides: %v %q\n%s", err, out, errOut)
	}
}
