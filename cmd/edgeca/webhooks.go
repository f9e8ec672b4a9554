package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/ca/webhook"
)

// fleetFlags are serve's webhook and authorizing hook flags.
type fleetFlags struct {
	urls           stringList
	secretFile     string
	authURL        string
	authDefault    string
	authTimeout    time.Duration
	authSecretFile string
}

func addFleetFlags(fs *flag.FlagSet) *fleetFlags {
	f := &fleetFlags{}
	fs.Var(&f.urls, "webhook-url", "post fleet events (enrolled, renewed, renewal refused, revoked, expired) as signed JSON to this URL (repeatable)")
	fs.StringVar(&f.secretFile, "webhook-secret-file", "", "file holding the webhook HMAC-SHA256 secret (at least 16 bytes, mode 0600)")
	fs.StringVar(&f.authURL, "authorize-url", "", "ask this URL whether to allow each token enrollment (POST {device, token, labels, peer}, answer {\"allow\": true|false})")
	fs.StringVar(&f.authDefault, "authorize-default", "deny", "decision when the authorizing hook fails or times out: allow or deny")
	fs.DurationVar(&f.authTimeout, "authorize-timeout", 5*time.Second, "how long to wait for the authorizing hook")
	fs.StringVar(&f.authSecretFile, "authorize-secret-file", "", "sign authorizing hook requests with this secret (Edgeca-Signature), default the webhook secret")
	return f
}

// readSecret reads a secret file: a regular file others cannot read,
// at most 4 KiB, trailing newline trimmed.
func readSecret(flagName, path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: --%s: %v", errUsage, flagName, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flagName, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: --%s: %s must be a regular file only its owner can read (chmod 0600), not %#o", errUsage, flagName, path, st.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, 4<<10+1))
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flagName, err)
	}
	if len(b) > 4<<10 {
		return nil, fmt.Errorf("%w: --%s: %s is over 4 KiB", errUsage, flagName, path)
	}
	return []byte(strings.TrimRight(string(b), "\r\n")), nil
}

func (f *fleetFlags) options() (ca.FleetOptions, error) {
	var o ca.FleetOptions
	var secret []byte
	if f.secretFile != "" {
		s, err := readSecret("webhook-secret-file", f.secretFile)
		if err != nil {
			return o, err
		}
		secret = s
	}
	if len(f.urls) > 0 {
		if secret == nil {
			return o, fmt.Errorf("%w: --webhook-url needs --webhook-secret-file (receivers verify the signature)", errUsage)
		}
		for _, u := range f.urls {
			if err := webhook.ValidateURL(u); err != nil {
				return o, fmt.Errorf("%w: --webhook-url: %v", errUsage, err)
			}
		}
		if len(secret) < webhook.MinSecretLen {
			return o, fmt.Errorf("%w: --webhook-secret-file: the secret must be at least %d bytes", errUsage, webhook.MinSecretLen)
		}
		o.Webhooks = &webhook.Config{URLs: f.urls, Secret: secret}
	} else if secret != nil {
		return o, fmt.Errorf("%w: --webhook-secret-file without --webhook-url", errUsage)
	}
	if f.authURL != "" {
		a := &ca.AuthorizeOptions{URL: f.authURL, Timeout: f.authTimeout, Secret: secret}
		switch f.authDefault {
		case "allow":
			a.DefaultAllow = true
		case "deny":
		default:
			return o, fmt.Errorf("%w: --authorize-default %q: want allow or deny", errUsage, f.authDefault)
		}
		if f.authTimeout <= 0 || f.authTimeout > time.Minute {
			return o, fmt.Errorf("%w: --authorize-timeout %s: must be above 0 and at most 1m", errUsage, f.authTimeout)
		}
		if f.authSecretFile != "" {
			s, err := readSecret("authorize-secret-file", f.authSecretFile)
			if err != nil {
				return o, err
			}
			if len(s) < webhook.MinSecretLen {
				return o, fmt.Errorf("%w: --authorize-secret-file: %s holds %d bytes: a signing secret needs at least %d", errUsage, f.authSecretFile, len(s), webhook.MinSecretLen)
			}
			a.Secret = s
		}
		if err := webhook.ValidateURL(f.authURL); err != nil {
			return o, fmt.Errorf("%w: --authorize-url: %v", errUsage, err)
		}
		o.Authorize = a
	}
	return o, nil
}
