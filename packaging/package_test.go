package packaging

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/edgeagent/edgeagent/testkit/hosttest"
)

const testVersion = "pkgtest"

// TestPackages builds the amd64 packages with scripts/package.sh (the
// recipe of `make package`), reads back the .rpm and .apk (metadata,
// %config(noreplace), modes, unit, scripts), checks the .deb with lintian
// (no errors), and installs the .deb on this machine with dpkg:
// files, modes, owners, the conffile, the state dir, the service user in
// group tss, the unit (systemd-analyze verify), `edgeagent version`; then
// an upgrade keeps a locally edited config and the state; remove keeps
// config, state and user; purge leaves nothing. The same for edgeca,
// except that a purge keeps a CA (its keys, registry and user).
func TestPackages(t *testing.T) {
	hosttest.RequireRoot(t, "it installs the .deb packages with dpkg and creates system users")
	if runtime.GOARCH != "amd64" {
		t.Skipf("NOT RUN: the test installs the amd64 .deb and this machine is %s", runtime.GOARCH)
	}
	for _, tool := range []string{"dpkg", "lintian", "systemd-analyze", "systemd-sysusers", "rpm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run scripts/test-deps.sh", tool)
		}
	}
	hosttest.Lock(t)
	for _, name := range []string{"edgeagent", "edgeca"} {
		if exec.Command("dpkg-query", "-W", name).Run() == nil {
			t.Fatalf("package %s is installed on this machine; the test will not touch it", name)
		}
		if _, err := user.Lookup(name); err == nil {
			t.Fatalf("user %s exists on this machine; the test must see the package create it", name)
		}
	}
	t.Cleanup(func() { _ = exec.Command("dpkg", "--purge", "edgeagent", "edgeca").Run() })

	dir := t.TempDir()
	dist := filepath.Join(dir, "dist")
	for _, prog := range []string{"edgeagent", "edgeca"} {
		// As `make cross` builds them, with a version to recognise.
		cmd := exec.Command("go", "build", "-trimpath",
			"-ldflags", "-s -w -X github.com/edgeagent/edgeagent/internal/version.Version="+testVersion,
			"-o", filepath.Join(dist, prog+"-linux-amd64"), "../cmd/"+prog)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", prog, err, out)
		}
	}
	pkg := func(version, formats string) string {
		out := filepath.Join(dir, version)
		cmd := exec.Command("bash", "../scripts/package.sh")
		cmd.Env = append(os.Environ(), "ARCHS=amd64", "FORMATS="+formats, "DIST="+dist, "OUT="+out, "PKG_VERSION="+version,
			// One binary packaged as two versions, for the upgrade test.
			"PKG_ALLOW_VERSION_MISMATCH=1")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("scripts/package.sh: %v\n%s", err, b)
		}
		return out
	}
	v1, v2 := pkg("0.0.1", "deb rpm apk"), pkg("0.0.2", "deb")
	agentDeb := filepath.Join(v1, "edgeagent_0.0.1_amd64.deb")
	caDeb := filepath.Join(v1, "edgeca_0.0.1_amd64.deb")

	t.Run("lintian", func(t *testing.T) {
		out, err := exec.Command("lintian", "--fail-on", "error", agentDeb, caDeb).CombinedOutput()
		t.Logf("lintian:\n%s", out)
		if err != nil || strings.Contains(string(out), "\nE: ") || strings.HasPrefix(string(out), "E: ") {
			t.Errorf("lintian reports errors (%v)", err)
		}
	})

	// This machine cannot install them; their metadata, files and scripts
	// are read back: rpm with rpm(8), apk (gzipped tar streams) with Go.
	t.Run("rpm and apk", func(t *testing.T) {
		for _, prog := range []string{"edgeagent", "edgeca"} {
			conf := map[string]string{"edgeagent": "/etc/edgeagent/edgeagent.yaml", "edgeca": "/etc/edgeca/edgeca.env"}[prog]
			rpmFile := filepath.Join(v1, prog+"_0.0.1_amd64.rpm")
			out, err := exec.Command("rpm", "-qp", "--qf", "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}\n[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEUSERNAME} %{FILENAMES}\n]", rpmFile).CombinedOutput()
			if err != nil {
				t.Fatalf("rpm -qp %s: %v\n%s", rpmFile, err, out)
			}
			for _, want := range []string{
				prog + " 0.0.1-1 x86_64\n",
				"cn -rw-r--r-- root " + conf + "\n", // %config(noreplace)
				" -rwxr-xr-x root /usr/bin/" + prog + "\n",
				" -rw-r--r-- root /usr/lib/systemd/system/" + prog + ".service\n",
				" -rw-r--r-- root /usr/lib/sysusers.d/" + prog + ".conf\n",
			} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s lacks %q:\n%s", rpmFile, want, out)
				}
			}
			scripts, _ := exec.Command("rpm", "-qp", "--scripts", rpmFile).CombinedOutput()
			for _, s := range []struct{ tag, file string }{{"postinstall", "postinstall"}, {"preuninstall", "preremove"}, {"postuninstall", "postremove"}} {
				body, _ := os.ReadFile(filepath.Join("scripts", prog, s.file+".sh"))
				if !strings.Contains(string(scripts), s.tag+" scriptlet") || !strings.Contains(string(scripts), string(body[len("#!/bin/sh\n"):])) {
					t.Errorf("%s: %s scriptlet is not scripts/%s/%s.sh", rpmFile, s.tag, prog, s.file)
				}
			}

			apk := readAPK(t, filepath.Join(v1, prog+"_0.0.1_amd64.apk"))
			info := string(apk[".PKGINFO"].body)
			for _, want := range []string{"pkgname = " + prog + "\n", "pkgver = 0.0.1-r1\n", "arch = x86_64\n"} {
				if !strings.Contains(info, want) {
					t.Errorf("%s.apk .PKGINFO lacks %q:\n%s", prog, want, info)
				}
			}
			unit := map[string]string{"edgeagent": AgentUnit(), "edgeca": CAUnit()}[prog]
			for name, want := range map[string]struct {
				mode fs.FileMode
				body string
			}{
				"usr/bin/" + prog:                             {0o755, ""},
				strings.TrimPrefix(conf, "/"):                 {0o644, ""},
				"usr/lib/systemd/system/" + prog + ".service": {0o644, unit},
				".post-install":                               {0o755, readFile(t, "scripts/"+prog+"/postinstall.sh")},
				".pre-deinstall":                              {0o755, readFile(t, "scripts/"+prog+"/preremove.sh")},
				".post-deinstall":                             {0o755, readFile(t, "scripts/"+prog+"/postremove.sh")},
			} {
				f, ok := apk[name]
				switch {
				case !ok:
					t.Errorf("%s.apk lacks %s", prog, name)
				case f.mode != want.mode:
					t.Errorf("%s.apk: %s mode %v, want %v", prog, name, f.mode, want.mode)
				case want.body != "" && string(f.body) != want.body:
					t.Errorf("%s.apk: %s differs from its source", prog, name)
				}
			}
		}
	})

	t.Run("edgeagent", func(t *testing.T) {
		dpkg(t, "-i", agentDeb)
		checkFile(t, "/usr/bin/edgeagent", 0o755, "root", nil)
		ref, _ := os.ReadFile("edgeagent.yaml")
		checkFile(t, "/etc/edgeagent/edgeagent.yaml", 0o644, "root", ref)
		checkFile(t, "/lib/systemd/system/edgeagent.service", 0o644, "root", []byte(AgentUnit()))
		checkFile(t, "/usr/lib/sysusers.d/edgeagent.conf", 0o644, "root", []byte(AgentSysusers()))
		checkDir(t, "/var/lib/edgeagent", 0o700, "edgeagent", "edgeagent")
		checkConffile(t, "edgeagent", "/etc/edgeagent/edgeagent.yaml")
		checkSystemUser(t, "edgeagent", "tss")
		if err := hosttest.VerifyUnit("/lib/systemd/system/edgeagent.service"); err != nil {
			t.Error(err)
		}
		out, err := exec.Command("edgeagent", "version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "edgeagent "+testVersion+" ") {
			t.Errorf("edgeagent version: %v: %q", err, out)
		}

		// Upgrade: a locally edited config and the state survive.
		edited := append(ref, []byte("# edited on this device\n")...)
		if err := os.WriteFile("/etc/edgeagent/edgeagent.yaml", edited, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("/var/lib/edgeagent/identity.json", []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
		dpkg(t, "-i", filepath.Join(v2, "edgeagent_0.0.2_amd64.deb"))
		if v, _ := exec.Command("dpkg-query", "-W", "-f=${Version}", "edgeagent").Output(); string(v) != "0.0.2-1" {
			t.Errorf("after upgrade dpkg has edgeagent %q, want 0.0.2-1", v)
		}
		if b, _ := os.ReadFile("/etc/edgeagent/edgeagent.yaml"); string(b) != string(edited) {
			t.Error("upgrade replaced the edited /etc/edgeagent/edgeagent.yaml")
		}
		checkFile(t, "/var/lib/edgeagent/identity.json", 0o600, "root", []byte("{}"))
		checkDir(t, "/var/lib/edgeagent", 0o700, "edgeagent", "edgeagent")

		// Remove keeps config, state and user.
		dpkg(t, "-r", "edgeagent")
		gone(t, "/usr/bin/edgeagent", "/lib/systemd/system/edgeagent.service", "/usr/lib/sysusers.d/edgeagent.conf")
		for _, p := range []string{"/etc/edgeagent/edgeagent.yaml", "/var/lib/edgeagent/identity.json"} {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("remove (not purge) deleted %s: %v", p, err)
			}
		}
		if _, err := user.Lookup("edgeagent"); err != nil {
			t.Errorf("remove (not purge) deleted the user: %v", err)
		}

		dpkg(t, "-P", "edgeagent")
		checkPurged(t, "edgeagent")
	})

	t.Run("edgeca", func(t *testing.T) {
		dpkg(t, "-i", caDeb)
		checkFile(t, "/usr/bin/edgeca", 0o755, "root", nil)
		env, _ := os.ReadFile("edgeca.env")
		checkFile(t, "/etc/edgeca/edgeca.env", 0o644, "root", env)
		checkFile(t, "/lib/systemd/system/edgeca.service", 0o644, "root", []byte(CAUnit()))
		checkDir(t, "/var/lib/edgeca", 0o700, "edgeca", "edgeca")
		checkConffile(t, "edgeca", "/etc/edgeca/edgeca.env")
		checkSystemUser(t, "edgeca", "")
		if err := hosttest.VerifyUnit("/lib/systemd/system/edgeca.service"); err != nil {
			t.Error(err)
		}
		out, err := exec.Command("edgeca", "version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "edgeca "+testVersion+" ") {
			t.Errorf("edgeca version: %v: %q", err, out)
		}
		// The CA made as the unit's user, as the postinstall says.
		if out, err := exec.Command("runuser", "-u", "edgeca", "--", "edgeca", "init", "--dir", "/var/lib/edgeca", "--url", "https://ca.test:8443").CombinedOutput(); err != nil {
			t.Errorf("edgeca init as user edgeca: %v\n%s", err, out)
		}
		checkFile(t, "/var/lib/edgeca/root.pem", 0, "edgeca", nil)
		// A purge never deletes a CA: its keys and registry stay, and so
		// does the user owning them.
		dpkg(t, "-P", "edgeca")
		checkFile(t, "/var/lib/edgeca/root.pem", 0, "edgeca", nil)
		if out, err := exec.Command("userdel", "edgeca").CombinedOutput(); err != nil {
			t.Errorf("userdel edgeca after purge: %v\n%s", err, out)
		}
		_ = exec.Command("groupdel", "edgeca").Run()
		if err := os.RemoveAll("/var/lib/edgeca"); err != nil {
			t.Error(err)
		}
		checkPurged(t, "edgeca")
		// Without a CA in it, purge leaves nothing.
		dpkg(t, "-i", caDeb)
		dpkg(t, "-P", "edgeca")
		checkPurged(t, "edgeca")
	})
}

