package packaging

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/hosttest"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestUnitUnderSystemd boots a real systemd as PID 1 of a container
// (systemd-nspawn on a Debian root tree that scripts/test-rootfs.sh builds
// once, booted with --volatile=overlay: the tree stays pristine, and the
// container's /tmp, /var/tmp and /run are its own, so its tmpfiles rules
// never see this machine's /tmp), installs the .deb in it, and shows:
//
//   - readiness: with the CA down the agent runs (MainPID) but the unit
//     stays "activating" while enrollment retries; it becomes "active"
//     only after the agent enrolls and sends READY=1;
//   - the sandbox: the agent, confined by the packaged unit, wrote its
//     identity in /var/lib/edgeagent and serves its API on
//     /run/edgeagent/api.sock; an ExecStartPre in the unit's sandbox
//     (User=edgeagent, SupplementaryGroups=tss, ProtectSystem=strict,
//     DevicePolicy=closed) opens /dev/tpmrm0 read-write;
//   - Restart=always after a crash (SIGSEGV, then SIGKILL);
//   - the watchdog: a SIGSTOPped agent misses its WATCHDOG=1, systemd
//     logs the timeout, aborts it and starts it again;
//   - the journal's levels: `journalctl -p warning` holds the agent's
//     warning (enrollment failed; retrying) and none of its info lines;
//   - `edgeagent install|start|stop|restart|uninstall` (kardianos/service)
//     against that systemd.
//
// A drop-in shortens WatchdogSec (60s) to 4s and RestartSec (5s) to 1s so
// the test takes seconds; everything else is the packaged unit.
//
// Not shown: this kernel has no TPM driver (no tpm/tpmrm major in
// /proc/devices, no tpm_vtpm_proxy), so DeviceAllow=char-tpmrm matches no
// device here and /dev/tpmrm0 is a node with the numbers of /dev/null
// (root:tss 0660): the test proves the path, its group and the mount
// sandbox let the agent's user open it, not that the device cgroup admits
// a real TPM's major.
func TestUnitUnderSystemd(t *testing.T) {
	hosttest.RequireRoot(t, "it boots a systemd container with systemd-nspawn")
	if runtime.GOARCH != "amd64" {
		t.Skipf("NOT RUN: the test installs the amd64 .deb and this machine is %s", runtime.GOARCH)
	}
	for _, tool := range []string{"systemd-nspawn", "nsenter", "debootstrap", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run scripts/test-deps.sh", tool)
		}
	}
	rootfs := os.Getenv("EDGEAGENT_TEST_ROOTFS")
	if rootfs == "" {
		rootfs = "/var/cache/edgeagent-test/rootfs"
	}
	if out, err := exec.Command("bash", "../scripts/test-rootfs.sh").CombinedOutput(); err != nil {
		t.Fatalf("scripts/test-rootfs.sh (the container's root tree): %v\n%s", err, out)
	}

	dir := t.TempDir()
	deb := buildAgentDeb(t, dir)
	// A file in this machine's /tmp that the container must neither see
	// nor delete.
	marker, err := os.CreateTemp("/tmp", "edgeagent-systemd-test-marker-")
	if err != nil {
		t.Fatal(err)
	}
	marker.Close()
	t.Cleanup(func() { os.Remove(marker.Name()) })

	c := boot(t, rootfs, filepath.Dir(deb))
	// Until its manager listens, systemctl cannot connect; then --wait
	// waits for the boot to finish ("degraded", a failed unit, fails).
	poll.UntilWhy(t, 60*time.Second, "the container's boot", func() (bool, string) {
		out, err := c.exec("systemctl", "is-system-running", "--wait")
		return err == nil, out + c.journalTail()
	})
	for _, m := range []string{"/tmp", "/run"} {
		if fs := strings.TrimSpace(c.run(t, "findmnt", "-no", "FSTYPE", m)); fs != "tmpfs" {
			t.Errorf("container's %s is %q, want its own tmpfs", m, fs)
		}
	}
	if _, err := c.exec("test", "-e", marker.Name()); err == nil {
		t.Errorf("the container sees this machine's %s", marker.Name())
	}

	ca := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	tok := ca.Token(t, "sensor-0001").String()
	metrics := freePort(t) // the container shares this machine's network
	c.run(t, "dpkg", "-i", "/mnt/pkg/"+filepath.Base(deb))
	conf := readFile(t, "edgeagent.yaml")
	for old, repl := range map[string]string{
		"state_dir: /var/lib/edgeagent\n": "device_id: sensor-0001\nstate_dir: /var/lib/edgeagent\n",
		"  token_file: \"\"":              "  token_file: /etc/edgeagent/token",
		"listen: 127.0.0.1:9810":          "listen: 127.0.0.1:" + metrics,
	} {
		if !strings.Contains(conf, old) {
			t.Fatalf("packaged edgeagent.yaml has no %q", old)
		}
		conf = strings.Replace(conf, old, repl, 1)
	}
	c.write(t, "/etc/edgeagent/edgeagent.yaml", conf)
	c.write(t, "/etc/edgeagent/token", tok+"\n")
	c.run(t, "chown", "root:edgeagent", "/etc/edgeagent/token")
	c.run(t, "chmod", "0640", "/etc/edgeagent/token")
	// The TPM node: see "Not shown" above.
	c.run(t, "mknod", "-m", "0660", "/dev/tpmrm0", "c", "1", "3")
	c.run(t, "chown", "root:tss", "/dev/tpmrm0")
	c.run(t, "mkdir", "-p", "/etc/systemd/system/edgeagent.service.d")
	c.write(t, "/etc/systemd/system/edgeagent.service.d/test.conf", `[Service]
WatchdogSec=4s
RestartSec=1s
ExecStartPre=/bin/sh -c 'exec 3<>/dev/tpmrm0 && echo "tpm-probe: opened /dev/tpmrm0 read-write as $(id -un) in groups $(id -Gn)"'
`)
	c.run(t, "systemctl", "daemon-reload")

	t.Run("readiness", func(t *testing.T) {
		ca.Stop()
		c.run(t, "systemctl", "start", "--no-block", "edgeagent")
		c.waitJournal(t, "edgeagent", "enrollment failed; retrying")
		p := c.props(t, "ActiveState", "SubState", "MainPID")
		if p["ActiveState"] != "activating" || p["SubState"] != "start" || p["MainPID"] == "0" {
			t.Errorf("before READY=1 the unit is %v, want activating/start with a MainPID", p)
		}
		ca.Resume()
		c.waitActive(t, "edgeagent", "")
		t.Logf("active after enrollment: %v", c.props(t, "ActiveState", "SubState", "MainPID", "StatusText"))
	})

	t.Run("sandbox", func(t *testing.T) {
		// Written under ProtectSystem=strict: the certificate is public
		// (0644), the key is not.
		if got := c.run(t, "stat", "-c", "%n %U %a", "/var/lib/edgeagent/cert.pem", "/var/lib/edgeagent/key.pem"); got != "/var/lib/edgeagent/cert.pem edgeagent 644\n/var/lib/edgeagent/key.pem edgeagent 600\n" {
			t.Errorf("identity in the state dir: %q, want cert.pem 0644 and key.pem 0600, owned by edgeagent", got)
		}
		if got := c.run(t, "stat", "-c", "%F %U", "/run/edgeagent/api.sock"); got != "socket edgeagent\n" {
			t.Errorf("/run/edgeagent/api.sock: %q", got)
		}
		out := c.run(t, "edgeagent", "status", "--json")
		var st struct {
			DeviceID string `json:"device_id"`
			Phase    string `json:"phase"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil || st.DeviceID != "sensor-0001" || st.Phase != "valid" {
			t.Errorf("edgeagent status --json over the API socket: %+v (%v), want sensor-0001 valid:\n%s", st, err, out)
		}
		if devs, _ := os.ReadFile("/proc/devices"); !strings.Contains(string(devs), " tpmrm\n") {
			t.Logf("NOT SHOWN: this kernel has no TPM driver (no tpmrm in /proc/devices), so DeviceAllow=char-tpmrm " +
				"matches no device; /dev/tpmrm0 here has /dev/null's numbers, and only the path, its group and the mount sandbox are shown")
		}
		j := c.journal(t, "-u", "edgeagent")
		if !strings.Contains(j, "tpm-probe: opened /dev/tpmrm0 read-write as edgeagent in groups edgeagent tss") {
			t.Errorf("the unit's sandbox did not let its user open /dev/tpmrm0:\n%s", j)
		}
	})

	t.Run("restart after a crash", func(t *testing.T) {
		for _, sig := range []string{"SEGV", "KILL"} {
			before := c.props(t, "MainPID", "NRestarts")
			c.run(t, "systemctl", "kill", "--kill-who=main", "-s", sig, "edgeagent")
			c.waitActive(t, "edgeagent", before["MainPID"])
			after := c.props(t, "NRestarts")
			if n0, n1 := atoi(before["NRestarts"]), atoi(after["NRestarts"]); n1 != n0+1 {
				t.Errorf("SIG%s: NRestarts %d -> %d, want one restart", sig, n0, n1)
			}
		}
	})

	t.Run("watchdog", func(t *testing.T) {
		before := c.props(t, "MainPID")
		c.run(t, "systemctl", "kill", "--kill-who=main", "-s", "STOP", "edgeagent")
		c.waitJournal(t, "", "edgeagent.service: Watchdog timeout")
		c.waitActive(t, "edgeagent", before["MainPID"])
	})

	t.Run("journal levels", func(t *testing.T) {
		all := c.journal(t, "-u", "edgeagent")
		warn := c.journal(t, "-u", "edgeagent", "-p", "warning")
		if !strings.Contains(all, "msg=\"edgeagent starting\"") {
			t.Fatalf("the journal lacks the agent's info line:\n%s", all)
		}
		t.Logf("journalctl -u edgeagent -p warning:\n%s", warn)
		if !strings.Contains(warn, "enrollment failed; retrying") {
			t.Errorf("journalctl -p warning lacks the agent's warning:\n%s", warn)
		}
		for _, line := range strings.Split(warn, "\n") {
			if strings.Contains(line, "level=INFO") || strings.Contains(line, "level=DEBUG") {
				t.Errorf("journalctl -p warning shows an info line: %s", line)
			}
		}
	})

	t.Run("kardianos", func(t *testing.T) {
		c.run(t, "systemctl", "stop", "edgeagent")
		c.run(t, "systemctl", "disable", "edgeagent")
		unit := "/etc/systemd/system/edgeagent.service"
		c.run(t, "edgeagent", "install", "--config", "/etc/edgeagent/edgeagent.yaml")
		if _, err := c.exec("test", "-f", unit); err != nil {
			t.Fatalf("install wrote no %s", unit)
		}
		if got := strings.TrimSpace(c.run(t, "systemctl", "is-enabled", "edgeagent")); got != "enabled" {
			t.Errorf("after install: %s, want enabled", got)
		}
		c.run(t, "edgeagent", "start")
		c.waitActive(t, "edgeagent", "")
		if p := c.props(t, "FragmentPath"); p["FragmentPath"] != unit {
			t.Errorf("started unit is %s, want the installed %s", p["FragmentPath"], unit)
		}
		before := c.props(t, "MainPID")
		c.run(t, "edgeagent", "restart")
		c.waitActive(t, "edgeagent", before["MainPID"])
		c.run(t, "edgeagent", "stop")
		if p := c.props(t, "ActiveState"); p["ActiveState"] != "inactive" {
			t.Errorf("after stop: %v", p)
		}
		c.run(t, "edgeagent", "uninstall")
		if _, err := c.exec("test", "-e", unit); err == nil {
			t.Errorf("uninstall left %s", unit)
		}
	})

	c.shutdown(t)
	if _, err := os.Stat(marker.Name()); err != nil {
		t.Errorf("this machine's /tmp lost %s while the container ran: %v", marker.Name(), err)
	}
}

// buildAgentDeb builds the amd64 edgeagent .deb as `make package` does.
func buildAgentDeb(t *testing.T, dir string) string {
	t.Helper()
	dist := filepath.Join(dir, "dist")
	cmd := exec.Command("go", "build", "-trimpath",
		"-ldflags", "-s -w -X github.com/edgeagent/edgeagent/internal/version.Version="+testVersion,
		"-o", filepath.Join(dist, "edgeagent-linux-amd64"), "../cmd/edgeagent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build edgeagent: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "pkg")
	cmd = exec.Command("bash", "../scripts/package.sh")
	cmd.Env = append(os.Environ(), "ARCHS=amd64", "FORMATS=deb", "PROGRAMS=edgeagent", "DIST="+dist, "OUT="+out, "PKG_VERSION=0.0.1",
		"PKG_ALLOW_VERSION_MISMATCH=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/package.sh: %v\n%s", err, b)
	}
	return filepath.Join(out, "edgeagent_0.0.1_amd64.deb")
}

// container is a booted systemd-nspawn container; commands run in it with
// nsenter into all namespaces of its PID 1.
type container struct {
	name   string
	leader int
	cmd    *exec.Cmd
	exited chan error
	log    *bytes.Buffer
	down   bool
}

func boot(t *testing.T, rootfs, pkgDir string) *container {
	t.Helper()
	c := &container{name: fmt.Sprintf("edgeagent-test-%d", os.Getpid()), exited: make(chan error, 1), log: &bytes.Buffer{}}
	// --register=no --keep-unit: no machined or system bus here (PID 1 of
	// this machine is not systemd).
	c.cmd = exec.Command("systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--volatile=overlay",
		"--directory="+rootfs, "--machine="+c.name, "--console=passive", "--bind-ro="+pkgDir+":/mnt/pkg", "--boot")
	c.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=")
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("systemd-nspawn: %v", err)
	}
	go func() { c.exited <- c.cmd.Wait() }()
	t.Cleanup(func() { c.shutdown(t) })
	// The container's PID 1 is nspawn's child.
	poll.UntilWhy(t, 30*time.Second, "the container's PID 1", func() (bool, string) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", c.cmd.Process.Pid, c.cmd.Process.Pid))
		if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
			c.leader = atoi(f[0])
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.leader))
		return c.leader > 0 && strings.TrimSpace(string(comm)) == "systemd", "nspawn output:\n" + c.log.String()
	})
	return c
}

func (c *container) shutdown(t *testing.T) {
	if c.down {
		return
	}
	c.down = true
	// SIGTERM: nspawn asks the container's systemd to halt.
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(60 * time.Second):
		t.Errorf("the container did not halt within 60s; killing it")
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

func (c *container) command(stdin string, name string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	_ = cancel // ends with the command's timeout
	full := append([]string{"-t", strconv.Itoa(c.leader), "-a", "-r", "-w", "--",
		"/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	cmd.Stdin = strings.NewReader(stdin)
	return cmd
}

// exec runs a command in the container and returns its combined output.
func (c *container) exec(name string, args ...string) (string, error) {
	out, err := c.command("", name, args...).CombinedOutput()
	return string(out), err
}

// run is exec that fails the test on a non-zero exit.
func (c *container) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := c.command("", name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("in the container: %s %s: %v\n%s%s\njournal:\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String(), c.journalTail())
	}
	return stdout.String()
}

func (c *container) write(t *testing.T, path, body string) {
	t.Helper()
	if out, err := c.command(body, "sh", "-c", `cat >"$1"`, "sh", path).CombinedOutput(); err != nil {
		t.Fatalf("in the container: write %s: %v\n%s", path, err, out)
	}
}

func (c *container) journalTail() string {
	out, _ := c.command("", "journalctl", "--no-pager", "-n", "60").CombinedOutput()
	return string(out)
}

// journal returns journalctl's output with the given filters, messages
// only.
func (c *container) journal(t *testing.T, args ...string) string {
	t.Helper()
	return c.run(t, "journalctl", append([]string{"--no-pager", "-o", "cat"}, args...)...)
}

// waitJournal polls the journal (of unit, or all of it) for a message.
func (c *container) waitJournal(t *testing.T, unit, want string) {
	t.Helper()
	args := []string{}
	if unit != "" {
		args = append(args, "-u", unit)
	}
	poll.UntilWhy(t, 60*time.Second, "journal message "+strconv.Quote(want), func() (bool, string) {
		j := c.journal(t, args...)
		return strings.Contains(j, want), c.journalTail()
	})
}

// props reads unit properties of edgeagent.service.
func (c *container) props(t *testing.T, names ...string) map[string]string {
	t.Helper()
	out := c.run(t, "systemctl", "show", "edgeagent", "-p", strings.Join(names, ","))
	p := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			p[k] = v
		}
	}
	return p
}

// waitActive waits until the unit is active/running with a main process
// other than oldPID.
func (c *container) waitActive(t *testing.T, unit, oldPID string) {
	t.Helper()
	poll.UntilWhy(t, 90*time.Second, unit+" active with a new main process", func() (bool, string) {
		p := c.props(t, "ActiveState", "SubState", "MainPID")
		ok := p["ActiveState"] == "active" && p["SubState"] == "running" && p["MainPID"] != "0" && p["MainPID"] != oldPID
		return ok, fmt.Sprintf("%v\n%s", p, c.journalTail())
	})
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func atoi(s string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(s))
	return n
}
