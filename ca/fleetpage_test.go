package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"image/png"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
)

// chromium runs Debian's headless Chromium with args and url.
func chromium(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.Bytes()
}

// seedFleet enrolls devices in several states and makes a refusal whose
// token id is markup.
func seedFleet(t *testing.T, s *testServer) {
	t.Helper()
	ctx := context.Background()
	certs := map[string]*tls.Certificate{}
	keys := map[string]*ecdsa.PrivateKey{}
	for _, id := range []string{"pump-01", "pump-02", "valve-07"} {
		certs[id], keys[id] = s.enrolled(t, id)
	}
	// pump-02 asks to renew for another id: refused, renewal-failing.
	if r := s.client(certs["pump-02"]).reenroll(t, csrFor(t, keys["pump-02"], "pump-09", "urn:edgeagent:device:pump-09")); r.status == http.StatusOK {
		t.Fatal("a renewal for another id was accepted")
	}
	if err := s.ca.RevokeDevice(ctx, "valve-07"); err != nil {
		t.Fatal(err)
	}
	r := s.client(nil).do(t, http.MethodPost, est.Path("", est.OpSimpleEnroll), est.MediaPKCS10, csrFor(t, newKey(t), "pump-03"), "<b>evil</b>", "x")
	if r.status != http.StatusUnauthorized {
		t.Fatalf("bad token: %d %s", r.status, r.body)
	}
}

func TestFleetPageHTML(t *testing.T) {
	s := newTestServer(t, Options{CertTTL: time.Hour})
	seedFleet(t, s)
	health := serveHealthOf(t, s.ca)
	resp, err := http.Get(health + FleetPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	body := b.String()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("fleet page: %d %v", resp.StatusCode, resp.Header)
	}
	for _, want := range []string{"pump-01", "pump-02", `id="count-revoked"><div class="n">1<`, `id="count-active"><div class="n">1<`,
		`id="count-renewal-failing"><div class="n">1<`, "device_not_allowed", "&lt;b&gt;evil&lt;/b&gt;"} {
		if !strings.Contains(body, want) {
			t.Errorf("fleet page lacks %q", want)
		}
	}
	if strings.Contains(body, "<b>evil") || strings.Contains(body, "<script") {
		t.Error("fleet page has unescaped markup from a client")
	}
}

// TestFleetPageChromium renders the fleet page in a real headless
// Chromium: the DOM it built holds the devices and counts, and its
// screenshot is a PNG of the window size that is not blank.
func TestFleetPageChromium(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if _, err := os.Stat("/usr/bin/chromium"); err != nil {
			t.Skip("LOUD SKIP: chromium is not installed (apt-get install -y chromium; scripts/test-deps.sh installs it): the fleet page is not checked in a browser")
		}
		bin = "/usr/bin/chromium"
	}
	s := newTestServer(t, Options{CertTTL: time.Hour})
	seedFleet(t, s)
	// 45 minutes into their hour: pump-01 has missed its renewal.
	s.clock.Advance(45 * time.Minute)
	url := serveHealthOf(t, s.ca) + FleetPath

	dom := string(chromium(t, bin, "--dump-dom", url))
	for _, want := range []string{"pump-01", "pump-02", "edgeca fleet", `id="count-active"><div class="n">0</div>`, `id="count-expiring"><div class="n">1</div>`,
		`id="count-renewal-failing"><div class="n">1</div>`, `id="count-revoked"><div class="n">1</div>`, `id="count-expired"><div class="n">0</div>`,
		`id="count-expiring-unrenewed"><div class="n">2</div>`, `<td class="state-expiring">expiring</td>`, "&lt;b&gt;evil&lt;/b&gt;"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered DOM lacks %q:\n%s", want, dom)
		}
	}
	if strings.Contains(dom, "<b>evil") {
		t.Error("the rendered DOM has an element a client wrote")
	}

	shot := filepath.Join(t.TempDir(), "fleet.png")
	chromium(t, bin, "--screenshot="+shot, "--window-size=1200,900", "--hide-scrollbars", url)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1200 || b.Dy() != 900 {
		t.Fatalf("screenshot is %dx%d, want 1200x900", b.Dx(), b.Dy())
	}
	// Not blank: the luminance varies (text, tables and coloured counts
	// on a light background), and there are dark pixels (the text).
	var sum, sumSq float64
	var n, dark int
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			l := (0.299*float64(r) + 0.587*float64(g) + 0.114*float64(bl)) / 65535
			sum += l
			sumSq += l * l
			n++
			if l < 0.3 {
				dark++
			}
		}
	}
	mean := sum / float64(n)
	variance := sumSq/float64(n) - mean*mean
	t.Logf("screenshot %s: mean luminance %.3f, variance %.4f, dark pixels %d of %d", shot, mean, variance, dark, n)
	if variance < 0.001 || dark < 200 {
		t.Fatalf("the screenshot looks blank: luminance variance %.5f, %d dark pixels", variance, dark)
	}
	if out := os.Getenv("EDGECA_FLEET_SCREENSHOT"); out != "" {
		// For the README: EDGECA_FLEET_SCREENSHOT=docs/fleet-page.png.
		b, _ := os.ReadFile(shot)
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// The fleet page and the metrics are on the health address, which must
// stay on loopback unless the operator gives --health-listen.
func TestHealthListenDefaultIsLoopback(t *testing.T) {
	host, _, err := net.SplitHostPort(DefaultHealthListen)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		t.Fatalf("DefaultHealthListen %q is not a loopback address", DefaultHealthListen)
	}
}
