package main

import (
	"context"
	"errors"
	"io"
)

func cmdMosquittoSync(ctx context.Context, args []string, stderr io.Writer) error {
	return errors.New("todo")
}
