package store

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkIssue measures IssueWithToken, recording enrollments: serially, and with 16
// concurrent callers (where the writer commits them in groups).
func BenchmarkIssue(b *testing.B) {
	for _, par := range []int{1, 16} {
		b.Run(fmt.Sprintf("callers=%d", par), func(b *testing.B) {
			ctx := context.Background()
			s, err := Open(ctx, filepath.Join(b.TempDir(), "db"))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			now := time.Now()
			for i := range b.N {
				if err := s.CreateToken(ctx, Token{ID: fmt.Sprintf("t%d", i), MaxUses: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
					b.Fatal(err)
				}
			}
			var next atomic.Int64
			b.SetParallelism(par)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1) - 1
					tok, dev := fmt.Sprintf("t%d", i), fmt.Sprintf("device-%d", i)
					_, err := s.IssueWithToken(ctx, TokenEnrollment{TokenID: tok, DeviceID: dev, Time: now,
						Issuance: Issuance{Serial: "00112233445566778899aabbccddeeff", NotAfter: now},
						Audit:    AuditRecord{Time: now, Op: "simpleenroll", Peer: "127.0.0.1:5555", TokenID: tok, DeviceID: dev, Result: ResultOK, Reason: "enrolled with token"}})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
