package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/ca/store"
)

// labelFlags is a repeatable --label key=value.
type labelFlags map[string]string

func (l labelFlags) String() string { return formatLabels(l) }

func (l labelFlags) Set(s string) error {
	k, v, err := store.ParseLabel(s)
	if err != nil {
		return err
	}
	if len(l) >= store.MaxLabels {
		return fmt.Errorf("at most %d labels", store.MaxLabels)
	}
	l[k] = v
	return nil
}

// formatLabels prints labels as "k=v,k2=v2", sorted by key.
func formatLabels(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

// bulkTokenJSON is one token of `token create --json`. It holds the token
// string, so the secret: it is printed once, like the plain form.
type bulkTokenJSON struct {
	ID        string            `json:"id"`
	Token     string            `json:"token"`
	ExpiresAt time.Time         `json:"expires_at"`
	MaxUses   int               `json:"max_uses"`
	Device    string            `json:"device,omitempty"`
	Pattern   string            `json:"pattern,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// cmdTokensCreate is `token create`: one token as before, or with --count,
// --label, --json or --csv, many in one transaction.
func cmdTokensCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if !hasFlag(args, "count") && !hasFlag(args, "label") && !hasFlag(args, "json") && !hasFlag(args, "csv") {
		return cmdTokenCreate(ctx, args, stdout, stderr)
	}
	fs, dir := newFlags("token create")
	var o ca.TokenOptions
	fs.StringVar(&o.URL, "url", "", "EST server URL (default: the init --url, else the running server's address)")
	fs.StringVar(&o.Device, "device", "", "bind the token to this device id (only with --count 1)")
	fs.StringVar(&o.Pattern, "pattern", "", "allow only device ids matching this pattern, e.g. 'sensor-*'")
	fs.IntVar(&o.Uses, "uses", 1, "number of enrollments each token allows")
	fs.DurationVar(&o.TTL, "ttl", 24*time.Hour, "how long the tokens are valid")
	fs.BoolVar(&o.RequireTPM, "require-tpm", false, "the tokens enroll only with TPM attestation")
	count := fs.Int("count", 1, fmt.Sprintf("number of tokens to make (1 to %d), in one transaction", store.MaxTokenBatch))
	labels := labelFlags{}
	fs.Var(labels, "label", "key=value the devices enrolled with the tokens inherit (repeatable)")
	asJSON := fs.Bool("json", false, "print a JSON array of {id, token, expires_at, max_uses, labels}")
	asCSV := fs.Bool("csv", false, "print CSV: id,token,expires_at,labels")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *asJSON && *asCSV:
		return fmt.Errorf("%w: give --json or --csv, not both", errUsage)
	case *count < 1 || *count > store.MaxTokenBatch:
		return fmt.Errorf("%w: --count %d: must be 1 to %d", errUsage, *count, store.MaxTokenBatch)
	case o.Uses < 1:
		return fmt.Errorf("%w: --uses %d: must be at least 1", errUsage, o.Uses)
	case o.TTL <= 0:
		return fmt.Errorf("%w: --ttl %s: must be positive", errUsage, o.TTL)
	case *count > 1 && o.Device != "":
		return fmt.Errorf("%w: --device binds a token to one device: use --pattern with --count", errUsage)
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	toks, recs, err := c.CreateTokens(ctx, o, *count, labels)
	if err != nil {
		return err
	}
	switch {
	case *asJSON:
		out := make([]bulkTokenJSON, len(toks))
		for i, t := range toks {
			out[i] = bulkTokenJSON{ID: t.ID, Token: t.String(), ExpiresAt: recs[i].ExpiresAt, MaxUses: recs[i].MaxUses,
				Device: recs[i].Device, Pattern: recs[i].Pattern, Labels: labels}
		}
		if err := writeJSON(stdout, out); err != nil {
			return err
		}
	case *asCSV:
		w := csv.NewWriter(stdout)
		_ = w.Write([]string{"id", "token", "expires_at", "labels"})
		for i, t := range toks {
			_ = w.Write([]string{t.ID, t.String(), recs[i].ExpiresAt.UTC().Format(time.RFC3339), formatLabels(labels)})
		}
		w.Flush()
		if err := w.Error(); err != nil {
			return fmt.Errorf("write CSV: %w", err)
		}
	default:
		for _, t := range toks {
			if _, err := fmt.Fprintln(stdout, t.String()); err != nil {
				return err
			}
		}
	}
	lbl := ""
	if len(labels) > 0 {
		lbl = ", labels " + formatLabels(labels)
	}
	fmt.Fprintf(stderr, "%d token(s) for %s, %d use(s) each, expire %s%s\n",
		len(toks), binding(recs[0]), o.Uses, recs[0].ExpiresAt.Local().Format(time.RFC3339), lbl)
	return nil
}
