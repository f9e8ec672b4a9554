// Command edgedemo is `make demo`: a CA, an MQTT broker, an HTTPS sink and
// an agent in one process, with a live view. The work is in package demo.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/edgeagent/edgeagent/tools/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := demo.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
