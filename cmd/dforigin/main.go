// Command dforigin is a plain HTTP origin for demos and benchmarks: it serves
// generated deterministic files of any size (no disk needed) and/or the files
// of a directory, with Range and conditional-request support.
//
//	dforigin --listen 127.0.0.1:8080 --generate big.bin=256M:1 --dir ./files
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/integration/origin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

type genSpec struct {
	name string
	c    origin.Content
}

// parseGenerate parses NAME=SIZE[:SEED].
func parseGenerate(s string) (genSpec, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" || strings.Contains(name, "/") {
		return genSpec{}, fmt.Errorf("--generate %q: want NAME=SIZE[:SEED], e.g. big.bin=256M:1", s)
	}
	sizeStr, seedStr, hasSeed := strings.Cut(rest, ":")
	size, err := cli.ParseSize(sizeStr)
	if err != nil {
		return genSpec{}, fmt.Errorf("--generate %q: %w", s, err)
	}
	seed := uint64(1)
	if hasSeed {
		if seed, err = strconv.ParseUint(seedStr, 10, 64); err != nil {
			return genSpec{}, fmt.Errorf("--generate %q: seed %q is not a number", s, seedStr)
		}
	}
	return genSpec{name: name, c: origin.Content{Size: size, Seed: seed}}, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("dforigin", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "address to listen on")
	dir := fs.String("dir", "", "also serve the files of this directory")
	gens := fs.StringArray("generate", nil, "serve generated content: NAME=SIZE[:SEED] (repeatable)")
	digests := fs.Bool("print-digests", false, "print the sha256 of every generated file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "dforigin: %v (see dforigin --help)\n", err)
		return 2
	}
	var specs []genSpec
	for _, g := range *gens {
		sp, err := parseGenerate(g)
		if err != nil {
			fmt.Fprintf(stderr, "dforigin: %v\n", err)
			return 2
		}
		specs = append(specs, sp)
	}
	if *dir != "" {
		if fi, err := os.Stat(*dir); err != nil || !fi.IsDir() {
			fmt.Fprintf(stderr, "dforigin: --dir %s is not a directory\n", *dir)
			return 2
		}
	}
	s, err := origin.Start(origin.Options{Addr: *listen, Dir: *dir})
	if err != nil {
		fmt.Fprintf(stderr, "dforigin: %v\n", err)
		return 1
	}
	defer s.Close()
	for _, sp := range specs {
		u := s.Add(sp.name, sp.c)
		if *digests {
			fmt.Fprintf(stdout, "%s %s\n", u, sp.c.Digest("sha256"))
		}
	}
	fmt.Fprintf(stdout, "origin listening %s\n", s.URL)
	<-ctx.Done()
	fmt.Fprintf(stdout, "origin sent %d bytes in %d requests\n", s.BytesSent(), s.Requests())
	return 0
}
