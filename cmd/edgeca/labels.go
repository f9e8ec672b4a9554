package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/deviceid"
)

// parseAny parses flags anywhere on the command line and returns the
// positional arguments, however many.
func parseAny(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, helpError{fs}
			}
			return nil, fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// cmdDeviceLabel is `device label ID [key=value | key-]...`: it sets and
// removes labels and prints the device's labels (--json: as an object).
func cmdDeviceLabel(ctx context.Context, args []string, stdout io.Writer) error {
	fs, dir := newFlags("device label")
	asJSON := fs.Bool("json", false, "print the labels as a JSON object")
	pos, err := parseAny(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return fmt.Errorf("%w: device label takes ID [key=value | key-]...", errUsage)
	}
	id := deviceid.Canonical(pos[0])
	set := map[string]string{}
	var remove []string
	for _, a := range pos[1:] {
		if k, ok := strings.CutSuffix(a, "-"); ok && !strings.Contains(a, "=") {
			if err := store.ValidateLabel(k, ""); err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			remove = append(remove, k)
			continue
		}
		k, v, err := store.ParseLabel(a)
		if err != nil {
			return fmt.Errorf("%w: %v (key=value sets, key- removes)", errUsage, err)
		}
		set[k] = v
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	if len(set) > 0 || len(remove) > 0 {
		if err := c.Fleet().LabelDevice(ctx, id, set, remove); err != nil {
			return err
		}
	} else if _, err := c.Device(ctx, id); err != nil {
		return err
	}
	labels, err := c.Fleet().DeviceLabels(ctx, id)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, labels)
	}
	_, err = fmt.Fprintln(stdout, formatLabels(labels))
	return err
}

// selectDevices is the devices a command acts on: the ids given, or those
// with every --label given.
func selectDevices(ctx context.Context, c *ca.CA, ids []string, labels map[string]string) ([]string, error) {
	if len(labels) == 0 {
		out := make([]string, len(ids))
		for i, id := range ids {
			out[i] = deviceid.Canonical(id)
		}
		return out, nil
	}
	var out []string
	first := true
	for k, v := range labels {
		got, err := c.Fleet().DevicesWithLabel(ctx, k, v)
		if err != nil {
			return nil, err
		}
		if first {
			out, first = got, false
			continue
		}
		keep := out[:0]
		for _, id := range out {
			for _, g := range got {
				if g == id {
					keep = append(keep, id)
					break
				}
			}
		}
		out = keep
	}
	return out, nil
}

// cmdDeviceRevokeAny is `device revoke`: by id as before, or every device
// with the --label(s) given.
func cmdDeviceRevokeAny(ctx context.Context, args []string, stderr io.Writer) error {
	if !hasFlag(args, "label") {
		return cmdDeviceRevoke(ctx, args, stderr)
	}
	fs, dir := newFlags("device revoke")
	labels := labelFlags{}
	fs.Var(labels, "label", "revoke every device with this key=value (repeatable: all of them)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	ids, err := selectDevices(ctx, c, nil, labels)
	if err != nil {
		return err
	}
	total := 0
	for _, id := range ids {
		rv, err := c.Revoke(ctx, id)
		if err != nil {
			return fmt.Errorf("revoke %s (after %d of %d): %w", id, total, len(ids), err)
		}
		total++
		fmt.Fprintf(stderr, "device %s revoked; %d certificate(s) added to the CRL\n", rv.DeviceID, len(rv.Certs))
	}
	fmt.Fprintf(stderr, "%d device(s) labelled %s revoked\n", total, formatLabels(labels))
	return nil
}

// cmdDeviceRenewNow is `device renew-now ID... | --label key=value`: the
// devices renew at their next renewal-info check (GET
// /.well-known/est/renewal-info), without re-enrolling.
func cmdDeviceRenewNow(ctx context.Context, args []string, stderr io.Writer) error {
	fs, dir := newFlags("device renew-now")
	labels := labelFlags{}
	fs.Var(labels, "label", "every device with this key=value (repeatable: all of them)")
	pos, err := parseAny(fs, args)
	if err != nil {
		return err
	}
	if (len(pos) == 0) == (len(labels) == 0) {
		return fmt.Errorf("%w: device renew-now takes device ids or --label key=value", errUsage)
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	ids, err := selectDevices(ctx, c, pos, labels)
	if err != nil {
		return err
	}
	n, err := c.Fleet().RequestRenewal(ctx, ids, time.Now())
	if err != nil {
		return err
	}
	if len(labels) == 0 && n < len(ids) {
		return fmt.Errorf("%d of %d device(s) are unknown: %w", len(ids)-n, len(ids), store.ErrNotFound)
	}
	fmt.Fprintf(stderr, "%d device(s) asked to renew at their next renewal-info check\n", n)
	return nil
}
