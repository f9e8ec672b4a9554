package enroll

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
)

// ErrNoRenewalInfo says the server does not offer renewal-info (404): the
// agent keeps its own schedule.
var ErrNoRenewalInfo = errors.New("the EST server offers no renewal-info")

// maxRenewalInfoBytes bounds the answer.
const maxRenewalInfoBytes = 4 << 10

// RenewalInfo asks the server when it suggests renewing the client
// certificate (Options.Certificate authenticates the request), and how
// soon to ask again (its Retry-After, 0 when absent).
func (c *Client) RenewalInfo(ctx context.Context) (est.RenewalInfo, time.Duration, error) {
	const name = "GET " + est.OpRenewalInfo
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(est.OpRenewalInfo), nil)
	if err != nil {
		return est.RenewalInfo{}, 0, fmt.Errorf("enroll: %s: %w", name, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return est.RenewalInfo{}, 0, fmt.Errorf("enroll: %s: %w", name, explainTLS(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxRenewalInfoBytes+1))
	if err != nil {
		return est.RenewalInfo{}, 0, fmt.Errorf("enroll: %s: read response: %w", name, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return est.RenewalInfo{}, 0, ErrNoRenewalInfo
	case resp.StatusCode != http.StatusOK:
		code, msg := est.ParseErrorBody(string(body))
		if len(msg) > 512 {
			msg = msg[:512] + "..."
		}
		return est.RenewalInfo{}, 0, &ServerError{Op: name, Status: resp.StatusCode, Code: code, Message: msg}
	case len(body) > maxRenewalInfoBytes:
		return est.RenewalInfo{}, 0, fmt.Errorf("enroll: %s: %w: over %d bytes", name, ErrResponse, maxRenewalInfoBytes)
	}
	if err := checkMediaType(resp.Header.Get("Content-Type"), est.MediaJSON); err != nil {
		return est.RenewalInfo{}, 0, fmt.Errorf("enroll: %s: %w: %v", name, ErrResponse, err)
	}
	var ri est.RenewalInfo
	if err := json.Unmarshal(body, &ri); err != nil {
		return est.RenewalInfo{}, 0, fmt.Errorf("enroll: %s: %w: %v", name, ErrResponse, err)
	}
	if ri.SuggestedWindow.Start.IsZero() || ri.SuggestedWindow.End.Before(ri.SuggestedWindow.Start) {
		return est.RenewalInfo{}, 0, fmt.Errorf("enroll: %s: %w: window %v to %v", name, ErrResponse, ri.SuggestedWindow.Start, ri.SuggestedWindow.End)
	}
	retry, _ := ParseRetryAfter(resp.Header.Get("Retry-After"), c.now())
	return ri, min(retry, 24*time.Hour), nil
}
