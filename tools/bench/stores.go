package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/testkit/postgres"
)

// benchT lets the PostgreSQL test harness run in the benchmark program:
// a fatal error panics and storesSection turns it into its error.
type benchT struct{ cleanups []func() }

type benchFatal struct{ msg string }

func (b *benchT) Helper()                      {}
func (b *benchT) Fatal(args ...any)            { panic(benchFatal{fmt.Sprint(args...)}) }
func (b *benchT) Fatalf(f string, args ...any) { panic(benchFatal{fmt.Sprintf(f, args...)}) }
func (b *benchT) Errorf(f string, args ...any) { fmt.Fprintf(os.Stderr, "bench: "+f+"\n", args...) }
func (b *benchT) Cleanup(f func())             { b.cleanups = append(b.cleanups, f) }
func (b *benchT) done() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
}

// startPostgres starts a PostgreSQL for the benchmark, or says why not.
func startPostgres() (pg *postgres.Server, stop func(), err error) {
	bt := &benchT{}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(benchFatal)
			if !ok {
				panic(r)
			}
			bt.done()
			pg, stop, err = nil, nil, errors.New(f.msg)
		}
	}()
	pg = postgres.Start(bt)
	return pg, bt.done, nil
}

// replicaCAs serves n edgeca replicas of one CA on db ("" = SQLite in the
// CA directory, dbSyncNormal = the same with synchronous=NORMAL, the
// baseline of what FULL costs), with the connection limits a load
// generator on one address needs.
func replicaCAs(ctx context.Context, dir, db string, n int, shed ca.ShedOptions) (cas []*ca.CA, addrs []string, stop func(), err error) {
	syncNormal := db == dbSyncNormal
	if syncNormal {
		db = ""
	}
	caDir := filepath.Join(dir, "ca")
	if err := ca.Init(ctx, caDir, ca.InitOptions{DB: db}); err != nil {
		return nil, nil, nil, err
	}
	var stops []func()
	stop = func() {
		for _, s := range stops {
			s()
		}
	}
	for range n {
		opts := ca.Options{Logger: slog.New(slog.DiscardHandler), Hostnames: []string{"127.0.0.1"}, DB: db,
			MaxConnsPerPeer: 1 << 20, MaxConns: 1 << 20, Shed: shed}
		if syncNormal {
			st, err := store.OpenSyncNormal(ctx, filepath.Join(caDir, ca.DBFile))
			if err != nil {
				stop()
				return nil, nil, nil, err
			}
			opts.Store = st
		}
		c, err := ca.Open(ctx, caDir, opts)
		if err != nil {
			stop()
			return nil, nil, nil, err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			c.Close()
			stop()
			return nil, nil, nil, err
		}
		sctx, cancel := context.WithCancel(ctx)
		served := make(chan error, 1)
		go func() { served <- c.Serve(sctx, ln) }()
		stops = append(stops, func() { cancel(); <-served; c.Close() })
		cas = append(cas, c)
		addrs = append(addrs, ln.Addr().String())
	}
	return cas, addrs, stop, nil
}

// dbSyncNormal asks replicaCAs for SQLite with synchronous=NORMAL.
const dbSyncNormal = "sqlite-sync-normal"

