package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		mode    os.FileMode
		size    int
		wantErr string
		isMode  bool
	}{
		{"owner only", 0o600, 10, "", false},
		{"group may read", 0o640, 10, "", false},
		{"world readable", 0o644, 10, "chmod o-rwx", true},
		{"world writable", 0o602, 10, "mode 0602", true},
		{"too big", 0o600, MaxSecretFileBytes + 1, "over 64 KiB", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(p, make([]byte, tc.size), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tc.mode); err != nil {
				t.Fatal(err)
			}
			b, err := ReadSecretFile(p)
			if tc.wantErr == "" {
				if err != nil || len(b) != tc.size {
					t.Fatalf("ReadSecretFile: %d bytes, %v", len(b), err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			if errors.Is(err, ErrSecretFileMode) != tc.isMode {
				t.Errorf("errors.Is(err, ErrSecretFileMode) = %v, want %v", !tc.isMode, tc.isMode)
			}
		})
	}
	if _, err := ReadSecretFile(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v", err)
	}
}
