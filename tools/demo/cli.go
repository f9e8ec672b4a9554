package demo

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"
)

// Main is the edgedemo command: flags and DEMO_SECONDS in, exit status out
// (0 ok, 1 a failed check or error, 2 bad usage).
func Main(ctx context.Context, args []string, stdin, stdout *os.File, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("edgedemo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", ".demo", "work directory (CA, device state, log, API socket); cleaned at start")
	seconds := fs.Int("seconds", 0, "stop after this many seconds and check the run (default $DEMO_SECONDS, else run until Ctrl-C)")
	ttl := fs.Duration("cert-ttl", time.Minute, "device certificate lifetime (at least 1m)")
	interval := fs.Duration("interval", time.Second, "telemetry interval")
	plain := fs.Bool("plain", false, "log lines instead of the full-screen view, even on a terminal")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if v := getenv("DEMO_SECONDS"); v != "" && !isFlagSet(fs, "seconds") {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			fmt.Fprintf(stderr, "edgedemo: DEMO_SECONDS=%q: give a whole number of seconds, e.g. DEMO_SECONDS=90\n", v)
			return 2
		}
		*seconds = n
	}
	if *seconds < 0 {
		fmt.Fprintln(stderr, "edgedemo: --seconds must be 0 (run until Ctrl-C) or more")
		return 2
	}
	term := !*plain && isTerminal(int(stdout.Fd()))
	keys := -1
	if term && isTerminal(int(stdin.Fd())) {
		keys = int(stdin.Fd())
	}
	o := Options{Dir: *dir, Duration: time.Duration(*seconds) * time.Second, CertTTL: *ttl, Interval: *interval,
		Out: stdout, Terminal: term, KeysFD: keys, Width: func() int { return termWidth(int(stdout.Fd())) }}
	res, err := Run(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "edgedemo:", err)
		fmt.Fprintf(stderr, "edgedemo: the full log is in %s/demo.log\n", *dir)
		return 1
	}
	if o.Duration == 0 {
		printNext(stdout, *dir)
		return 0
	}
	for _, c := range res.Checks {
		mark := "PASS"
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(stdout, "%s %s: %s\n", mark, c.Name, c.Detail)
	}
	if n := res.Failed(); n > 0 {
		fmt.Fprintf(stdout, "demo: %d of %d checks failed; the full log is in %s/demo.log\n", n, len(res.Checks), *dir)
		return 1
	}
	fmt.Fprintf(stdout, "demo: all %d checks passed\n", len(res.Checks))
	return 0
}

func isFlagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// printNext says where to go after the tour.
func printNext(w io.Writer, dir string) {
	fmt.Fprintf(w, `
What to try next:
  make demo again and press b to stop the broker: the agent's mqtt spool grows, then drains when it is back
  press s to stop the HTTPS sink, r to renew at once
  the device's state (key 0600, certificate chain, spool) is in %s/device, the CA in %s/ca
  DEMO_SECONDS=90 make demo runs 90 s and checks enrollment, renewal and delivery
  README.md: provisioning real devices with tokens, the agent's configuration
`, dir, dir)
}
