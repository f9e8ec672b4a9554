package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/ca/store"
)

// renewalJSON is the last renewal attempt of a device.
type renewalJSON struct {
	Result string    `json:"result"` // ok, refused
	Code   string    `json:"code,omitempty"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// deviceJSON is the --json form of a device in device list and show.
type deviceJSON struct {
	ID          string            `json:"id"`
	State       string            `json:"state"`  // ca.States
	Status      string            `json:"status"` // active or revoked, as registered
	Serial      string            `json:"serial"`
	Confirmed   string            `json:"confirmed_serial,omitempty"`
	NotBefore   time.Time         `json:"not_before,omitzero"`
	NotAfter    time.Time         `json:"not_after"`
	FirstSeen   time.Time         `json:"first_seen"`
	LastSeen    time.Time         `json:"last_seen"`
	TokenID     string            `json:"token_id,omitempty"`
	Enrollments int               `json:"enrollments"`
	Agent       string            `json:"agent,omitempty"`
	Renewal     *renewalJSON      `json:"last_renewal,omitempty"`
	RevokedAt   time.Time         `json:"revoked_at,omitzero"`
	EKSHA256    string            `json:"ek_sha256,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	History     []certJSON        `json:"certificates,omitempty"`
}

type certJSON struct {
	Serial    string    `json:"serial"`
	Op        string    `json:"op"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	IssuedAt  time.Time `json:"issued_at"`
}

func toDeviceJSON(d ca.InventoryDevice) deviceJSON {
	j := deviceJSON{ID: d.ID, State: d.State, Status: d.Status, Serial: d.Serial, Confirmed: d.Confirmed, NotBefore: d.NotBefore, NotAfter: d.NotAfter,
		FirstSeen: d.FirstSeen, LastSeen: d.LastSeen, TokenID: d.TokenID, Enrollments: d.Enrollments, Agent: d.Agent, RevokedAt: d.RevokedAt}
	if d.Renewal.Result != "" {
		j.Renewal = &renewalJSON{Result: d.Renewal.Result, Code: d.Renewal.Code, Reason: d.Renewal.Reason, At: d.Renewal.At}
	}
	return j
}

// csvHeader is the column order of device list --csv.
var csvHeader = []string{"id", "state", "status", "serial", "not_before", "not_after", "last_seen", "first_seen", "token_id", "enrollments", "agent", "last_renewal", "last_renewal_code", "last_renewal_at"}

func csvTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func cmdDeviceList(ctx context.Context, args []string, stdout io.Writer) error {
	fs, dir := newFlags("device list")
	asJSON := fs.Bool("json", false, "print JSON")
	asCSV := fs.Bool("csv", false, "print CSV (RFC 4180, with a header line)")
	var q ca.InventoryQuery
	fs.StringVar(&q.State, "state", "", "only devices in this state: "+strings.Join(ca.States, ", "))
	fs.DurationVar(&q.Expiring, "expiring", 0, "only devices whose certificate expires within this duration (e.g. 72h), not yet expired")
	fs.StringVar(&q.TokenID, "token", "", "only devices enrolled (last) with this token id")
	labels := labelFlags{}
	fs.Var(labels, "label", "only devices with this label key=value (repeatable: all of them)")
	fs.StringVar(&q.Sort, "sort", store.SortID, "order: id, expiry (soonest first) or last-seen (most recent first)")
	fs.IntVar(&q.Limit, "limit", 0, "print at most this many devices (0: all)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *asJSON && *asCSV {
		return fmt.Errorf("%w: device list: give --json or --csv, not both", errUsage)
	}
	if len(labels) > 0 {
		q.Labels = labels
	}
	if q.Limit < 0 {
		return fmt.Errorf("%w: device list: --limit %d: must not be negative", errUsage, q.Limit)
	}
	switch q.Sort {
	case store.SortID, store.SortExpiry, store.SortLastSeen:
	default:
		return fmt.Errorf("%w: device list: --sort %q: one of id, expiry, last-seen", errUsage, q.Sort)
	}
	if q.State != "" && !slices.Contains(ca.States, q.State) {
		return fmt.Errorf("%w: device list: --state %q: one of %s", errUsage, q.State, strings.Join(ca.States, ", "))
	}
	if q.Expiring < 0 {
		return fmt.Errorf("%w: device list: --expiring %s: must be positive", errUsage, q.Expiring)
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	devs, err := c.Inventory(ctx, q)
	if err != nil {
		return err
	}
	switch {
	case *asJSON:
		out := make([]deviceJSON, 0, len(devs))
		for _, d := range devs {
			out = append(out, toDeviceJSON(d))
		}
		return writeJSON(stdout, out)
	case *asCSV:
		w := csv.NewWriter(stdout)
		_ = w.Write(csvHeader)
		for _, d := range devs {
			_ = w.Write([]string{d.ID, d.State, d.Status, d.Serial, csvTime(d.NotBefore), csvTime(d.NotAfter), csvTime(d.LastSeen), csvTime(d.FirstSeen),
				d.TokenID, strconv.Itoa(d.Enrollments), d.Agent, d.Renewal.Result, d.Renewal.Code, csvTime(d.Renewal.At)})
		}
		w.Flush()
		return w.Error()
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tSERIAL\tNOT AFTER\tLAST SEEN\tAGENT")
	for _, d := range devs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.State, d.Serial, d.NotAfter.Local().Format(time.RFC3339), d.LastSeen.Local().Format(time.RFC3339), dash(d.Agent))
	}
	return tw.Flush()
}

func cmdDeviceShow(ctx context.Context, args []string, stdout io.Writer) error {
	fs, dir := newFlags("device show")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args, "ID")
	if err != nil {
		return err
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	d, err := c.DeviceDetail(ctx, pos[0])
	if err != nil {
		return err
	}
	ek, err := c.DeviceEK(ctx, d.ID)
	if err != nil {
		return err
	}
	labels, err := c.Fleet().DeviceLabels(ctx, d.ID)
	if err != nil {
		return err
	}
	if *asJSON {
		j := toDeviceJSON(d.InventoryDevice)
		j.EKSHA256 = ek
		j.Labels = labels
		j.History = []certJSON{}
		for _, h := range d.History {
			j.History = append(j.History, certJSON{Serial: h.Serial, Op: h.Op, NotBefore: h.NotBefore, NotAfter: h.NotAfter, IssuedAt: h.IssuedAt})
		}
		return writeJSON(stdout, j)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Local().Format(time.RFC3339)
	}
	row("device", d.ID)
	row("state", d.State)
	row("status", d.Status)
	row("serial", d.Serial)
	// The newest certificate the device renewed with: it stays good for
	// renewal until the device renews with a newer one.
	row("confirmed serial", dash(d.Confirmed))
	row("not before", ts(d.NotBefore))
	row("not after", ts(d.NotAfter))
	row("first seen", ts(d.FirstSeen))
	row("last seen", ts(d.LastSeen))
	row("token", dash(d.TokenID))
	row("agent", dash(d.Agent))
	row("labels", dash(formatLabels(labels)))
	switch d.Renewal.Result {
	case "":
		row("last renewal", "-")
	case store.RenewalOK:
		row("last renewal", "ok at "+ts(d.Renewal.At))
	default:
		row("last renewal", fmt.Sprintf("%s at %s: %s: %s", d.Renewal.Result, ts(d.Renewal.At), d.Renewal.Code, pr(d.Renewal.Reason)))
	}
	row("certificates", fmt.Sprint(d.Enrollments))
	// The TPM the device proved its key is in; "-" for a device that never
	// enrolled with attestation.
	row("ek sha256", dash(ek))
	if !d.RevokedAt.IsZero() {
		row("revoked at", ts(d.RevokedAt))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(d.History) == 0 {
		return nil
	}
	fmt.Fprintf(stdout, "\ncertificate history (newest first, at most %d):\n", store.CertHistoryMax)
	tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERIAL\tOP\tNOT BEFORE\tNOT AFTER")
	for _, h := range d.History {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.Serial, h.Op, ts(h.NotBefore), ts(h.NotAfter))
	}
	return tw.Flush()
}
