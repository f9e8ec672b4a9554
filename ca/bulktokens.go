package ca

import (
	"context"
	"fmt"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// CreateTokens makes n tokens with the options of o (a --device binding is
// refused: one device has one token) and labels that the devices enrolled
// with them inherit, stored in one transaction: all or none.
func (c *CA) CreateTokens(ctx context.Context, o TokenOptions, n int, labels map[string]string) ([]token.Token, []store.Token, error) {
	if n < 1 || n > store.MaxTokenBatch {
		return nil, nil, fmt.Errorf("create tokens: --count %d: must be 1 to %d", n, store.MaxTokenBatch)
	}
	if n > 1 && o.Device != "" {
		return nil, nil, fmt.Errorf("create tokens: --device binds a token to one device: give --count 1, or --pattern")
	}
	// Resolved once, not once per token.
	u, err := c.tokenURL(ctx, o.URL)
	if err != nil {
		return nil, nil, fmt.Errorf("create tokens: %w", err)
	}
	o.URL = u
	toks := make([]token.Token, 0, n)
	recs := make([]store.Token, 0, n)
	for range n {
		tok, rec, err := c.makeToken(ctx, o)
		if err != nil {
			return nil, nil, err
		}
		toks, recs = append(toks, tok), append(recs, rec)
	}
	if o.RequireTPM {
		// One setting per token, before the tokens exist (see CreateToken).
		for _, t := range toks {
			if err := c.st.SetSetting(ctx, settingTokenRequiresTPM+t.ID, "1"); err != nil {
				return nil, nil, fmt.Errorf("create tokens: record --require-tpm: %w", err)
			}
		}
	}
	if err := c.fleet.fs.CreateTokens(ctx, recs, labels); err != nil {
		return nil, nil, fmt.Errorf("create tokens: %w", err)
	}
	return toks, recs, nil
}
