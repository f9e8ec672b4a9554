package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/testkit/postgres"
	"github.com/edgeagent/edgeagent/testkit/syncbuf"
)

// replicaSet is n edgeca servers on one PostgreSQL database, each with its
// own copy of the first one's CA directory (the documented way replicas
// get the issuing key).
type replicaSet struct {
	pg   *postgres.Server
	db   string
	srvs []*testServer
	logs []*syncbuf.Buffer
}

func copyDir(t testing.TB, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{RootCertFile, IntermediateCertFile, IntermediateKeyFile} {
		b, err := os.ReadFile(filepath.Join(from, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func startReplicas(t *testing.T, pg *postgres.Server, db string, n int, opts Options) *replicaSet {
	t.Helper()
	first := filepath.Join(t.TempDir(), "ca0")
	if err := Init(context.Background(), first, InitOptions{DB: db}); err != nil {
		t.Fatal(err)
	}
	rs := &replicaSet{pg: pg, db: db}
	for i := range n {
		dir := first
		if i > 0 {
			dir = filepath.Join(t.TempDir(), fmt.Sprintf("ca%d", i))
			copyDir(t, first, dir)
		}
		o := opts
		o.DB = db
		buf := &syncbuf.Buffer{}
		o.Logger = slog.New(slog.NewTextHandler(buf, nil))
		rs.srvs = append(rs.srvs, serveDir(t, dir, o))
		rs.logs = append(rs.logs, buf)
	}
	return rs
}

// try is one EST request that reports failure instead of ending the test
// (it runs on racing goroutines).
func (e *estClient) post(op string, csr []byte, user, pass string) (response, error) {
	req, err := http.NewRequest(http.MethodPost, e.url+est.Path("", op), bytes.NewReader(csr))
	if err != nil {
		return response{}, err
	}
	req.Header.Set("Content-Type", est.MediaPKCS10)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}, err
}

// postRetrying is post that honours 503 + Retry-After as the agent does:
// it waits the time the server asked for and sends the request again, up
// to maxShedRetries times. It returns the final answer and how many times
// the request was shed.
func (e *estClient) postRetrying(op string, csr []byte, user, pass string) (response, int, error) {
	const maxShedRetries = 30
	for shed := 0; ; shed++ {
		r, err := e.post(op, csr, user, pass)
		if err != nil || r.status != http.StatusServiceUnavailable {
			return r, shed, err
		}
		if shed == maxShedRetries {
			return r, shed, fmt.Errorf("still shed after %d retries: %s", shed, r.body)
		}
		secs, err := strconv.Atoi(r.header.Get("Retry-After"))
		if err != nil || secs < 1 {
			return r, shed, fmt.Errorf("503 without a usable Retry-After (%q): %s", r.header.Get("Retry-After"), r.body)
		}
		time.Sleep(time.Duration(secs) * time.Second) // the server's backoff, not a wait for a condition
	}
}

// TestReplicasShareOneDatabase runs two and three replicas on one
// PostgreSQL database: a single-use token raced by 64 clients spread over
// the replicas has exactly one winner, 100 times over; a token of 5 uses
// is used exactly 5 times; a device enrolled on one replica renews on
// another; a device revoked through one is refused at once by the others.
func TestReplicasShareOneDatabase(t *testing.T) {
	pg := postgres.Start(t)
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("replicas=%d", n), func(t *testing.T) {
			// Shedding on, with the default latency bound: 64 racers on a
			// shared 2-core machine exceed the gate, and a shed racer
			// comes back after the Retry-After it was given, as the
			// agent does. The spread is cut to nothing so that a shed
			// costs the test 1 s, not up to 31.
			rs := startReplicas(t, pg, pg.CreateDB(fmt.Sprintf("replicas%d", n)), n, Options{Shed: ShedOptions{RetrySpread: time.Nanosecond}})
			var sheds atomic.Int64
			t.Cleanup(func() {
				t.Logf("%d replicas: %d racing requests shed (503 + Retry-After) and retried", n, sheds.Load())
			})
			const racers = 64
			keys := make([]*ecdsa.PrivateKey, racers)
			for i := range keys {
				keys[i] = newKey(t)
			}
			clients := make([]*estClient, n)
			for i, s := range rs.srvs {
				clients[i] = s.client(nil)
			}
			race := func(t *testing.T, round, uses int) {
				tok := rs.srvs[round%n].token(t, TokenOptions{Uses: uses})
				bodies := make([][]byte, racers)
				for i := range bodies {
					bodies[i] = csrFor(t, keys[i], fmt.Sprintf("r%d-u%d-d%02d", round, uses, i))
				}
				results := make([]response, racers)
				errs := make([]error, racers)
				start := make(chan struct{})
				var wg sync.WaitGroup
				for i := range racers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						var shed int
						results[i], shed, errs[i] = clients[i%n].postRetrying(est.OpSimpleEnroll, bodies[i], tok.ID, tok.Secret)
						sheds.Add(int64(shed))
					}()
				}
				close(start)
				wg.Wait()
				won := 0
				for i, r := range results {
					switch {
					case errs[i] != nil:
						t.Fatalf("round %d racer %d: %v", round, i, errs[i])
					case r.status == http.StatusOK:
						won++
					case r.status == http.StatusUnauthorized && errCode(r.body) == est.CodeTokenInvalid:
					default:
						t.Fatalf("round %d racer %d: %d %s", round, i, r.status, r.body)
					}
				}
				rec, err := rs.srvs[(round+1)%n].ca.Store().Token(context.Background(), tok.ID)
				if err != nil {
					t.Fatal(err)
				}
				if won != uses || rec.Uses != uses {
					t.Fatalf("round %d: token of %d uses raced by %d clients over %d replicas: %d winners, %d uses recorded", round, uses, racers, n, won, rec.Uses)
				}
			}
			t.Run("single-use token, 100 rounds", func(t *testing.T) {
				rounds := 100
				if raceDetector {
					rounds = 10
				}
				for round := range rounds {
					race(t, round, 1)
				}
			})
			t.Run("5-use token", func(t *testing.T) {
				for round := range 3 {
					race(t, round, 5)
				}
			})
			t.Run("renew on another replica, revoke on a third", func(t *testing.T) {
				cert, key := rs.srvs[0].enrolled(t, "moving-1")
				r := rs.srvs[1].client(cert).reenroll(t, csrFor(t, key, "moving-1", DeviceURIPrefix+"moving-1"))
				if r.status != http.StatusOK {
					t.Fatalf("renewal on replica 1 of a device enrolled on replica 0: %d %s", r.status, r.body)
				}
				renewed := tlsCert(append(r.certs(t), rs.srvs[1].ca.Intermediate()), key)
				if err := rs.srvs[n-1].ca.RevokeDevice(context.Background(), "moving-1"); err != nil {
					t.Fatal(err)
				}
				for i, s := range rs.srvs {
					r := s.client(renewed).reenroll(t, csrFor(t, key, "moving-1", DeviceURIPrefix+"moving-1"))
					if r.status != http.StatusForbidden || errCode(r.body) != est.CodeDeviceRevoked {
						t.Errorf("replica %d right after the revocation on replica %d: %d %s", i, n-1, r.status, r.body)
					}
				}
			})
		})
	}
}

