//go:build !linux

package demo

import "context"

// Other systems get the plain log view and no single-key commands.

func isTerminal(int) bool { return false }

func termWidth(int) int { return 0 }

func cbreak(int) (func(), error) { return func() {}, nil }

func readKeys(ctx context.Context, _ int, _ chan<- byte) error {
	<-ctx.Done()
	return nil
}
