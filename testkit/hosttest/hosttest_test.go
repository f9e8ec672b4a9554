package hosttest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// VerifyUnit must catch what systemd-analyze only warns about, or the unit
// checks that use it could not fail.
func TestVerifyUnit(t *testing.T) {
	tests := []struct {
		name, unit, wantErr string
	}{
		{"good", "[Unit]\nDescription=x\n[Service]\nType=notify\nExecStart=/bin/true\n", ""},
		{"unknown key", "[Service]\nExecStart=/bin/true\nFooBar=1\n", "Unknown key"},
		{"bad value", "[Service]\nExecStart=/bin/true\nType=bogus\n", "Failed to parse service type"},
		{"missing binary", "[Service]\nExecStart=/nonexistent/edgeagent run\n", "/nonexistent/edgeagent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "x.service")
			if err := os.WriteFile(p, []byte(tt.unit), 0o644); err != nil {
				t.Fatal(err)
			}
			err := VerifyUnit(p)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("VerifyUnit: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("VerifyUnit = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}