func dpkg(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("dpkg", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("dpkg %s:\n%s", strings.Join(args, " "), out)
}

// checkFile checks a regular file's mode (0: any), owner and, unless want
// is nil, content.
func checkFile(t *testing.T, path string, mode fs.FileMode, owner string, want []byte) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	if !st.Mode().IsRegular() {
		t.Errorf("%s is not a regular file", path)
	}
	if mode != 0 && st.Mode().Perm() != mode {
		t.Errorf("%s mode %v, want %v", path, st.Mode().Perm(), mode)
	}
	if o, _ := ownerOf(st); o[0] != owner {
		t.Errorf("%s owned by %s, want %s", path, o[0], owner)
	}
	if want != nil {
		if got, _ := os.ReadFile(path); string(got) != string(want) {
			t.Errorf("%s differs from the packaged source:\n%s", path, got)
		}
	}
}

func checkDir(t *testing.T, path string, mode fs.FileMode, owner, group string) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	if !st.IsDir() || st.Mode().Perm() != mode {
		t.Errorf("%s: %v, want a directory with mode %v", path, st.Mode(), mode)
	}
	if o, _ := ownerOf(st); o != [2]string{owner, group} {
		t.Errorf("%s owned by %s:%s, want %s:%s", path, o[0], o[1], owner, group)
	}
}

