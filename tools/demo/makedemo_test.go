package demo_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// demoSeconds is long enough for two renewals of a 1-minute certificate
// (each about 35 s after the last).
const demoSeconds = 90

// TestMakeDemoFromFreshClone is the README's first command as a newcomer
// runs it: a fresh clone of this commit, `make demo` in bounded mode. It
// checks the exit status, the demo's own checks (enrollment, a renewal,
// messages acknowledged by the broker and by the sink, nothing left
// listening) and that no process of the demo outlives it.
func TestMakeDemoFromFreshClone(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPED under -short: `make demo` from a fresh clone runs for " + strconv.Itoa(demoSeconds) + " s; run without -short")
	}
	for _, tool := range []string{"git", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed to clone the repository and run make demo: %v", tool, err)
		}
	}
	git := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	top := git(".", "rev-parse", "--show-toplevel")
	head := git(top, "rev-parse", "HEAD")
	if st := git(top, "status", "--porcelain", "--untracked-files=no"); st != "" {
		t.Logf("note: uncommitted changes are not part of the clone, which tests HEAD %s:\n%s", head, st)
	}
	clone := filepath.Join(t.TempDir(), "edgeagent")
	// --no-checkout then checkout HEAD: works from a worktree (whose HEAD
	// is not the repository's) as from a plain clone.
	git(top, "clone", "--quiet", "--no-checkout", top, clone)
	git(clone, "checkout", "--quiet", "--detach", head)

	ctx, cancel := context.WithTimeout(context.Background(), (demoSeconds+240)*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "demo")
	cmd.Dir = clone
	cmd.Env = append(os.Environ(), "DEMO_SECONDS="+strconv.Itoa(demoSeconds))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("make demo ran %s", time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("make demo: %v\n%s\n--- .demo/demo.log:\n%s", err, out.String(), readTail(filepath.Join(clone, ".demo", "demo.log")))
	}
	text := out.String()
	for _, want := range []string{
		"step: agent: enrolled, identity stored",
		"agent: certificate renewed",
		"PASS enrolled:",
		"PASS renewed:",
		"PASS mqtt broker acked:",
		"PASS https sink acked:",
		"PASS nothing left running:",
		"demo: all 5 checks passed",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(text, "FAIL") {
		t.Errorf("a check failed")
	}
	if t.Failed() {
		t.Logf("output:\n%s", text)
	}

	// Nothing of the demo may be left: not in make's process group, and
	// no process anywhere running from or in the clone.
	if err := syscall.Kill(-cmd.Process.Pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("processes of make demo's group are still alive (kill -0: %v)", err)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if left := processesUnder(clone); len(left) > 0 {
		t.Errorf("processes left behind in %s: %s", clone, strings.Join(left, "; "))
	}
}

// processesUnder lists processes whose executable, working directory or
// command line is inside dir.
func processesUnder(dir string) []string {
	ents, _ := os.ReadDir("/proc")
	var left []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		p := filepath.Join("/proc", e.Name())
		exe, _ := os.Readlink(filepath.Join(p, "exe"))
		cwd, _ := os.Readlink(filepath.Join(p, "cwd"))
		cmdline, _ := os.ReadFile(filepath.Join(p, "cmdline"))
		cl := strings.ReplaceAll(string(cmdline), "\x00", " ")
		if strings.HasPrefix(exe, dir) || strings.HasPrefix(cwd, dir) || strings.Contains(cl, dir) {
			left = append(left, e.Name()+" "+cl)
		}
	}
	return left
}

func readTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}
