package ca

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/ca/webhook"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// AuthorizeOptions configures the authorizing hook: before a token
// enrollment is recorded (and its token use spent), edgeca POSTs an
// AuthorizeRequest to URL and enrolls only if the answer allows it.
type AuthorizeOptions struct {
	URL string
	// Timeout bounds one call (5 s).
	Timeout time.Duration
	// DefaultAllow is the decision when the hook fails (no answer in
	// time, not 200, not JSON): false denies.
	DefaultAllow bool
	// Secret, when set, signs each request like a webhook
	// (Edgeca-Signature), so the hook can tell edgeca from others.
	Secret []byte
	// Client replaces the HTTP client (tests).
	Client *http.Client
}

// AuthorizeRequest is what the hook is asked.
type AuthorizeRequest struct {
	Device string            `json:"device"`
	Token  string            `json:"token"`
	Labels map[string]string `json:"labels,omitempty"`
	Peer   string            `json:"peer"`
}

// AuthorizeAnswer is what the hook answers, with status 200.
type AuthorizeAnswer struct {
	Allow  bool   `json:"allow"`
	Reason string `json:"reason,omitempty"`
}

type authorizer struct {
	o AuthorizeOptions
}

func newAuthorizer(o AuthorizeOptions) (*authorizer, error) {
	if err := webhook.ValidateURL(o.URL); err != nil {
		return nil, fmt.Errorf("authorizing hook: %w", err)
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Client == nil {
		o.Client = &http.Client{
			Transport:     &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}, Proxy: http.ProxyFromEnvironment},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return &authorizer{o: o}, nil
}

// ask calls the hook once.
func (a *authorizer) ask(ctx context.Context, q AuthorizeRequest, now time.Time) (*AuthorizeAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, a.o.Timeout)
	defer cancel()
	body, _ := json.Marshal(q) // strings and a map of strings
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.o.URL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "edgeca-authorize")
	if len(a.o.Secret) > 0 {
		req.Header.Set(webhook.HeaderSignature, webhook.Sign(a.o.Secret, now, body))
	}
	resp, err := a.o.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("answered %s", resp.Status)
	}
	var ans AuthorizeAnswer
	dec := json.NewDecoder(io.LimitReader(resp.Body, 16<<10))
	if err := dec.Decode(&ans); err != nil {
		return nil, fmt.Errorf("answer is not {\"allow\": true|false}: %w", err)
	}
	return &ans, nil
}

// authorizeDecision is the decision from the hook's answer, or from the
// configured default when the call failed; why is for the audit log.
func authorizeDecision(ans *AuthorizeAnswer, callErr error, defaultAllow bool) (allow bool, why string) {
	if callErr != nil || ans == nil {
		d := "deny"
		if defaultAllow {
			d = "allow"
		}
		msg := "no answer"
		if callErr != nil {
			msg = callErr.Error()
		}
		return defaultAllow, "authorizing hook failed (" + msg + "): default " + d
	}
	verdict := "denied"
	if ans.Allow {
		verdict = "allowed"
	}
	why = "authorizing hook " + verdict
	if ans.Reason != "" {
		why += ": " + ans.Reason
	}
	return ans.Allow, why
}

// authorizeEnroll asks the hook, if one is configured, whether a token
// enrollment may go on. It runs after the token's secret was checked (so
// only a holder of a valid token reaches the hook) and before Issue spends
// a use of it: a denied device keeps its token usable. Every decision is
// audited (op "authorize").
func (c *CA) authorizeEnroll(ctx context.Context, a *attempt, tokenID, deviceID string, now time.Time) error {
	az := c.fleet.authorize
	if az == nil {
		return nil
	}
	labels, err := c.fleet.fs.TokenLabels(ctx, tokenID)
	if err != nil {
		if errors.Is(err, store.ErrUnavailable) {
			return err
		}
		labels = nil
	}
	ans, callErr := az.ask(ctx, AuthorizeRequest{Device: deviceID, Token: tokenID, Labels: labels, Peer: a.peer}, now)
	allow, why := authorizeDecision(ans, callErr, az.o.DefaultAllow)
	result := store.ResultOK
	if !allow {
		result = store.ResultDenied
	}
	c.writeAudit(ctx, store.AuditRecord{Time: now, Op: "authorize", Peer: a.peer, TokenID: tokenID, DeviceID: deviceID, Result: result, Reason: why})
	c.log.Info("enrollment authorization", "device", deviceID, "token", tokenID, "peer", a.peer, "allow", allow, "reason", Printable(why, maxReasonLen))
	if allow {
		return nil
	}
	return &Error{Status: http.StatusForbidden, Code: est.CodeDeviceNotAllowed,
		Msg:    fmt.Sprintf("enrollment of device %s was not authorized by the CA's policy: ask the operator", deviceID),
		Reason: why}
}
