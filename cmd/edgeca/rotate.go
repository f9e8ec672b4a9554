package main

import (
	"context"
	"fmt"
	"io"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/internal/atomicfile"
)

func cmdRotate(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: rotate needs intermediate, root or retire", errUsage)
	}
	what, rest := args[0], args[1:]
	fs, dir := newFlags("rotate " + what)
	var o ca.RotateOptions
	var ro ca.RetireOptions
	switch what {
	case "intermediate", "root":
		fs.StringVar(&o.RootKey, "root-key", "", "the root key file, when it is kept offline (init --root-key-out); default root-key.pem in --dir")
		if what == "root" {
			fs.StringVar(&o.RootKeyOut, "root-key-out", "", "write the new root key here (required with --root-key)")
		}
	case "retire":
		fs.DurationVar(&ro.RenewGrace, "renew-grace", ca.DefaultRenewGrace, "serve's --renew-grace: devices renew this long after expiry")
		fs.BoolVar(&ro.Force, "force", false, "retire even while devices hold certificates of the retiring CA (they must enroll again)")
	default:
		return fmt.Errorf("%w: unknown command rotate %q", errUsage, what)
	}
	if _, err := parse(fs, rest); err != nil {
		return err
	}
	o.DB, ro.DB = dbOf(fs), dbOf(fs)
	var res ca.RotateResult
	var err error
	switch what {
	case "intermediate":
		res, err = ca.RotateIntermediate(ctx, *dir, o)
	case "root":
		res, err = ca.RotateRoot(ctx, *dir, o)
	case "retire":
		retired, err := ca.RetireOverlap(ctx, *dir, ro)
		if err != nil {
			return err
		}
		for _, c := range retired {
			fmt.Fprintf(stderr, "retired %s\n", c.Subject.CommonName)
		}
		if len(retired) == 0 {
			fmt.Fprintln(stderr, "nothing to retire")
		} else {
			fmt.Fprintln(stderr, "restart serve (every replica) to stop trusting and publishing them")
		}
		return nil
	}
	if err != nil {
		return err
	}
	if res.Finished {
		fmt.Fprintf(stderr, "finished an interrupted rotation in %s; restart serve\n", *dir)
		return nil
	}
	if res.NewRoot != nil {
		fmt.Fprintf(stderr, "new root:         %s (certified by %s)\nnew root pin:     %s\n", res.NewRoot.Subject.CommonName, res.OldRoot.Subject.CommonName, token.PinOf(res.NewRoot))
	}
	fmt.Fprintf(stderr, "new intermediate: %s\nold intermediate: %s (published and trusted for renewal until `edgeca rotate retire`)\n",
		res.NewIntermediate.Subject.CommonName, res.OldIntermediate.Subject.CommonName)
	fmt.Fprintln(stderr, "next: update brokers' cafile from `edgeca cacerts`, then restart serve (copy the CA directory to every replica first)")
	return nil
}

// cmdCACerts prints what /cacerts publishes, as PEM: a broker's cafile.
func cmdCACerts(ctx context.Context, args []string, stdout io.Writer) error {
	fs, dir := newFlags("cacerts")
	out := fs.String("out", "", "write the bundle to this file (atomically) instead of stdout")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	if *out != "" {
		return atomicfile.Write(*out, c.Bundle(), 0o644)
	}
	_, err = stdout.Write(c.Bundle())
	return err
}
