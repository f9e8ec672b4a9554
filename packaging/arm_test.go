package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestARMPackagesAndVersions: scripts/package.sh for armv7 and armv6
// leaves one armhf .deb (Debian's and Raspberry Pi OS's armhf are one dpkg
// architecture, so two would share name, version and architecture), keeps
// the rpm and apk of both (distinct architectures there), and refuses a
// binary whose `edgeagent version` is not the package version.
func TestARMPackagesAndVersions(t *testing.T) {
	for _, tool := range []string{"dpkg-deb", "rpm", "qemu-arm-static"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run scripts/test-deps.sh", tool)
		}
	}
	dir := t.TempDir()
	dist := filepath.Join(dir, "dist")
	const version = "0.0.7"
	for arch, arm := range map[string]string{"armv7": "7", "armv6": "6"} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X github.com/edgeagent/edgeagent/internal/version.Version="+version,
			"-o", filepath.Join(dist, "edgeagent-linux-"+arch), "../cmd/edgeagent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm", "GOARM="+arm)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", arch, err, out)
		}
	}
	pkg := func(v string) (string, []byte, error) {
		out := filepath.Join(dir, "out-"+v)
		cmd := exec.Command("bash", "../scripts/package.sh")
		cmd.Env = append(os.Environ(), "ARCHS=armv7 armv6", "FORMATS=deb rpm apk", "PROGRAMS=edgeagent", "DIST="+dist, "OUT="+out, "PKG_VERSION="+v)
		b, err := cmd.CombinedOutput()
		return out, b, err
	}
	out, log, err := pkg(version)
	if err != nil {
		t.Fatalf("scripts/package.sh: %v\n%s", err, log)
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{"edgeagent_0.0.7_armv6.apk", "edgeagent_0.0.7_armv6.deb", "edgeagent_0.0.7_armv6.rpm", "edgeagent_0.0.7_armv7.apk", "edgeagent_0.0.7_armv7.rpm"}
	if !slices.Equal(names, want) {
		t.Fatalf("packages %v, want %v", names, want)
	}
	ctrl, err := exec.Command("dpkg-deb", "-f", filepath.Join(out, "edgeagent_0.0.7_armv6.deb"), "Package", "Version", "Architecture").CombinedOutput()
	if err != nil || string(ctrl) != "Package: edgeagent\nVersion: 0.0.7-1\nArchitecture: armhf\n" {
		t.Fatalf("armhf .deb control: %v\n%s", err, ctrl)
	}
	var arches []string
	for _, a := range []string{"armv6", "armv7"} {
		b, err := exec.Command("rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{ARCH}", filepath.Join(out, "edgeagent_0.0.7_"+a+".rpm")).CombinedOutput()
		if err != nil {
			t.Fatalf("rpm -qp: %v\n%s", err, b)
		}
		arches = append(arches, string(b))
	}
	if arches[0] == arches[1] {
		t.Fatalf("the armv6 and armv7 rpms are both %q", arches[0])
	}
	if _, log, err := pkg("0.0.8"); err == nil || !strings.Contains(string(log), "says version 0.0.7, the package would be 0.0.8") {
		t.Fatalf("packaging a 0.0.7 binary as 0.0.8: %v\n%s", err, log)
	}
}
