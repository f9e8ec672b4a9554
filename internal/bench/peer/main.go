// Command peer is the comparison row of `make bench`: edgeca beside
// GlobalSign's EST server (github.com/globalsign/est), an EST
// implementation this project did not write, both served in this process
// on 127.0.0.1 and driven by the same load generators in the same run, and
// the ratio edgeca / GlobalSign.
//
// It is a module of its own because GlobalSign's server needs go-tpm's v0.3
// API (see go.mod).
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgeagent/edgeagent/ca"
)

func main() {
	duration := flag.Duration("duration", 2*time.Second, "how long each trial sends enrollments")
	trials := flag.Int("trials", 3, "trials per row (the row shows the one with the median rate)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	fmt.Printf("edgeca vs GlobalSign EST: %s/%s, GOMAXPROCS=%d, %s\n", runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.Version())
	if err := run(ctx, os.Stdout, *duration, *trials); err != nil {
		fmt.Fprintln(os.Stderr, "peer bench:", err)
		os.Exit(1)
	}
}

// A row is one concurrency with one client; both servers run it, trials
// interleaved so that a neighbour's burst of load hits both alike.
var (
	concurrencies = []int{1, 16}
	clientKinds   = []string{"device-like", "lean"}
)

// target is one server with its two clients and its prepared enrollments.
type target struct {
	s       *server
	clients map[string]enrollFunc
	closers []func()
	jobs    []job
	// rate is the last measured rate per row, to prepare enough
	// enrollments for the next trial.
	rate map[string]float64
}

func run(ctx context.Context, w io.Writer, d time.Duration, trials int) error {
	dir, err := os.MkdirTemp("", "edgeca-peer-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ec, err := startEdgeCA(ctx, dir)
	if err != nil {
		return fmt.Errorf("start edgeca: %w", err)
	}
	defer ec.stop()
	gs, err := startGlobalSign(ca.DefaultCertTTL)
	if err != nil {
		return fmt.Errorf("start GlobalSign EST: %w", err)
	}
	defer gs.stop()

	var targets []*target
	for _, s := range []*server{ec, gs} {
		t, err := newTarget(ctx, s)
		if err != nil {
			return err
		}
		defer t.close()
		targets = append(targets, t)
	}

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "concurrency\tclient\tserver\tenrollments\tenroll/s\tp50 ms\tp99 ms\tCPU us/enroll\ttrials enroll/s\t\n")
	ranOut := false
	for _, conc := range concurrencies {
		for _, kind := range clientKinds {
			row := fmt.Sprintf("%d/%s", conc, kind)
			got := make([][]result, len(targets))
			for range trials {
				for i, t := range targets {
					r, err := t.trial(ctx, row, kind, conc, d)
					if err != nil {
						return fmt.Errorf("%s, concurrency %d, %s client: %w", t.s.name, conc, kind, err)
					}
					ranOut = ranOut || r.ranOut
					got[i] = append(got[i], r)
				}
			}
			med := make([]result, len(targets))
			for i, rs := range got {
				var rates []string
				for _, r := range rs {
					rates = append(rates, fmt.Sprintf("%.0f", r.rate))
				}
				slices.SortFunc(rs, func(a, b result) int { return cmp.Compare(a.rate, b.rate) })
				med[i] = rs[len(rs)/2]
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%.0f\t%.2f\t%.2f\t%.0f\t%s\t\n", conc, kind, targets[i].s.name, med[i].n, med[i].rate,
					ms(med[i].p50), ms(med[i].p99), float64(med[i].cpu.Microseconds()), strings.Join(rates, " "))
			}
			e, g := med[0], med[1]
			fmt.Fprintf(tw, "%d\t%s\tedgeca / GlobalSign\t\t%.2fx\t%.2fx\t%.2fx\t%.2fx\t\t\n", conc, kind,
				e.rate/g.rate, ms(e.p50)/ms(g.p50), ms(e.p99)/ms(g.p99), float64(e.cpu)/float64(g.cpu))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if ranOut {
		fmt.Fprintln(w, "note: a trial ran out of prepared enrollments before its duration; its rate is still enrollments / elapsed")
	}
	fmt.Fprintf(w, "rows: median of %d trials of %s; every enrollment counted was checked afterwards: a certificate for its CSR's key, signed by the server's issuing CA, for TLS clients\n", trials, d)
	fmt.Fprintln(w, "both: new TCP + TLS 1.3 handshake per enrollment (X25519, ECDSA P-256 server key, chain leaf + issuing CA, no session resumption), HTTP Basic, P-256 CSR parsed and its signature checked, a P-256 certificate signed and returned as certs-only PKCS#7; same clients, same process, CPU us/enroll: server and load generator together")
	fmt.Fprintln(w, "what differs: edgeca checks a single-use enrollment token (hashed, in SQLite), records the device, the issuance and an audit record in one transaction and fsyncs it before answering, and bounds connections per peer; GlobalSign's server checks one shared user and password and persists nothing; its CA here is a plain crypto/x509 signer written for this bench (the package ships none)")
	return nil
}

func newTarget(ctx context.Context, s *server) (*target, error) {
	t := &target{s: s, clients: map[string]enrollFunc{}, rate: map[string]float64{}}
	dev, closeDev := deviceClient(s)
	t.clients["device-like"], t.closers = dev, append(t.closers, closeDev)
	lean, err := newWireEnroller(ctx, s)
	if err != nil {
		t.close()
		return nil, err
	}
	t.clients["lean"] = lean.enroll
	// Warm up each client and the server before timing; the warm-up rate
	// sizes the first trials' prepared enrollments.
	const warmup = 100
	for _, kind := range clientKinds {
		jobs, err := s.prepare(ctx, warmup)
		if err != nil {
			t.close()
			return nil, err
		}
		r, err := runFor(ctx, t.clients[kind], jobs, 8, time.Minute, s.issuer)
		if err != nil {
			t.close()
			return nil, fmt.Errorf("%s: warm-up with the %s client: %w", s.name, kind, err)
		}
		for _, conc := range concurrencies {
			t.rate[fmt.Sprintf("%d/%s", conc, kind)] = r.rate
		}
	}
	return t, nil
}

func (t *target) close() {
	for _, c := range t.closers {
		c()
	}
}

// trial runs one trial of a row, first preparing (untimed) enough
// enrollments for half again the last rate measured.
func (t *target) trial(ctx context.Context, row, kind string, conc int, d time.Duration) (result, error) {
	need := int(1.5*t.rate[row]*d.Seconds()) + 200
	if len(t.jobs) < need {
		more, err := t.s.prepare(ctx, need-len(t.jobs))
		if err != nil {
			return result{}, err
		}
		t.jobs = append(t.jobs, more...)
	}
	r, err := runFor(ctx, t.clients[kind], t.jobs, conc, d, t.s.issuer)
	if err != nil {
		return result{}, err
	}
	t.rate[row] = r.rate
	if t.s.consumes {
		t.jobs = t.jobs[r.n:]
	}
	return r, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
