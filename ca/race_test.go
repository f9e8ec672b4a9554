package ca

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/edgeagent/edgeagent/enroll/est"
)

// TestTokenUsesUnderRace has many devices race over real HTTPS for a token
// with few uses: exactly that many win, the rest get token_invalid, and the
// token and device table agree.
func TestTokenUsesUnderRace(t *testing.T) {
	s := newTestServer(t, Options{})
	ctx := context.Background()
	for _, uses := range []int{1, 3} {
		t.Run(fmt.Sprintf("uses=%d", uses), func(t *testing.T) {
			const racers = 32
			tok := s.token(t, TokenOptions{Uses: uses, Pattern: fmt.Sprintf("race%d-*", uses)})
			bodies := make([][]byte, racers)
			for i := range bodies {
				bodies[i] = csrFor(t, newKey(t), fmt.Sprintf("race%d-%02d", uses, i))
			}
			c := s.client(nil)
			start := make(chan struct{})
			results := make([]response, racers)
			var wg sync.WaitGroup
			for i := range racers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					results[i] = c.enroll(t, bodies[i], tok)
				}()
			}
			close(start)
			wg.Wait()

			won := 0
			for i, r := range results {
				switch {
				case r.status == http.StatusOK:
					won++
				case r.status == http.StatusUnauthorized && errCode(r.body) == est.CodeTokenInvalid:
				default:
					t.Errorf("racer %d: %d %s", i, r.status, r.body)
				}
			}
			if won != uses {
				t.Fatalf("%d racers won, want exactly %d", won, uses)
			}
			toks, err := s.ca.Tokens(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range toks {
				if x.ID == tok.ID && x.Uses != uses {
					t.Fatalf("token records %d uses, want %d", x.Uses, uses)
				}
			}
			devs, err := s.ca.Devices(ctx)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, d := range devs {
				if len(d.ID) > 6 && d.ID[:6] == fmt.Sprintf("race%d-", uses) {
					n++
				}
			}
			if n != uses {
				t.Fatalf("%d devices registered, want %d", n, uses)
			}
		})
	}
}
