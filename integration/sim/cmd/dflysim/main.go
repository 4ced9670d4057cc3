// Command dflysim simulates a dfly swarm in virtual time: the real
// supernode scheduler decides every parent, peers and the seed behave as
// the real client and seed do, and a flow-level network model moves the
// bytes (package integration/sim). For every N it prints completion time
// p50/p99/max over the physical bound, origin and seed egress in copies,
// and the simulator's speed; it writes results.json and a plot.
//
//	dflysim [--n 10,100,1000] [--size 200MB] [--peer-rate 100mbit] [--origin-rate 1gbit]
//	        [--block-size 0] [--seed 1] [--out DIR] [--plot PATH]
//	dflysim --replot DIR/results.json --plot PATH
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dfly-p2p/dfly/integration/netbench"
	"github.com/dfly-p2p/dfly/integration/sim"
	"github.com/spf13/pflag"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "dflysim:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("dflysim", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	ns := fs.String("n", "10,100,1000", "comma-separated host counts")
	size := fs.String("size", "200MB", "file size (MB = 10^6 bytes, MiB = 2^20)")
	blockSize := fs.String("block-size", "0", "block size (0: as the real task, blockstore.BlockSizeFor)")
	peerRate := fs.String("peer-rate", "100mbit", "each peer's upload and download rate")
	originRate := fs.String("origin-rate", "1gbit", "the origin's upload rate")
	seedRate := fs.String("seed-rate", "", "the seed host's upload and download rate (default: origin rate)")
	conc := fs.Int("concurrency", 8, "parallel block fetches per peer (dfdaemon's default)")
	latency := fs.Duration("latency", time.Millisecond, "delay before every transfer's first byte")
	start := fs.Duration("start-spread", 0, "peers start uniformly spread over this long (0: all at once)")
	seed := fs.Uint64("seed", 1, "seed of every random choice (same seed, same result)")
	out := fs.String("out", "sim-results", "directory for results.json and results.png")
	plotPath := fs.String("plot", "", "where to draw the plot (default OUT/results.png)")
	title := fs.String("title", "", "plot title (default: describes the experiment)")
	replot := fs.String("replot", "", "print the table and redraw the plot of an existing results.json and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q; see --help", fs.Args())
	}
	if *replot != "" {
		rep, err := sim.ReadJSON(*replot)
		if err != nil {
			return err
		}
		if err := sim.WriteTable(stdout, rep.Results); err != nil {
			return err
		}
		p := *plotPath
		if p == "" {
			p = filepath.Join(filepath.Dir(*replot), "results.png")
		}
		return sim.Plot(p, rep.Results, rep.Title)
	}
	counts, err := netbench.ParseInts(*ns)
	if err != nil {
		return fmt.Errorf("--n: %w", err)
	}
	sz, err := netbench.ParseSize(*size)
	if err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	var bs int64
	if *blockSize != "0" {
		if bs, err = netbench.ParseSize(*blockSize); err != nil {
			return fmt.Errorf("--block-size: %w", err)
		}
	}
	pr, err := netbench.ParseRate(*peerRate)
	if err != nil {
		return fmt.Errorf("--peer-rate: %w", err)
	}
	or, err := netbench.ParseRate(*originRate)
	if err != nil {
		return fmt.Errorf("--origin-rate: %w", err)
	}
	var sr int64
	if *seedRate != "" {
		if sr, err = netbench.ParseRate(*seedRate); err != nil {
			return fmt.Errorf("--seed-rate: %w", err)
		}
	}
	if *out != "" {
		if err := os.MkdirAll(*out, 0o755); err != nil {
			return fmt.Errorf("create --out: %w", err)
		}
	}
	if *title == "" {
		*title = fmt.Sprintf("dfly simulator: %s to N hosts at %s, origin %s", *size, netbench.FormatRate(pr), netbench.FormatRate(or))
	}
	rep := sim.Report{Command: "dflysim " + strings.Join(args, " "), Title: *title}
	for _, n := range counts {
		r, err := sim.Run(ctx, sim.Config{N: n, Size: sz, BlockSize: bs, PeerBps: pr, OriginBps: or, SeedBps: sr,
			Concurrency: *conc, Latency: *latency, Start: *start, Seed: *seed})
		if err != nil {
			return err
		}
		rep.Results = append(rep.Results, r)
		fmt.Fprintf(stderr, "N=%d done: p99/bound %.2f, %d events in %.1fs\n", n, r.P99/r.Bound, r.Events, r.WallSeconds)
		if *out != "" {
			// Written after every N, so a long run keeps what it has.
			if err := sim.WriteJSON(filepath.Join(*out, "results.json"), rep); err != nil {
				return err
			}
		}
	}
	if err := sim.WriteTable(stdout, rep.Results); err != nil {
		return err
	}
	p := *plotPath
	if p == "" && *out != "" {
		p = filepath.Join(*out, "results.png")
	}
	if p != "" {
		if err := sim.Plot(p, rep.Results, *title); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "plot:", p)
	}
	return nil
}