// storesSection measures enrollments per store backend: SQLite, and
// PostgreSQL with one and with two replicas behind a round-robin in the
// load generator, with the CPU each costs (this process, and the
// PostgreSQL server's processes), beside the same run's signing ceiling.
func storesSection(ctx context.Context, w io.Writer) error {
	sigRate, err := ecdsaSignRate(time.Second)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "edgeca-bench-stores-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	pg, stopPG, pgErr := startPostgres()
	if pgErr != nil {
		fmt.Fprintf(w, "PostgreSQL rows SKIPPED: %v\n", pgErr)
	} else {
		defer stopPG()
	}
	const n, concurrency = 2000, 16
	type row struct {
		name     string
		db       string
		replicas int
	}
	// The NORMAL row is the baseline of what synchronous=FULL (shipped)
	// costs, measured in the same run; edgeca itself never runs NORMAL.
	rows := []row{{"SQLite", "", 1}, {"SQLite sync=NORMAL (baseline, not shipped)", dbSyncNormal, 1}}
	if pg != nil {
		rows = append(rows, row{"PostgreSQL", pg.CreateDB("bench1"), 1}, row{"PostgreSQL", pg.CreateDB("bench2"), 2})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "store\treplicas\tenrollments\tenroll/s\tp50 ms\tp99 ms\tvs sign/s\tCPU us/enroll edgeca+client\tCPU us/enroll PostgreSQL\t\n")
	var perEnroll, rates []float64
	for i, r := range rows {
		cas, addrs, stop, err := replicaCAs(ctx, filepath.Join(dir, strconv.Itoa(i)), r.db, r.replicas, ca.ShedOptions{Off: true})
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		jobs, err := prepareEnrollments(ctx, cas[0], "https://"+addrs[0], n+enrollWarmup)
		if err != nil {
			stop()
			return err
		}
		roots := x509.NewCertPool()
		roots.AddCert(cas[0].Root())
		var enrollers []*wireEnroller
		for _, a := range addrs {
			e, err := newWireEnroller(ctx, a, roots, false)
			if err != nil {
				stop()
				return err
			}
			enrollers = append(enrollers, e)
		}
		var next atomic.Uint64
		do := func(ctx context.Context, j enrollJob) error {
			return enrollers[next.Add(1)%uint64(len(enrollers))].enroll(ctx, j)
		}
		if _, err := runEnrollments(ctx, do, jobs[:enrollWarmup], 8); err != nil {
			stop()
			return fmt.Errorf("%s warm-up: %w", r.name, err)
		}
		var pg0 time.Duration
		if store.IsPostgresURL(r.db) {
			pg0 = pg.CPU()
		}
		res, err := runEnrollments(ctx, do, jobs[enrollWarmup:], concurrency)
		var pgCPU string = "-"
		var total = float64(res.cpu.Microseconds())
		if store.IsPostgresURL(r.db) && err == nil {
			d := float64((pg.CPU() - pg0).Microseconds()) / n
			pgCPU = fmt.Sprintf("%.0f", d)
			total += d
		}
		stop()
		if err != nil {
			return fmt.Errorf("%s, %d replicas: %w", r.name, r.replicas, err)
		}
		perEnroll = append(perEnroll, total)
		rates = append(rates, res.rate)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.2f\t%.2f\t%.1f%%\t%.0f\t%s\t\n", r.name, r.replicas, n, res.rate, ms(res.p50), ms(res.p99), 100*res.rate/sigRate, float64(res.cpu.Microseconds()), pgCPU)
	}
	fmt.Fprintf(tw, "ECDSA P-256 sign, 1 core\t\t\t%.0f\t\t\t100%%\t\t\t\n", sigRate)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rates) >= 2 && rates[1] > 0 {
		fmt.Fprintf(w, "synchronous=FULL costs, concurrency %d (group commit: one fsync per group): %.0f enroll/s with FULL (shipped) vs %.0f with NORMAL, ratio FULL/NORMAL %.2f\n", concurrency, rates[0], rates[1], rates[0]/rates[1])
	}
	// At concurrency 1 every enrollment is a group of its own, so each
	// pays a whole fsync: FULL's cost undiluted.
	var serial [2]result
	for i, db := range []string{"", dbSyncNormal} {
		cas, addrs, stop, err := replicaCAs(ctx, filepath.Join(dir, "serial"+strconv.Itoa(i)), db, 1, ca.ShedOptions{Off: true})
		if err != nil {
			return err
		}
		const n1 = 300
		jobs, err := prepareEnrollments(ctx, cas[0], "https://"+addrs[0], n1+enrollWarmup)
		if err != nil {
			stop()
			return err
		}
		roots := x509.NewCertPool()
		roots.AddCert(cas[0].Root())
		e, err := newWireEnroller(ctx, addrs[0], roots, false)
		if err != nil {
			stop()
			return err
		}
		if _, err := runEnrollments(ctx, e.enroll, jobs[:enrollWarmup], 1); err != nil {
			stop()
			return err
		}
		serial[i], err = runEnrollments(ctx, e.enroll, jobs[enrollWarmup:], 1)
		stop()
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "synchronous=FULL costs, concurrency 1 (an fsync per enrollment): %.0f enroll/s, p99 %.2f ms with FULL vs %.0f enroll/s, p99 %.2f ms with NORMAL, ratio FULL/NORMAL %.2f\n",
		serial[0].rate, ms(serial[0].p99), serial[1].rate, ms(serial[1].p99), serial[0].rate/serial[1].rate)
	fmt.Fprintln(w, "  (same run, same disk; NORMAL is only this baseline: it may lose answered enrollments on a power cut, and edgeca always runs FULL)")
	fmt.Fprintf(w, "rows: concurrency %d, lean client, X25519, one trial each; shedding off (capacity, not the latency bound); SQLite commits with synchronous=FULL (an fsync per group commit); PostgreSQL with fsync on, on the same disk\n", concurrency)
	fmt.Fprintf(w, "scaling: this machine has %d cores shared by the load generator, every replica and PostgreSQL, so a second replica cannot add cores here: its row shows the cost of the round-robin and of a shared database, not a speed-up.", runtime.NumCPU())
	if len(perEnroll) > 0 {
		fmt.Fprintf(w, " What the per-enrollment CPU predicts (client side included, so a ceiling for the server alone is higher): ")
		for i, r := range rows {
			if i < len(perEnroll) && perEnroll[i] > 0 {
				fmt.Fprintf(w, "%s×%d %.0f enroll/s per core; ", r.name, r.replicas, 1e6/perEnroll[i])
			}
		}
		fmt.Fprintf(w, "N cores give about N times that until the database's own commit rate (one fsync per commit group, shared by all replicas) is the limit, which one machine cannot show.")
	}
	fmt.Fprintln(w)
	return nil
}

