package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/ca/webhook"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// readmeBlock returns the lines of the README's fenced block whose first
// line is first, with continuation lines joined.
func readmeBlock(t *testing.T, first string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(string(b), "```")
	for i := 1; i < len(parts); i += 2 {
		_, rest, _ := strings.Cut(parts[i], "\n")
		if !strings.HasPrefix(rest, first+"\n") {
			continue
		}
		var out []string
		cur := ""
		for _, l := range strings.Split(strings.TrimPrefix(rest, first+"\n"), "\n") {
			l = strings.TrimSpace(l)
			if c, ok := strings.CutSuffix(l, `\`); ok {
				cur += c
				continue
			}
			if l = cur + l; l != "" && !strings.HasPrefix(l, "#") {
				out = append(out, l)
			}
			cur = ""
		}
		return out
	}
	t.Fatalf("README.md has no block starting with %q", first)
	return nil
}

// words splits a README command line as sh would (single quotes only),
// drops the leading "edgeca" and puts dir for /var/lib/edgeca.
func words(t *testing.T, line, dir string) []string {
	t.Helper()
	var out []string
	for _, f := range strings.Fields(line) {
		f = strings.Trim(f, "'")
		if f == "/var/lib/edgeca" {
			f = dir
		}
		out = append(out, f)
	}
	if len(out) == 0 || out[0] != "edgeca" {
		t.Fatalf("README line %q is not an edgeca command", line)
	}
	return out[1:]
}

// hookPeer is a real HTTP receiver for webhooks (signature checked) and
// the authorizing hook (allows devices named sensor-*).
type hookPeer struct {
	mu     sync.Mutex
	secret []byte
	events []map[string]any
	asked  []string
	url    string
}

func newHookPeer(t *testing.T, secret []byte) *hookPeer {
	h := &hookPeer{secret: secret}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/edgeca", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err := webhook.Verify(h.secret, r.Header.Get(webhook.HeaderSignature), body, time.Now(), 5*time.Minute); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		var ev map[string]any
		if err := json.Unmarshal(body, &ev); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		h.events = append(h.events, ev)
		h.mu.Unlock()
	})
	mux.HandleFunc("/authorize", func(w http.ResponseWriter, r *http.Request) {
		var q ca.AuthorizeRequest
		if err := json.NewDecoder(r.Body).Decode(&q); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		h.asked = append(h.asked, q.Device)
		h.mu.Unlock()
		json.NewEncoder(w).Encode(ca.AuthorizeAnswer{Allow: strings.HasPrefix(q.Device, "sensor-")})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	h.url = "http://" + ln.Addr().String()
	return h
}

func (h *hookPeer) waitEvent(t *testing.T, typ, device string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		for _, ev := range h.events {
			if ev["type"] == typ && ev["device"] == device {
				h.mu.Unlock()
				return ev
			}
		}
		h.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %s event for %s", typ, device)
	return nil
}

// TestReadmeOperatingAFleet runs the README's "Operating a fleet" commands
// as written (the CA directory, listen address and hook URLs aside)
// against a served CA, and checks what each printed and did.
func TestReadmeOperatingAFleet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir)
	c, err := ca.Open(context.Background(), dir, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root := c.Root()
	c.Close()

	secret := []byte("a-webhook-secret-of-32-bytes-....")
	secretFile := filepath.Join(t.TempDir(), "webhook.secret")
	if err := os.WriteFile(secretFile, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	peer := newHookPeer(t, secret)

	serveLine := readmeBlock(t, "# webhooks and the authorizing hook")
	if len(serveLine) != 1 {
		t.Fatalf("serve block: %q", serveLine)
	}
	args := words(t, strings.NewReplacer(
		"0.0.0.0:8443", "127.0.0.1:0",
		"https://hooks.example", peer.url,
		"https://inventory.example", peer.url,
		"/etc/edgeca/webhook.secret", secretFile,
	).Replace(serveLine[0]), dir)
	if args[0] != "serve" {
		t.Fatalf("serve block runs %q", args)
	}
	serve(t, dir, args[1:]...)

	lines := readmeBlock(t, "# bulk provisioning, labels, renew-now and revoke by label")
	run := func(i int) (string, string) {
		t.Helper()
		a := words(t, lines[i], dir)
		code, out, errOut := edgeca(t, a...)
		if code != 0 {
			t.Fatalf("README: %s: exit %d\n%s", lines[i], code, errOut)
		}
		return out, errOut
	}

	// 100 tokens as CSV, each a parseable token carrying its expiry.
	out, _ := run(0)
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(recs) != 101 || !slices.Equal(recs[0], []string{"id", "token", "expires_at", "labels"}) {
		t.Fatalf("--csv: %d rows, %v\n%.300s", len(recs), err, out)
	}
	var csvToks []token.Token
	for _, r := range recs[1:] {
		tok, err := token.Parse(r[1])
		if err != nil || tok.ID != r[0] || r[3] != "ring=canary,site=berlin" {
			t.Fatalf("CSV row %q: %v", r, err)
		}
		exp, err := time.Parse(time.RFC3339, r[2])
		if err != nil || tok.ExpiresAt().Sub(exp) < 0 || tok.ExpiresAt().Sub(exp) > time.Second {
			t.Fatalf("token expiry %v, CSV says %v (%v)", tok.ExpiresAt(), r[2], err)
		}
		if d := time.Until(exp); d < 167*time.Hour || d > 168*time.Hour {
			t.Fatalf("--ttl 168h token expires in %v", d)
		}
		csvToks = append(csvToks, tok)
	}
	out, _ = run(1)
	var js []struct {
		ID, Token string
		ExpiresAt time.Time `json:"expires_at"`
		MaxUses   int       `json:"max_uses"`
		Labels    map[string]string
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil || len(js) != 2 || js[0].Labels["site"] != "paris" || js[0].MaxUses != 1 {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	parisTok, err := token.Parse(js[1].Token)
	if err != nil || parisTok.ID != js[1].ID {
		t.Fatalf("JSON token: %v", err)
	}

	// Enrollments: the hook is asked and allows sensor-*, refuses the
	// rest without spending the token; devices inherit the token labels.
	for i, id := range []string{"sensor-0001", "sensor-0002"} {
		if status, body := enroll(t, csvToks[i], root, id); status != http.StatusOK {
			t.Fatalf("enroll %s: %d %s", id, status, body)
		}
	}
	if status, body := enroll(t, parisTok, root, "sensor-0003"); status != http.StatusOK {
		t.Fatalf("enroll sensor-0003: %d %s", status, body)
	}
	ev := peer.waitEvent(t, webhook.TypeEnrolled, "sensor-0001")
	if l, _ := ev["labels"].(map[string]any); l["site"] != "berlin" || ev["token"] != csvToks[0].ID {
		t.Fatalf("enrolled event %v", ev)
	}

	run(2) // label ring=stable
	out, _ = run(3)
	var labels map[string]string
	if err := json.Unmarshal([]byte(out), &labels); err != nil || labels["ring"] != "stable" || labels["site"] != "berlin" {
		t.Fatalf("device label --json: %v %s", err, out)
	}
	if out, _ = run(4); strings.TrimSpace(out) != "site=berlin" {
		t.Fatalf("after ring-: %q", out)
	}

	if _, errOut := run(5); !strings.Contains(errOut, "1 device(s) asked to renew") {
		t.Fatalf("renew-now by id: %s", errOut)
	}
	if _, errOut := run(6); !strings.Contains(errOut, "2 device(s) asked to renew") {
		t.Fatalf("renew-now by label: %s", errOut)
	}
	c, err = ca.Open(context.Background(), dir, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for id, marked := range map[string]bool{"sensor-0001": true, "sensor-0002": true, "sensor-0003": false} {
		at, err := c.Fleet().RenewalRequested(context.Background(), id)
		if err != nil || at.IsZero() == marked {
			t.Errorf("%s: renew-now mark %v (%v), want marked %v", id, at, err, marked)
		}
	}
	c.Close()

	out, _ = run(7)
	var listed []struct {
		ID     string `json:"id"`
		Labels map[string]string
	}
	if err := json.Unmarshal([]byte(out), &listed); err != nil || len(listed) != 2 || listed[0].ID != "sensor-0001" || listed[1].ID != "sensor-0002" {
		t.Fatalf("device list --label site=berlin --json: %v\n%s", err, out)
	}
	if err := json.Unmarshal([]byte(mustRun(t, "device", "show", "--json", "--dir", dir, "sensor-0003")), &listed[0]); err != nil || listed[0].Labels["site"] != "paris" {
		t.Fatalf("device show --json: labels %v (%v), want site=paris", listed[0].Labels, err)
	}
	if _, errOut := run(8); !strings.Contains(errOut, "2 device(s) labelled site=berlin revoked") {
		t.Fatalf("revoke by label: %s", errOut)
	}
	var dev map[string]any
	for id, want := range map[string]string{"sensor-0001": "revoked", "sensor-0002": "revoked", "sensor-0003": "active"} {
		if err := json.Unmarshal([]byte(mustRun(t, "device", "show", "--json", "--dir", dir, id)), &dev); err != nil || dev["status"] != want {
			t.Fatalf("%s: %v %v, want %s", id, dev["status"], err, want)
		}
	}
	// The revocations came from this CLI process; the server delivers.
	peer.waitEvent(t, webhook.TypeRevoked, "sensor-0002")
	peer.mu.Lock()
	asked := slices.Clone(peer.asked)
	peer.mu.Unlock()
	if !slices.Equal(asked, []string{"sensor-0001", "sensor-0002", "sensor-0003"}) {
		t.Fatalf("authorizing hook asked about %v", asked)
	}
}

func TestFleetCommandErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir, "--url", "https://ca.example:8443")
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"count too big", []string{"token", "create", "--dir", dir, "--count", "100001"}, 2, "--count 100001"},
		{"count and device", []string{"token", "create", "--dir", dir, "--count", "2", "--device", "d1"}, 2, "--device binds"},
		{"json and csv", []string{"token", "create", "--dir", dir, "--json", "--csv"}, 2, "not both"},
		{"bad label", []string{"token", "create", "--dir", dir, "--label", "Site=x"}, 2, "bad label"},
		{"label without =", []string{"token", "create", "--dir", dir, "--label", "site"}, 2, "want key=value"},
		{"label unknown device", []string{"device", "label", "--dir", dir, "nobody", "a=b"}, 1, "not found"},
		{"renew-now nothing", []string{"device", "renew-now", "--dir", dir}, 2, "takes device ids or --label"},
		{"renew-now unknown", []string{"device", "renew-now", "--dir", dir, "nobody"}, 1, "unknown"},
		{"webhook without secret", []string{"serve", "--dir", dir, "--webhook-url", "https://h.example/"}, 2, "--webhook-secret-file"},
		{"bad authorize default", []string{"serve", "--dir", dir, "--authorize-url", "https://a.example/", "--authorize-default", "maybe"}, 2, "allow or deny"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, errOut := edgeca(t, c.args...)
			if code != c.code || !strings.Contains(errOut, c.want) {
				t.Fatalf("exit %d, want %d; stderr %q lacks %q", code, c.code, errOut, c.want)
			}
		})
	}
	// --count 1 with --json: one token, and nothing stored on a refusal.
	var js []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, "token", "create", "--dir", dir, "--json")), &js); err != nil || len(js) != 1 {
		t.Fatalf("--json alone: %v %v", js, err)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, "token", "list", "--dir", dir, "--json")), &list); err != nil || len(list) != 1 {
		t.Fatalf("token list after refusals: %d tokens (%v)", len(list), err)
	}
}
