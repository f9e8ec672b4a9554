package demo

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A second demo in the same directory refuses to start (and to wipe the
// first one's CA); a stale directory is cleaned but keeps the built binary.
func TestPrepare(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"ca/root.pem", "device/key.pem", "bin/edgedemo", "demo.log"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), Options{Dir: dir, Out: io.Discard, KeysFD: -1})
	if err == nil || !strings.Contains(err.Error(), "another demo is running") {
		t.Fatalf("second demo: %v, want a refusal naming the running one", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ca/root.pem")); err != nil {
		t.Fatalf("the running demo's CA was touched: %v", err)
	}
	ln.Close()
	if _, err := prepare(dir); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]bool{"ca": false, "device": false, "demo.log": false, "api.sock": false, "bin/edgedemo": true} {
		_, err := os.Stat(filepath.Join(dir, f))
		if (err == nil) != want {
			t.Errorf("%s exists=%v after prepare, want %v", f, err == nil, want)
		}
	}
}
