package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent"
	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/packaging"
)

// These tests drive the edgeagent command line (run) against testEST, an
// EST server that is not edgeca, over real TLS on 127.0.0.1, and check the
// result with openssl.

const testSecret = "s3cret-0123456789-abcdefgh"

func edgeagent(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut, func(string) string { return "" })
	return out.String(), errOut.String(), err
}

func mustEdgeagent(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := edgeagent(t, args...)
	if err != nil {
		t.Fatalf("edgeagent %s: %v\nstderr:\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func requireOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is not installed; `make test` installs it (scripts/test-deps.sh), or apt-get install openssl")
	}
}

func writePEM(t *testing.T, path string, certs ...*x509.Certificate) {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readPEM(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := agent.ParseCertsPEM(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return certs
}

// opensslVerify runs `openssl verify -CAfile ca.pem -untrusted <the
// intermediates of cert.pem> <leaf>` on a state directory.
func opensslVerify(t *testing.T, state string) {
	t.Helper()
	requireOpenSSL(t)
	chain := readPEM(t, filepath.Join(state, agent.CertFile))
	work := t.TempDir()
	leaf, untrusted := filepath.Join(work, "leaf.pem"), filepath.Join(work, "untrusted.pem")
	writePEM(t, leaf, chain[0])
	args := []string{"verify", "-purpose", "sslclient", "-CAfile", filepath.Join(state, agent.CAFile)}
	if len(chain) > 1 {
		writePEM(t, untrusted, chain[1:]...)
		args = append(args, "-untrusted", untrusted)
	}
	out, err := exec.Command("openssl", append(args, leaf)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), leaf+": OK") {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// snapshot is every file in dir with its mode and content.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range entries {
		if e.Name() == agent.LockFile { // its content is the last holder's pid
			continue
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %v\n%s\n", e.Name(), fi.Mode(), data)
	}
	return b.String()
}

func fileNames(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

var summaryRE = regexp.MustCompile(`^(enrolled|renewed) device (\S+) serial ([0-9a-f]+) not-after (\S+)\n$`)

// checkSummary checks what enroll/renew printed against cert.pem.
func checkSummary(t *testing.T, out, verb, device, state string) *x509.Certificate {
	t.Helper()
	m := summaryRE.FindStringSubmatch(out)
	if m == nil || m[1] != verb || m[2] != device {
		t.Fatalf("printed %q, want %q device %s serial HEX not-after RFC3339", out, verb, device)
	}
	leaf := readPEM(t, filepath.Join(state, agent.CertFile))[0]
	// Whole bytes, as openssl prints serials (a leading zero nibble stays).
	if want := hex.EncodeToString(leaf.SerialNumber.Bytes()); m[3] != want {
		t.Fatalf("printed serial %s, cert.pem has %s", m[3], want)
	}
	na, err := time.Parse(time.RFC3339, m[4])
	if err != nil || !na.Equal(leaf.NotAfter) {
		t.Fatalf("printed not-after %s (%v), cert.pem has %v", m[4], err, leaf.NotAfter)
	}
	return leaf
}

func readKey(t *testing.T, state string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(state, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTokenEnrollRenewRekey: the token path (pin bootstrap) end to end,
// with deferred issuance, renewals with and without a new key, and failed
// renewals that must leave the working identity alone.
func TestTokenEnrollRenewRekey(t *testing.T) {
	s := startTestEST(t, testESTOptions{})
	s.addUser("tok-1", testSecret)
	s.set(func(s *testEST) {
		s.deferrals = 2
		s.retryAfter = time.Now().Add(-time.Minute).UTC().Format(http.TimeFormat) // an HTTP-date in the past: retry now
	})
	tok := token.Token{URL: s.url, Pin: token.PinOf(s.root), ID: "tok-1", Secret: testSecret}
	state := filepath.Join(t.TempDir(), "state")

	out, errOut, err := edgeagent(t, "enroll", "--token", tok.String(), "--state-dir", state, "--device-id", "sensor-42")
	if err != nil {
		t.Fatalf("enroll: %v\n%s", err, errOut)
	}
	if strings.Contains(out+errOut, testSecret) {
		t.Fatal("the token secret was printed")
	}
	leaf := checkSummary(t, out, "enrolled", "sensor-42", state)
	if n, _ := s.counts(); n != 3 {
		t.Fatalf("%d enrollment requests, want 3 (two 202 answers honoured)", n)
	}
	if leaf.Subject.CommonName != "sensor-42" || len(leaf.URIs) != 1 || leaf.URIs[0].String() != "urn:edgeagent:device:sensor-42" {
		t.Fatalf("leaf CN %q URIs %v", leaf.Subject.CommonName, leaf.URIs)
	}
	if got := fileNames(t, state); got != "ca.pem cert.pem identity.json key.pem lock server-ca.pem" {
		t.Fatalf("state dir holds %s", got)
	}
	for name, mode := range map[string]os.FileMode{"": 0o700, "key.pem": 0o600} {
		fi, err := os.Stat(filepath.Join(state, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s/%s mode %v (%v), want %v", state, name, fi.Mode().Perm(), err, mode)
		}
	}
	var meta map[string]any
	b, _ := os.ReadFile(filepath.Join(state, agent.IdentityFile))
	if err := json.Unmarshal(b, &meta); err != nil || meta["device_id"] != "sensor-42" || meta["server"] != s.url {
		t.Fatalf("identity.json %s: %v", b, err)
	}
	if chain := readPEM(t, filepath.Join(state, agent.CertFile)); len(chain) != 2 || !chain[1].Equal(s.inter) {
		t.Fatalf("cert.pem has %d certificates, want leaf and intermediate", len(chain))
	}
	opensslVerify(t, state)

	// Renew with the same key.
	key0 := readKey(t, state)
	out = mustEdgeagent(t, "renew", "--state-dir", state)
	renewed := checkSummary(t, out, "renewed", "sensor-42", state)
	if renewed.SerialNumber.Cmp(leaf.SerialNumber) == 0 || readKey(t, state) != key0 {
		t.Fatal("renew: want a new serial and the same key")
	}
	opensslVerify(t, state)

	// Renew with a new key.
	out = mustEdgeagent(t, "renew", "--state-dir", state, "--rekey")
	rekeyed := checkSummary(t, out, "renewed", "sensor-42", state)
	key1 := readKey(t, state)
	if key1 == key0 || rekeyed.SerialNumber.Cmp(renewed.SerialNumber) == 0 {
		t.Fatal("renew --rekey: want a new key and serial")
	}
	if got := fileNames(t, state); got != "ca.pem cert.pem identity.json key.pem lock server-ca.pem" {
		t.Fatalf("after rekey the state dir holds %s", got)
	}
	opensslVerify(t, state)
	if _, n := s.counts(); n != 2 {
		t.Fatalf("%d reenroll requests, want 2", n)
	}

	// The server refuses: nothing in the state dir changes, with or
	// without rekey.
	s.set(func(s *testEST) { s.refuseReenroll = 403 })
	before := snapshot(t, state)
	for _, args := range [][]string{{"renew", "--state-dir", state}, {"renew", "--state-dir", state, "--rekey"}} {
		_, _, err := edgeagent(t, args...)
		if err == nil || !strings.Contains(err.Error(), "POST simplereenroll: 403") || !strings.Contains(err.Error(), "Re-enrollment not permitted") {
			t.Fatalf("%v: %v", args, err)
		}
		if exitCode(err) != 1 {
			t.Fatalf("exit code %d for a refused renewal, want 1", exitCode(err))
		}
		if after := snapshot(t, state); after != before {
			t.Fatalf("a failed %v changed the state dir", args)
		}
	}
	opensslVerify(t, state)

	// Enrolling again needs --force; with it, the used token is refused
	// and the identity stays.
	if _, _, err := edgeagent(t, "enroll", "--token", tok.String(), "--state-dir", state, "--device-id", "sensor-42"); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("enroll over an identity: %v", err)
	}
	_, _, err = edgeagent(t, "enroll", "--token", tok.String(), "--state-dir", state, "--device-id", "sensor-42", "--force")
	if !enroll.IsTokenRejected(err) || !strings.Contains(err.Error(), "POST simpleenroll: 401") {
		t.Fatalf("used token: %v", err)
	}
	if after := snapshot(t, state); after != before {
		t.Fatal("a refused enrollment changed the state dir")
	}
}

// TestCABundleEnrollAndRenew: the parts one by one, with a server whose
// TLS certificate comes from a CA other than the one it enrolls into. The
// operator's --ca-bundle authenticates the server; renewal still reaches
// it because the bundle is kept as server-ca.pem.
func TestCABundleEnrollAndRenew(t *testing.T) {
	s := startTestEST(t, testESTOptions{SeparateTLSCA: true})
	s.addUser("gateway-user", testSecret)
	s.set(func(s *testEST) { s.deferrals, s.retryAfter = 1, "0" })
	dir := t.TempDir()
	bundle, pwFile := filepath.Join(dir, "tls-ca.pem"), filepath.Join(dir, "password")
	writePEM(t, bundle, s.tlsRoot)
	if err := os.WriteFile(pwFile, []byte(testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	out := mustEdgeagent(t, "enroll", "--server", s.url, "--ca-bundle", bundle, "--username", "gateway-user",
		"--password-file", pwFile, "--device-id", "cam-1", "--key-alg", "rsa-2048", "--state-dir", state)
	leaf := checkSummary(t, out, "enrolled", "cam-1", state)
	if leaf.PublicKeyAlgorithm != x509.RSA {
		t.Fatalf("key algorithm %v, want RSA", leaf.PublicKeyAlgorithm)
	}
	if n, _ := s.counts(); n != 2 {
		t.Fatalf("%d enrollment requests, want 2", n)
	}
	if ca := readPEM(t, filepath.Join(state, agent.CAFile)); len(ca) != 2 || !ca[1].Equal(s.root) {
		t.Fatal("ca.pem is not the CA bundle from cacerts")
	}
	if sc := readPEM(t, filepath.Join(state, agent.ServerCAFile)); len(sc) != 1 || !sc[0].Equal(s.tlsRoot) {
		t.Fatal("server-ca.pem is not the --ca-bundle")
	}
	opensslVerify(t, state)

	key0 := readKey(t, state)
	checkSummary(t, mustEdgeagent(t, "renew", "--state-dir", state), "renewed", "cam-1", state)
	if readKey(t, state) != key0 {
		t.Fatal("renew changed the key")
	}
	checkSummary(t, mustEdgeagent(t, "renew", "--state-dir", state, "--rekey"), "renewed", "cam-1", state)
	if readKey(t, state) == key0 {
		t.Fatal("renew --rekey kept the key")
	}
	if k := readPEM(t, filepath.Join(state, agent.CertFile))[0]; k.PublicKeyAlgorithm != x509.RSA {
		t.Fatal("rekey changed the key algorithm")
	}
	opensslVerify(t, state)
}

// TestPinnedRootNotPublished: a server whose cacerts carries only the
// issuing CA; the pinned root it presents in TLS completes ca.pem.
func TestPinnedRootNotPublished(t *testing.T) {
	s := startTestEST(t, testESTOptions{})
	s.set(func(s *testEST) { s.cacertsNoRoot = true })
	s.addUser("tok-2", testSecret)
	tok := token.Token{URL: s.url, Pin: token.PinOf(s.root), ID: "tok-2", Secret: testSecret}
	state := filepath.Join(t.TempDir(), "state")
	checkSummary(t, mustEdgeagent(t, "enroll", "--token", tok.String(), "--state-dir", state, "--device-id", "dev-3"), "enrolled", "dev-3", state)
	if ca := readPEM(t, filepath.Join(state, agent.CAFile)); len(ca) != 2 || !ca[0].Equal(s.inter) || !ca[1].Equal(s.root) {
		t.Fatalf("ca.pem has %d certificates, want the issuing CA and the pinned root", len(ca))
	}
	opensslVerify(t, state)
}

// TestEnrollRefused: each way enrollment must fail, with a message that
// says what is wrong, exit code 1, and nothing stored.
func TestEnrollRefused(t *testing.T) {
	s := startTestEST(t, testESTOptions{})
	s.addUser("tok-3", testSecret)
	split := startTestEST(t, testESTOptions{SeparateTLSCA: true})
	split.addUser("tok-4", testSecret)
	stranger := startTestEST(t, testESTOptions{})
	dir := t.TempDir()
	strangerBundle := filepath.Join(dir, "stranger.pem")
	writePEM(t, strangerBundle, stranger.root)

	tokenFor := func(srv *testEST, pin *x509.Certificate, id string) string {
		return token.Token{URL: srv.url, Pin: token.PinOf(pin), ID: id, Secret: testSecret}.String()
	}
	cases := []struct {
		name string
		args []string
		want []string
		is   func(error) bool
	}{
		{"pin mismatch", []string{"--token", tokenFor(s, stranger.root, "tok-3")},
			[]string{"CA pin mismatch", token.PinOf(stranger.root).String(), token.PinOf(s.root).String() + " (Other Root CA)", "check that the token belongs to this CA", "--ca-bundle"},
			func(err error) bool { return errors.Is(err, enroll.ErrPinMismatch) }},
		{"pinned CA does not issue devices", []string{"--token", tokenFor(split, split.tlsRoot, "tok-4")},
			[]string{"GET cacerts", "neither the pinned " + token.PinOf(split.tlsRoot).String()}, nil},
		{"wrong password", []string{"--server", s.url, "--ca-pin", token.PinOf(s.root).String(), "--username", "tok-3", "--password", "wrong-password-0123456789"},
			[]string{"enroll: POST simpleenroll: 401 credentials rejected: Authentication failed"}, enroll.IsTokenRejected},
		{"unknown user", []string{"--token", tokenFor(s, s.root, "nobody")},
			[]string{"POST simpleenroll: 401"}, enroll.IsTokenRejected},
		{"bundle of another CA", []string{"--server", s.url, "--ca-bundle", strangerBundle, "--username", "tok-3", "--password", testSecret},
			[]string{"GET cacerts", "not signed by a trusted CA"}, nil},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			state := filepath.Join(dir, fmt.Sprint("state", i))
			args := append([]string{"enroll", "--state-dir", state, "--device-id", "dev-x"}, c.args...)
			_, errOut, err := edgeagent(t, args...)
			if err == nil {
				t.Fatal("enrollment succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if c.is != nil && !c.is(err) {
				t.Errorf("error %v: wrong kind", err)
			}
			if exitCode(err) != 1 {
				t.Errorf("exit code %d, want 1", exitCode(err))
			}
			if strings.Contains(err.Error()+errOut, testSecret) {
				t.Error("the secret was printed")
			}
			if agent.HasIdentity(state) {
				t.Error("an identity was stored")
			}
		})
	}
	// The refusals consumed nothing: the right credentials still work.
	state := filepath.Join(dir, "ok")
	checkSummary(t, mustEdgeagent(t, "enroll", "--token", tokenFor(s, s.root, "tok-3"), "--state-dir", state, "--device-id", "dev-x"), "enrolled", "dev-x", state)
}

func TestExitCodes(t *testing.T) {
	cases := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{flag.ErrHelp, 0},
		{usageError{"--key-alg: unknown"}, 2},
		{fmt.Errorf("wrapped: %w", usageError{"x"}), 2},
		{errors.New("enroll: POST simpleenroll: 401"), 1},
		{fmt.Errorf("agent: %w", &agent.DeviceIDMismatchError{Configured: "a", Enrolled: "b"}), exitNeedsOperator},
		{fmt.Errorf("agent: %w", agent.ErrDamagedIdentity), 1}, // only LoadIdentity's wrapped form needs the operator
		{configError{errors.New("config: mqtt.url: bad")}, exitNeedsOperator},
	}
	for _, c := range cases {
		if got := exitCode(c.err); got != c.want {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
	// The unit does not restart on the status that needs the operator.
	if want := fmt.Sprintf("RestartPreventExitStatus=%d\n", exitNeedsOperator); !strings.Contains(packaging.AgentUnit(), want) {
		t.Fatalf("the packaged unit lacks %q", want)
	}
	if _, _, err := edgeagent(t, "run", "--config", "/nonexistent/edgeagent.yaml"); exitCode(err) != exitNeedsOperator {
		t.Fatalf("run with a missing config: exit %d, %v", exitCode(err), err)
	}
	_, _, err := edgeagent(t, "enroll", "--key-alg", "dsa-1024")
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "--key-alg") {
		t.Fatalf("bad --key-alg: exit %d, %v", exitCode(err), err)
	}
	if _, _, err := edgeagent(t, "renew", "-h"); exitCode(err) != 0 {
		t.Fatalf("renew -h: %v", err)
	}
}
