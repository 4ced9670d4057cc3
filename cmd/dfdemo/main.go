// Command dfdemo is what `make demo` runs: it starts a real origin on
// loopback and dfly's real binaries against it, distributes generated data,
// verifies every output's sha256, and prints what happened. Every process it
// starts is stopped when it ends, also on Ctrl-C.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

type config struct {
	bin     string
	size    int64
	workDir string
	keep    bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("dfdemo", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("bin", "bin", "directory holding the dfly binaries (make build)")
	size := fs.String("size", "256M", "size of the generated file")
	keep := fs.Bool("keep", false, "keep the work directory (stores, outputs, logs)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "dfdemo: %v (see dfdemo --help)\n", err)
		return 2
	}
	n, err := cli.ParseSize(*size)
	if err != nil || n <= 0 {
		fmt.Fprintf(stderr, "dfdemo: --size %q: want a positive size like 256M\n", *size)
		return 2
	}
	for _, b := range []string{"dfget", "supernode", "dfdaemon"} {
		if _, err := os.Stat(*bin + "/" + b); err != nil {
			fmt.Fprintf(stderr, "dfdemo: %s/%s not found: run `make build` first\n", *bin, b)
			return 2
		}
	}
	work, err := os.MkdirTemp("", "dfly-demo-")
	if err != nil {
		fmt.Fprintf(stderr, "dfdemo: %v\n", err)
		return 1
	}
	cfg := config{bin: *bin, size: n, workDir: work, keep: *keep}
	defer func() {
		if cfg.keep {
			fmt.Fprintf(stdout, "work directory kept: %s\n", work)
		} else {
			os.RemoveAll(work)
		}
	}()
	if err := demoResume(ctx, cfg, stdout); err != nil {
		fmt.Fprintf(stderr, "dfdemo: %v\n", err)
		return 1
	}
	if err := demoSwarm(ctx, cfg, stdout); err != nil {
		fmt.Fprintf(stderr, "dfdemo: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "\ndemo finished: every output matched its sha256; all processes stopped")
	return 0
}