func ownerOf(st fs.FileInfo) ([2]string, error) {
	sys := st.Sys().(*syscall.Stat_t)
	u, err := user.LookupId(strconv.Itoa(int(sys.Uid)))
	if err != nil {
		return [2]string{"uid " + strconv.Itoa(int(sys.Uid))}, err
	}
	g, err := user.LookupGroupId(strconv.Itoa(int(sys.Gid)))
	if err != nil {
		return [2]string{u.Username, "gid " + strconv.Itoa(int(sys.Gid))}, err
	}
	return [2]string{u.Username, g.Name}, nil
}

func checkConffile(t *testing.T, pkg, path string) {
	t.Helper()
	out, err := exec.Command("dpkg-query", "-W", "-f=${Conffiles}", pkg).Output()
	if err != nil || !strings.Contains(string(out), " "+path+" ") {
		t.Errorf("%s is not a conffile of %s (%v): %q", path, pkg, err, out)
	}
}

// checkSystemUser checks a system account with no login shell, in group
// extra when given.
func checkSystemUser(t *testing.T, name, extra string) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Errorf("user %s: %v", name, err)
		return
	}
	if uid, _ := strconv.Atoi(u.Uid); uid == 0 || uid >= 1000 {
		t.Errorf("user %s has uid %s, want a system uid (1-999)", name, u.Uid)
	}
	if g, err := user.LookupGroupId(u.Gid); err != nil || g.Name != name {
		t.Errorf("user %s's primary group is %v (%v), want %s", name, g, err, name)
	}
	out, _ := exec.Command("getent", "passwd", name).Output()
	if f := strings.Split(strings.TrimSpace(string(out)), ":"); len(f) != 7 || !strings.HasSuffix(f[6], "nologin") || f[5] != "/var/lib/"+name {
		t.Errorf("passwd entry %q: want home /var/lib/%s and a nologin shell", out, name)
	}
	if extra == "" {
		return
	}
	g, err := user.LookupGroup(extra)
	if err != nil {
		t.Errorf("group %s: %v", extra, err)
		return
	}
	if ids, _ := u.GroupIds(); !slices.Contains(ids, g.Gid) {
		t.Errorf("user %s is in groups %v, not in %s", name, ids, extra)
	}
}