// TestReplicaWithAnotherIntermediate: a replica whose CA directory holds
// another intermediate than the database's replicas is refused at start.
func TestReplicaWithAnotherIntermediate(t *testing.T) {
	pg := postgres.Start(t)
	db := pg.CreateDB("mismatch")
	startReplicas(t, pg, db, 1, Options{})
	other := filepath.Join(t.TempDir(), "other")
	if err := Init(context.Background(), other, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), other, Options{DB: db, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "another intermediate") {
		t.Fatalf("Open with another intermediate on a shared database: %v", err)
	}
}

// TestDatabaseAway stops PostgreSQL under two replicas: enrollments get
// 503 with Retry-After and /readyz says not ready, each replica logs the
// outage once however many requests fail, and when the database returns
// both serve again without a restart. A crash (kill -9) of PostgreSQL
// loses no enrollment that was answered.
func TestDatabaseAway(t *testing.T) {
	pg := postgres.Start(t)
	rs := startReplicas(t, pg, pg.CreateDB("away"), 2, Options{})
	health := make([]string, len(rs.srvs))
	for i, s := range rs.srvs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.ca.ServeHealth(ctx, ln) }()
		t.Cleanup(func() { cancel(); <-done })
		health[i] = "http://" + ln.Addr().String()
	}
	get := func(url string) int {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	key := newKey(t)
	tok := rs.srvs[0].token(t, TokenOptions{Uses: 1000, Pattern: "away-*"})
	enroll := func(i int, id string) response {
		r, err := rs.srvs[i%2].client(nil).post(est.OpSimpleEnroll, csrFor(t, key, id), tok.ID, tok.Secret)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for i := range health {
		if c := get(health[i] + "/readyz"); c != http.StatusOK {
			t.Fatalf("replica %d /readyz with the database up: %d", i, c)
		}
	}

	pg.Stop()
	for i := range 10 {
		r := enroll(i, fmt.Sprintf("away-down-%d", i))
		if r.status != http.StatusServiceUnavailable || errCode(r.body) != est.CodeUnavailable || r.header.Get("Retry-After") == "" {
			t.Fatalf("enrollment %d with the database away: %d %q Retry-After %q", i, r.status, r.body, r.header.Get("Retry-After"))
		}
	}
	for i := range health {
		if c := get(health[i] + "/readyz"); c != http.StatusServiceUnavailable {
			t.Errorf("replica %d /readyz with the database away: %d", i, c)
		}
		if c := get(health[i] + "/healthz"); c != http.StatusOK {
			t.Errorf("replica %d /healthz with the database away: %d", i, c)
		}
	}
	pg.Restart()
	// The pools reconnect by themselves: poll until both enroll again.
	deadline := time.Now().Add(60 * time.Second)
	for i := range 2 {
		for n := 0; ; n++ {
			r := enroll(i, fmt.Sprintf("away-back-%d-%d", i, n))
			if r.status == http.StatusOK {
				break
			}
			if r.status != http.StatusServiceUnavailable || time.Now().After(deadline) {
				t.Fatalf("replica %d after the database returned: %d %s", i, r.status, r.body)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if c := get(health[i] + "/readyz"); c != http.StatusOK {
			t.Errorf("replica %d /readyz after the database returned: %d", i, c)
		}
	}
	for i, l := range rs.logs {
		s := l.String()
		if n := strings.Count(s, "store unreachable"); n != 1 {
			t.Errorf("replica %d logged the outage %d times, want once:\n%s", i, n, s)
		}
		if !strings.Contains(s, "store reachable again") {
			t.Errorf("replica %d did not log the recovery", i)
		}
	}

	// A crash of PostgreSQL in the middle of a stream of enrollments:
	// every one answered 200 is on record afterwards.
	type answered struct{ id, serial string }
	var mu sync.Mutex
	var ok []answered
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
				id := fmt.Sprintf("away-crash-%d-%d", w, n)
				r, err := rs.srvs[w%2].client(nil).post(est.OpSimpleEnroll, csrFor(t, key, id), tok.ID, tok.Secret)
				if err != nil || r.status != http.StatusOK {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				der, err := est.DecodeBase64([]byte(r.body))
				if err != nil {
					continue
				}
				certs, err := est.DecodeCertsOnly(der)
				if err != nil || len(certs) == 0 {
					continue
				}
				mu.Lock()
				ok = append(ok, answered{id, SerialHex(certs[0].SerialNumber)})
				mu.Unlock()
			}
		}()
	}
	waitCount := func(n int) {
		deadline := time.Now().Add(60 * time.Second)
		for {
			mu.Lock()
			got := len(ok)
			mu.Unlock()
			if got >= n || time.Now().After(deadline) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitCount(10)
	pg.Kill()
	mu.Lock()
	before := len(ok)
	mu.Unlock()
	pg.Restart()
	waitCount(before + 10)
	close(stop)
	wg.Wait()
	for _, a := range ok {
		d, err := rs.srvs[1].ca.Device(context.Background(), a.id)
		if err != nil || d.Serial != a.serial {
			t.Errorf("device %s answered with serial %s: on record %+v %v", a.id, a.serial, d, err)
		}
	}
	if len(ok) < before+10 {
		t.Errorf("only %d enrollments answered, %d before the crash: the replicas did not recover", len(ok), before)
	}
}
