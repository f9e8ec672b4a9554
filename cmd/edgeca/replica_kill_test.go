package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/testkit/postgres"
)

// The test binary runs as edgeca when this is set: replica processes that
// a test can kill -9.
const asMainEnv = "EDGECA_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

// replicaProc is `edgeca serve` in a process of its own.
type replicaProc struct {
	cmd  *exec.Cmd
	url  string
	logs *bytes.Buffer
	done chan struct{}
}

func startReplicaProc(t *testing.T, dir, db string) *replicaProc {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), "addr")
	cmd := exec.Command(os.Args[0], "serve", "--dir", dir, "--db", db, "--listen", "127.0.0.1:0", "--addr-file", addrFile, "--health-listen", "off")
	cmd.Env = append(os.Environ(), asMainEnv+"=1")
	p := &replicaProc{cmd: cmd, logs: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = &lockedWriter{w: p.logs}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-p.done })
	p.url = "https://" + waitFile(t, addrFile)
	return p
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// enrollOnce is one enrollment that reports instead of failing the test
// (it runs on many goroutines): the status and the issued serial.
func enrollOnce(url string, tok token.Token, roots *x509.CertPool, id string) (int, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return 0, "", err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
	if err != nil {
		return 0, "", err
	}
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}, DisableKeepAlives: true}}
	req, err := http.NewRequest(http.MethodPost, url+est.Path("", est.OpSimpleEnroll), bytes.NewReader(est.EncodeBase64(der)))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", est.MediaPKCS10)
	req.SetBasicAuth(tok.ID, tok.Secret)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp.StatusCode, "", err
	}
	raw, err := est.DecodeBase64(b)
	if err != nil {
		return 0, "", err
	}
	certs, err := est.DecodeCertsOnly(raw)
	if err != nil || len(certs) == 0 {
		return 0, "", fmt.Errorf("decode answer: %v", err)
	}
	return resp.StatusCode, ca.SerialHex(certs[0].SerialNumber), nil
}

// TestReplicaKilledMidEnrollment kills one of two replica processes with
// SIGKILL while enrollments stream through both: every enrollment answered
// 200 is on record with the serial it was answered with, the token's use
// count equals the devices it enrolled (no use spent without its device,
// none recorded without its use), the other replica serves on, and a new
// process on the dead one's directory serves at once.
func TestReplicaKilledMidEnrollment(t *testing.T) {
	pg := postgres.Start(t)
	db := pg.CreateDB("kill")
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir, "--db", db)
	a := startReplicaProc(t, dir, db)
	b := startReplicaProc(t, dir, db)
	st, err := store.OpenPostgres(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	code, out, errOut := edgeca(t, "token", "create", "--dir", dir, "--db", db, "--pattern", "k-*", "--uses", "10000", "--url", a.url)
	if code != 0 {
		t.Fatalf("token create: %s", errOut)
	}
	tok, err := token.Parse(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(filepath.Join(dir, ca.RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)

	var mu sync.Mutex
	answered := map[string]string{} // device id -> serial
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				url := a.url
				if w%2 == 1 {
					url = b.url
				}
				id := fmt.Sprintf("k-%d-%d", w, n)
				if code, serial, err := enrollOnce(url, tok, roots, id); err == nil && code == http.StatusOK {
					mu.Lock()
					answered[id] = serial
					mu.Unlock()
				}
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(answered) }
	waitFor := func(n int) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for count() < n {
			if time.Now().After(deadline) {
				t.Fatalf("only %d enrollments answered, waiting for %d", count(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor(20)
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.done
	waitFor(count() + 20) // replica b serves on
	a2 := startReplicaProc(t, dir, db)
	if code, _, err := enrollOnce(a2.url, tok, roots, "k-after-restart"); err != nil || code != http.StatusOK {
		t.Fatalf("a new replica process after the kill: %d %v\n%s", code, err, a2.logs)
	}
	close(stop)
	wg.Wait()

	ctx := context.Background()
	for id, serial := range answered {
		d, err := st.Device(ctx, id)
		if err != nil || d.Serial != serial {
			t.Errorf("device %s answered with serial %s: on record %+v %v", id, serial, d, err)
		}
	}
	devs, err := st.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := st.Token(ctx, tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Uses != len(devs) {
		t.Errorf("token counts %d uses for %d devices enrolled", rec.Uses, len(devs))
	}
	if len(devs) < len(answered)+1 {
		t.Errorf("%d devices on record for %d answered enrollments", len(devs), len(answered)+1)
	}
}