func gone(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still exists (%v)", p, err)
		}
	}
}

// checkPurged requires nothing of the package left: not in dpkg's
// database, no file named after it where packages put files, no user, no
// group.
func checkPurged(t *testing.T, name string) {
	t.Helper()
	if out, err := exec.Command("dpkg-query", "-W", "-f=${db:Status-Abbrev}", name).CombinedOutput(); err == nil {
		t.Errorf("dpkg still knows %s: %q", name, out)
	}
	for _, root := range []string{"/etc", "/lib/systemd", "/usr/bin", "/usr/lib", "/usr/share/doc", "/usr/share/lintian", "/var/lib", "/run"} {
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && strings.Contains(d.Name(), name) && p != hosttest.LockPath {
				t.Errorf("left after purge: %s", p)
			}
			return nil
		})
	}
	if _, err := user.Lookup(name); err == nil {
		t.Errorf("user %s left after purge", name)
	}
	if _, err := user.LookupGroup(name); err == nil {
		t.Errorf("group %s left after purge", name)
	}
}

type apkFile struct {
	mode fs.FileMode
	body []byte
}

// readAPK reads an .apk: gzipped tar streams (control, then data) that
// read as one tar.
func readAPK(t *testing.T, path string) map[string]apkFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	files := map[string]apkFile{}
	tr := tar.NewReader(z)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		b, err := io.ReadAll(io.LimitReader(tr, 1<<20))
		if err != nil {
			t.Fatalf("%s: %s: %v", path, h.Name, err)
		}
		files[h.Name] = apkFile{h.FileInfo().Mode().Perm(), b}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
