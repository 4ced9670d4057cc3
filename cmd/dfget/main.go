// Command dfget downloads a file through dfly: verified blocks in a local
// block store, resumable after any interruption, optionally through a P2P
// swarm. See `dfget --help` for flags and exit codes.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