// stormSection: a fleet of devices whose short certificates ran out during
// a CA outage all come back at once. Each device enrolls (the same work
// as a renewal for the CA: a handshake, a signature, a transaction) with
// a 30 s timeout; on a 503 it waits the Retry-After it was given, on any
// other failure a jittered, capped exponential backoff, as edgeagent
// does. With and without edgeca's load shedding.
func stormSection(ctx context.Context, w io.Writer) error {
	const fleet = 10000
	dir, err := os.MkdirTemp("", "edgeca-bench-storm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "shedding\tdevices\tall renewed s\tattempts\tshed (503)\ttimeouts/errors\tCA p50 ms\tCA p99 ms\t\n")
	for i, shed := range []bool{true, false} {
		cas, addrs, stop, err := replicaCAs(ctx, filepath.Join(dir, strconv.Itoa(i)), "", 1, ca.ShedOptions{Off: !shed})
		if err != nil {
			return err
		}
		jobs, err := prepareEnrollments(ctx, cas[0], "https://"+addrs[0], fleet)
		if err != nil {
			stop()
			return err
		}
		roots := x509.NewCertPool()
		roots.AddCert(cas[0].Root())
		e, err := newWireEnroller(ctx, addrs[0], roots, false)
		if err != nil {
			stop()
			return err
		}
		sctx, cancel := context.WithTimeout(ctx, stormLimit)
		r := runStorm(sctx, e, jobs)
		cancel()
		stop()
		label := "on"
		if !shed {
			label = "off"
		}
		all := fmt.Sprintf("%.1f", r.all.Seconds())
		if r.renewed < int64(len(jobs)) {
			all = fmt.Sprintf("NOT in %s: %d of %d", stormLimit, r.renewed, len(jobs))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%.0f\t%.0f\t\n", label, fleet, all, r.attempts, r.shed, r.failed, ms(r.p50), ms(r.p99))
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "storm: each run stops after %s; %d devices arrive within 1 s on one SQLite edgeca; CA p50/p99: the latency of the answers (200 and 503) the devices got; shedding on: --shed-max-wait %s, Retry-After 1 s + up to %s; off: every request waits for a worker (beyond 256 in flight it is still shed, as with shedding on); timeouts/errors: attempts that got no answer in 30 s or were refused at accept, retried with backoff 1 s doubling to 60 s, full jitter\n",
		stormLimit, fleet, ca.DefaultShedMaxWait, ca.DefaultShedRetrySpread)
	return nil
}

// stormLimit bounds one storm run: a CA in congestion collapse may not
// renew the fleet at all.
const stormLimit = 4 * time.Minute

type stormResult struct {
	all                             time.Duration
	attempts, shed, failed, renewed int64
	p50, p99                        time.Duration
}

func runStorm(ctx context.Context, e *wireEnroller, jobs []enrollJob) stormResult {
	var res stormResult
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Arrivals spread over the first second.
			time.Sleep(time.Duration(rand.Int64N(int64(time.Second))))
			backoff := time.Second
			for ctx.Err() == nil {
				atomic.AddInt64(&res.attempts, 1)
				t0 := time.Now()
				status, retry, err := e.try(ctx, j)
				d := time.Since(t0)
				if err == nil {
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
				switch {
				case err == nil && status == http.StatusOK:
					atomic.AddInt64(&res.renewed, 1)
					return
				case err == nil && status == http.StatusServiceUnavailable && retry > 0:
					atomic.AddInt64(&res.shed, 1)
					sleepCtx(ctx, retry)
				default:
					atomic.AddInt64(&res.failed, 1)
					sleepCtx(ctx, time.Duration(rand.Int64N(int64(backoff))))
					backoff = min(2*backoff, time.Minute)
				}
			}
		}()
	}
	wg.Wait()
	res.all = time.Since(start)
	slices.Sort(lat)
	if len(lat) > 0 {
		res.p50, res.p99 = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	}
	return res
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// try is one simpleenroll with a 30 s bound: the status and Retry-After,
// or the error of an exchange that got no answer.
func (e *wireEnroller) try(ctx context.Context, j enrollJob) (int, time.Duration, error) {
	raw, err := e.dialer.DialContext(ctx, "tcp", e.addr)
	if err != nil {
		return 0, 0, err
	}
	conn := tls.Client(raw, e.cfg)
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	req := make([]byte, 0, 512+len(j.csr))
	req = append(req, "POST "+est.Path("", est.OpSimpleEnroll)+" HTTP/1.1\r\nHost: "...)
	req = append(req, e.cfg.ServerName...)
	req = append(req, "\r\nAuthorization: Basic "...)
	req = base64.StdEncoding.AppendEncode(req, []byte(j.tok.ID+":"+j.tok.Secret))
	req = append(req, "\r\nContent-Type: "+est.MediaPKCS10+"\r\nConnection: close\r\nContent-Length: "...)
	req = strconv.AppendInt(req, int64(len(j.csr)), 10)
	req = append(req, "\r\n\r\n"...)
	req = append(req, j.csr...)
	if _, err := conn.Write(req); err != nil {
		return 0, 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, est.MaxBodyBytes))
	resp.Body.Close()
	var retry time.Duration
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		retry = time.Duration(s) * time.Second
	}
	return resp.StatusCode, retry, nil
}
