package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// edgeca runs the command in-process and returns exit code, stdout, stderr.
func edgeca(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := edgeca(t, args...)
	if code != 0 {
		t.Fatalf("edgeca %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// serve starts `edgeca serve` in-process on a free port and returns its URL.
func serve(t *testing.T, dir string, extra ...string) string {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), "addr")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var logs bytes.Buffer
	go func() {
		done <- run(ctx, append([]string{"serve", "--dir", dir, "--listen", "127.0.0.1:0", "--addr-file", addrFile}, extra...), io.Discard, &logs)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exited %d:\n%s", code, logs.String())
		}
		if _, err := os.Stat(filepath.Join(dir, ca.ServeAddrFile)); !os.IsNotExist(err) {
			t.Errorf("serve left %s behind", ca.ServeAddrFile)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile(addrFile); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return "https://" + strings.TrimSpace(string(b))
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited early with %d:\n%s", code, logs.String())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not write its address:\n%s", logs.String())
		}
	}
}

func enroll(t *testing.T, tok token.Token, root *x509.Certificate, id string) (int, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodPost, tok.URL+est.Path("", est.OpSimpleEnroll), bytes.NewReader(est.EncodeBase64(der)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", est.MediaPKCS10)
	req.SetBasicAuth(tok.ID, tok.Secret)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestCLI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir)
	c, err := ca.Open(context.Background(), dir, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rootCert := c.Root()
	c.Close()

	// Without --url and without a running server there is no URL.
	if code, _, errOut := edgeca(t, "token", "create", "--dir", dir); code != 1 || !strings.Contains(errOut, "--url") {
		t.Fatalf("token create without URL: exit %d: %s", code, errOut)
	}

	url := serve(t, dir, "--cert-ttl", "1h")

	// token create prints only the token; the URL comes from the server.
	out := mustRun(t, "token", "create", "--dir", dir, "--device", "cli-1")
	tok, err := token.Parse(out)
	if err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("token create stdout %q: %v", out, err)
	}
	if tok.URL != url || !tok.Pin.Matches(rootCert) {
		t.Fatalf("token URL %q (want %q), pin %v", tok.URL, url, tok.Pin)
	}
	if status, body := enroll(t, tok, rootCert, "cli-1"); status != http.StatusOK {
		t.Fatalf("enroll: %d %s", status, body)
	}
	if status, body := enroll(t, tok, rootCert, "cli-1"); status != http.StatusUnauthorized || !strings.HasPrefix(body, "token_invalid:") {
		t.Fatalf("second enroll: %d %s", status, body)
	}

	// token list never shows secrets.
	list := mustRun(t, "token", "list", "--dir", dir, "--json")
	var toks []map[string]any
	if err := json.Unmarshal([]byte(list), &toks); err != nil || len(toks) != 1 {
		t.Fatalf("token list --json: %v\n%s", err, list)
	}
	if toks[0]["id"] != tok.ID || toks[0]["state"] != "used" || strings.Contains(list, tok.Secret) {
		t.Fatalf("token list: %s", list)
	}
	if text := mustRun(t, "token", "list", "--dir", dir); !strings.Contains(text, tok.ID) || strings.Contains(text, tok.Secret) {
		t.Fatalf("token list: %s", text)
	}

	// A revoked token is refused.
	out = mustRun(t, "token", "create", "--dir", dir, "--pattern", "cli-*", "--uses", "3", "--ttl", "1h")
	tok2, err := token.Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, "token", "revoke", tok2.ID, "--dir", dir) // flags after the argument work too
	if status, body := enroll(t, tok2, rootCert, "cli-2"); status != http.StatusUnauthorized {
		t.Fatalf("revoked token: %d %s", status, body)
	}

	// Devices.
	show := mustRun(t, "device", "show", "--dir", dir, "cli-1")
	for _, want := range []string{"cli-1", "active", tok.ID} {
		if !strings.Contains(show, want) {
			t.Fatalf("device show lacks %q:\n%s", want, show)
		}
	}
	var dev map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, "device", "show", "--json", "--dir", dir, "cli-1")), &dev); err != nil || dev["status"] != "active" || dev["serial"] == "" {
		t.Fatalf("device show --json: %v %v", dev, err)
	}
	mustRun(t, "device", "revoke", "--dir", dir, "cli-1")
	if list := mustRun(t, "device", "list", "--dir", dir); !strings.Contains(list, "revoked") {
		t.Fatalf("device list: %s", list)
	}
	if code, _, errOut := edgeca(t, "device", "show", "--dir", dir, "nope"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Fatalf("device show unknown: %d %s", code, errOut)
	}

	// The audit log says what happened, the reasons included.
	var recs []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, "audit", "--dir", dir, "--json")), &recs); err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || recs[0]["reason"] == "" || !strings.Contains(recs[0]["reason"].(string), "revoked") ||
		!strings.Contains(recs[1]["reason"].(string), "used up") || recs[2]["result"] != "ok" {
		t.Fatalf("audit: %+v", recs)
	}
	if a := mustRun(t, "audit", "--dir", dir, "--limit", "1"); strings.Count(a, "\n") != 2 {
		t.Fatalf("audit --limit 1:\n%s", a)
	}
}

func TestCLIErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir)
	for _, tc := range []struct {
		args []string
		code int
		has  string
	}{
		{nil, 2, "no command"},
		{[]string{"bogus"}, 2, "unknown command"},
		{[]string{"token"}, 2, "subcommand"},
		{[]string{"token", "create", "--dir", dir, "--uses", "0"}, 2, "--uses"},
		{[]string{"token", "create", "--dir", dir, "--url", "https://x", "--device", "a", "--pattern", "b*"}, 1, "not both"},
		{[]string{"token", "revoke", "--dir", dir}, 2, "takes ID"},
		{[]string{"token", "revoke", "--dir", dir, "tnope"}, 1, "not found"},
		{[]string{"device", "show", "--dir", dir, "a", "b"}, 2, "takes ID"},
		{[]string{"serve", "--dir", dir, "--cert-ttl", "30s"}, 2, "minimum"},
		{[]string{"serve", "--dir", dir, "--cert-ttl", "43800h"}, 2, "maximum"},
		{[]string{"serve", "--dir", dir, "--renew-grace", "-1h"}, 2, "--renew-grace"},
		{[]string{"serve", "--dir", dir, "--renew-grace", "1000h"}, 2, "--renew-grace"},
		{[]string{"serve", "--dir", dir, "--bogus"}, 2, "bogus"},
		{[]string{"serve", "--dir", dir, "--require-tpm"}, 2, "--attest-roots"},
		{[]string{"serve", "--dir", dir, "--attest-roots", filepath.Join(dir, "none.pem")}, 2, "--attest-roots"},
		{[]string{"init", "--dir", dir}, 1, "already initialized"},
		{[]string{"audit", "--dir", filepath.Join(dir, "missing")}, 1, "edgeca init"},
	} {
		code, _, errOut := edgeca(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.has) {
			t.Errorf("edgeca %v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, code, errOut, tc.code, tc.has)
		}
	}
	if err := os.Chmod(filepath.Join(dir, ca.IntermediateKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := edgeca(t, "token", "list", "--dir", dir); code != 1 || !strings.Contains(errOut, "chmod 600") {
		t.Fatalf("loose key: exit %d: %s", code, errOut)
	}
	if code, out, _ := edgeca(t, "help"); code != 0 || !strings.Contains(out, "token create") {
		t.Fatalf("help: %d %s", code, out)
	}
}

// TestAuditEscapesAndPrunes stores records with raw control characters
// (as an older edgeca could have) and checks `edgeca audit` prints each on
// one line with them escaped, then prunes them.
func TestAuditEscapesAndPrunes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir)
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(dir, ca.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-100 * 24 * time.Hour)
	for _, r := range []store.AuditRecord{
		{Time: old, Op: "simpleenroll", Peer: "10.0.0.1:1", TokenID: "t\x1b[2J\r\n2026-01-01 simpleenroll ok", Result: "denied", Reason: "old"},
		{Time: time.Now(), Op: "simpleenroll", Peer: "10.0.0.1:2", TokenID: "x", Result: "denied", Reason: "line one\nFAKE ok"},
	} {
		if err := st.AddAudit(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	out := mustRun(t, "audit", "--dir", dir)
	if strings.Count(out, "\n") != 3 || strings.ContainsAny(out, "\x1b\r") || !strings.Contains(out, `t\x1b[2J\r\n2026`) || !strings.Contains(out, `line one\nFAKE`) {
		t.Fatalf("audit output:\n%q", out)
	}
	for _, tc := range []struct {
		args []string
		code int
		has  string
	}{
		{[]string{"audit", "prune", "--dir", dir}, 2, "--older-than or --keep"},
		{[]string{"audit", "prune", "--dir", dir, "--keep", "-1"}, 2, "negative"},
		{[]string{"audit", "prune", "--dir", dir, "--older-than", "2160h"}, 0, "1 audit records deleted"},
		{[]string{"audit", "prune", "--dir", dir, "--keep", "5"}, 0, "0 audit records deleted"},
	} {
		code, _, errOut := edgeca(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.has) {
			t.Errorf("edgeca %v: exit %d %q, want %d %q", tc.args, code, errOut, tc.code, tc.has)
		}
	}
	if out := mustRun(t, "audit", "--dir", dir); strings.Count(out, "\n") != 2 || !strings.Contains(out, "FAKE") {
		t.Fatalf("after prune:\n%s", out)
	}
}

// TestDeviceShowRevokeEveryID: `edgeca device show` and `revoke` take any
// valid device id, by any spelling of its case, and refuse invalid ones
// with the grammar's reason.
func TestDeviceShowRevokeEveryID(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir)
	ctx := context.Background()
	ids := []string{"a", "0", "a.b", "a..b", "x_y-z", "UPPER-Case", "trailing.", strings.Repeat("z", 64)}
	st, err := store.Open(ctx, filepath.Join(dir, ca.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateToken(ctx, store.Token{ID: "fleet", MaxUses: len(ids), CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		_, err := st.IssueWithToken(ctx, store.TokenEnrollment{TokenID: "fleet", DeviceID: strings.ToLower(id), Time: time.Now(),
			Issuance: store.Issuance{Serial: fmt.Sprintf("%02x", i), NotAfter: time.Now().Add(time.Hour)}})
		if err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	for _, id := range ids {
		if out := mustRun(t, "device", "show", "--dir", dir, id); !strings.Contains(out, strings.ToLower(id)) {
			t.Errorf("device show %s:\n%s", id, out)
		}
		mustRun(t, "device", "revoke", id, "--dir", dir)
		if out := mustRun(t, "device", "show", "--dir", dir, strings.ToUpper(id)); !strings.Contains(out, "revoked") {
			t.Errorf("device show %s after revoke:\n%s", strings.ToUpper(id), out)
		}
	}
	for _, tc := range []struct {
		id   string
		code int
		has  string
	}{
		{"..", 1, "start with"},
		{".", 1, "start with"},
		{"a/b", 1, "only letters"},
		{"-rf", 2, "-rf"}, // read as a flag: no valid id starts with '-'
		{"a\x1b[2J", 1, `\x1b`},
		{strings.Repeat("z", 65), 1, "1 to 64"},
	} {
		for _, cmd := range []string{"show", "revoke"} {
			code, _, errOut := edgeca(t, "device", cmd, "--dir", dir, tc.id)
			if code != tc.code || !strings.Contains(errOut, tc.has) || strings.Contains(errOut, "\x1b") {
				t.Errorf("device %s %q: exit %d %q, want %d %q", cmd, tc.id, code, errOut, tc.code, tc.has)
			}
		}
	}
}

func TestInitRootKeyOut(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	out := filepath.Join(t.TempDir(), "root-key.pem")
	code, _, errOut := edgeca(t, "init", "--dir", dir, "--root-key-out", out)
	if code != 0 || !strings.Contains(errOut, "keep it offline") {
		t.Fatalf("init --root-key-out: %d %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, ca.RootKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("root key left in the CA directory: %v", err)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("root key out: %v %v", fi, err)
	}
	// The CA works without it.
	mustRun(t, "token", "create", "--dir", dir, "--url", "https://ca.example:8443")
}

// TestSubcommandHelp: -h on a subcommand prints that command's own flags
// (serve's --crl-url and --db are not in the general usage), exit 0.
func TestSubcommandHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"serve", "-h"}, []string{"usage: edgeca serve", "-crl-url", "-db", "-health-listen"}},
		{[]string{"device", "list", "--help"}, []string{"usage: edgeca device list", "-label", "-expiring"}},
		{[]string{"device", "label", "-h"}, []string{"usage: edgeca device label"}},
	} {
		code, out, errOut := edgeca(t, tc.args...)
		if code != 0 {
			t.Errorf("%q: exit %d: %s", tc.args, code, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%q printed no %q:\n%s", tc.args, w, out)
			}
		}
	}
}
