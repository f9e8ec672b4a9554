package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/internal/testca"
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
		{"nothing to enroll with", []string{"enroll"}, "give --token"},
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
	c := testca.Start(t, testca.Options{})
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
	// Enrolling again needs --force.
	if err := run(context.Background(), []string{"enroll", "--state-dir", state, "--device-id", "env-dev"}, &out, &errOut, env); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("re-enroll without --force: %v", err)
	}
}
