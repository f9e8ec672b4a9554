package store

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkCreateTokens makes 1000 labelled tokens: one CreateTokens
// transaction (token create --count) against the baseline of one
// CreateToken commit each, on SQLite with synchronous=FULL.
func BenchmarkCreateTokens(b *testing.B) {
	const n = 1000
	labels := map[string]string{"site": "berlin", "ring": "canary"}
	mk := func(round int) []Token {
		now := time.Now()
		toks := make([]Token, n)
		for i := range toks {
			toks[i] = Token{ID: fmt.Sprintf("r%d-t%d", round, i), SecretHash: [32]byte{byte(i)}, MaxUses: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		}
		return toks
	}
	for _, mode := range []string{"one-transaction", "baseline-commit-each"} {
		b.Run(fmt.Sprintf("%s/tokens=%d", mode, n), func(b *testing.B) {
			ctx := context.Background()
			s, err := Open(ctx, filepath.Join(b.TempDir(), "db"))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			b.ResetTimer()
			for round := range b.N {
				toks := mk(round)
				if mode == "one-transaction" {
					if err := s.CreateTokens(ctx, toks, labels); err != nil {
						b.Fatal(err)
					}
					continue
				}
				for _, t := range toks {
					if err := s.CreateToken(ctx, t); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/token")
		})
	}
}
