// Package postgres runs a real PostgreSQL server (the Debian package's
// binaries) for tests: a fresh cluster made by initdb in a temporary
// directory, listening on a loopback port, trusting local connections as
// the user edgeca. Tests can stop, restart and kill it.
//
// PostgreSQL refuses to run as root; when the test runs as root the server
// runs as the unprivileged user nobody (through runuser), in a directory it
// owns.
package postgres

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// User is the database superuser of the test cluster.
const User = "edgeca"

// T is what the harness needs of a test: testing.TB has it, and so can a
// benchmark program.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Cleanup(func())
}

// Server is a running test PostgreSQL.
type Server struct {
	t    T
	bin  string // directory of initdb, pg_ctl, postgres
	dir  string // cluster data directory (also the socket directory)
	Port int

	mu      sync.Mutex
	running bool
}

// BinDir returns the directory of the newest installed PostgreSQL's
// binaries, or fails the test with how to get them.
func BinDir(t T) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	t.Fatal("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); `make test` installs it with apt-get (scripts/test-deps.sh)")
	return ""
}

func version(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Start makes a cluster and starts it on a free loopback port; it is
// stopped and removed when the test ends.
func Start(t T) *Server {
	t.Helper()
	bin := BinDir(t)
	// Not t.TempDir: as root its parents are mode 0700 and nobody could
	// not reach the cluster.
	dir, err := os.MkdirTemp("", "edgeca-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, bin: bin, dir: dir}
	t.Cleanup(func() {
		s.Stop()
		os.RemoveAll(dir)
	})
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Fatalf("postgres harness: running as root needs the user nobody: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := s.run("initdb", "-D", data, "-A", "trust", "-U", User, "--no-sync", "-E", "UTF8"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	s.Restart()
	return s
}

// URL is the connection string of database db ("postgres" exists from the
// start; see CreateDB).
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", User, s.Port, db)
}

// CreateDB makes a new empty database and returns its URL.
func (s *Server) CreateDB(name string) string {
	s.t.Helper()
	if out, err := s.run("createdb", "-h", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-U", User, name); err != nil {
		s.t.Fatalf("createdb %s: %v\n%s", name, err, out)
	}
	return s.URL(name)
}

// Restart starts the server if it is not running, waiting until it accepts
// connections.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on", s.Port, s.dir)
	out, err := s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-o", opts, "-l", filepath.Join(s.dir, "log"), "-w", "-t", "60", "start")
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		s.t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	s.running = true
}

// Stop shuts the server down (fast: open sessions are ended).
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return
	}
	if out, err := s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "fast", "-w", "stop"); err != nil {
		s.t.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	s.running = false
}

// Kill ends the postmaster with SIGKILL, as a crash would: the next
// Restart runs crash recovery.
func (s *Server) Kill() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return
	}
	raw, err := os.ReadFile(filepath.Join(s.dir, "data", "postmaster.pid"))
	if err != nil {
		s.t.Fatalf("kill postgres: %v", err)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(bytes.SplitN(raw, []byte("\n"), 2)[0])))
	if err != nil {
		s.t.Fatalf("kill postgres: postmaster.pid: %v", err)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	// Its children notice the postmaster is gone and exit; wait until the
	// pid is free, then let pg_ctl start deal with the stale pid file.
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	s.running = false
}

// CPU is the CPU time (user and system) the server's processes have used
// so far, from /proc: the postmaster and its live backends. Backends that
// exited are counted in the postmaster's children time only once it
// reaped them, so measure with the connections still open.
func (s *Server) CPU() time.Duration {
	raw, err := os.ReadFile(filepath.Join(s.dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm := string(bytes.TrimSpace(bytes.SplitN(raw, []byte("\n"), 2)[0]))
	entries, _ := os.ReadDir("/proc")
	var ticks int64
	for _, e := range entries {
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the parenthesized command: state ppid ... utime(14) stime(15) cutime(16) cstime(17).
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 15 || (e.Name() != pm && f[1] != pm) {
			continue
		}
		for _, k := range []int{11, 12, 13, 14} {
			n, _ := strconv.ParseInt(f[k], 10, 64)
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// run runs one of the server's binaries, as nobody when we are root.
func (s *Server) run(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	path := filepath.Join(s.bin, name)
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "nobody", "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}
