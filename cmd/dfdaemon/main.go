// Command dfdaemon is dfly's per-host peer: it owns the host's block store,
// serves the blocks it holds to other peers (upload server), downloads
// through the P2P swarm of a supernode, and offers a local API on a unix
// socket that dfget uses. See `dfdaemon --help`.
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
