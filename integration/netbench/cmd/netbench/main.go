// Command netbench runs dfly's multi-host benchmark (needs root): it builds an
// emulated datacenter of network namespaces with tc rate limits, runs the
// native, dfly, BitTorrent and locality scenarios for every N, and writes a
// table to stdout, results.json and results.png to --out.
//
//	netbench [--n 5,10,20,40] [--size 200MB] [--scenarios native,dfly,bittorrent,locality]
//	         [--peer-rate 100mbit] [--origin-rate 1gbit] [--inter-idc-rate 200mbit] [--out DIR]
//	netbench --cleanup    # remove topologies left behind by a killed run
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dfly-p2p/dfly/integration/netbench"
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
		fmt.Fprintln(os.Stderr, "netbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("netbench", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	ns := fs.String("n", "5,10,20,40", "comma-separated host counts")
	size := fs.String("size", "200MB", "file size (MB = 10^6 bytes, MiB = 2^20)")
	scen := fs.String("scenarios", strings.Join(netbench.AllScenarios(), ","), "comma-separated scenarios")
	peerRate := fs.String("peer-rate", "100mbit", "each peer's upload and download rate")
	originRate := fs.String("origin-rate", "1gbit", "the origin's upload and download rate")
	snRate := fs.String("supernode-rate", "", "the supernode/tracker host's rate (default: origin rate)")
	interRate := fs.String("inter-idc-rate", "200mbit", "rate of the link between the two idcs (locality)")
	seed := fs.Uint64("seed", 1, "seed of the generated content")
	pieceExp := fs.Int("piece-exp", 20, "BitTorrent piece size exponent (20 = 1 MiB)")
	out := fs.String("out", "netbench-results", "directory for results.json, results.png and run logs")
	binDir := fs.String("bin-dir", "", "where to build the binaries (default OUT/bin)")
	repo := fs.String("repo", ".", "the dfly repository (module root or below)")
	timeout := fs.Duration("run-timeout", 0, "limit of one run (default 10 × client-server time + 60s)")
	daemonArgs := fs.String("dfdaemon-args", "", "extra flags for every dfdaemon, space-separated (e.g. \"--direct-io\")")
	snArgs := fs.String("supernode-args", "", "extra flags for the supernode, space-separated")
	dynARP := fs.Bool("dynamic-arp", false, "resolve neighbours with ARP (default: static entries; ARP lost in full queues stalls new connections)")
	keep := fs.Bool("keep", false, "keep downloaded files and stores")
	cleanup := fs.Bool("cleanup", false, "remove namespaces left behind by dead netbench runs and exit")
	verbose := fs.Bool("verbose", false, "log topology and process events")
	replot := fs.String("replot", "", "print the table and redraw the plot of an existing results.json and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q; see --help", fs.Args())
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	if *replot != "" {
		rep, err := netbench.ReadJSON(*replot)
		if err != nil {
			return err
		}
		if err := netbench.WriteTable(stdout, rep.Results); err != nil {
			return err
		}
		png := strings.TrimSuffix(*replot, ".json") + ".png"
		r0 := rep.Results[0]
		title := fmt.Sprintf("S = %.0f MB, peers %s, origin %s", float64(r0.SizeBytes)/1e6, netbench.FormatRate(r0.PeerRate), netbench.FormatRate(r0.OriginRate))
		return netbench.Plot(png, rep.Results, title)
	}
	if *cleanup {
		left, err := netbench.Leftovers(ctx)
		if err != nil {
			return err
		}
		if err := netbench.Cleanup(ctx, left); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed %d leftover namespaces %v\n", len(left), left)
		return nil
	}

	var cfg netbench.Config
	var err error
	if cfg.Ns, err = netbench.ParseInts(*ns); err != nil {
		return err
	}
	if cfg.Size, err = netbench.ParseSize(*size); err != nil {
		return err
	}
	for _, r := range []struct {
		s   string
		dst *int64
	}{{*peerRate, &cfg.PeerRate}, {*originRate, &cfg.OriginRate}, {*interRate, &cfg.InterIDCRate}, {*snRate, &cfg.SupernodeRate}} {
		if r.s == "" {
			continue
		}
		if *r.dst, err = netbench.ParseRate(r.s); err != nil {
			return err
		}
	}
	for s := range strings.SplitSeq(*scen, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Scenarios = append(cfg.Scenarios, s)
		}
	}
	cfg.DaemonArgs, cfg.SupernodeArgs = strings.Fields(*daemonArgs), strings.Fields(*snArgs)
	if cfg.Repo, err = netbench.FindRepo(*repo); err != nil {
		return err
	}
	outDir, err := filepath.Abs(*out)
	if err != nil {
		return err
	}
	cfg.WorkDir = filepath.Join(outDir, "runs")
	cfg.BinDir = *binDir
	if cfg.BinDir == "" {
		cfg.BinDir = filepath.Join(outDir, "bin")
	}
	cfg.Seed, cfg.PieceExp, cfg.RunTimeout, cfg.KeepOutputs, cfg.Log = *seed, *pieceExp, *timeout, *keep, log
	cfg.DynamicARP = *dynARP

	if err := netbench.CheckLeftovers(ctx); err != nil {
		return err
	}
	b, err := netbench.New(ctx, cfg)
	if err != nil {
		return err
	}
	results, sweepErr := b.Sweep(ctx, func(r netbench.Result) {
		fmt.Fprintf(stderr, "%s N=%d: p50 %.2fs p99 %.2fs max %.2fs (bound %.2fs) origin %.3f copies cpu %.0f%% sha256 ok=%v\n",
			r.Scenario, r.N, r.P50, r.P99, r.Max, r.BoundSeconds, r.OriginEgressCopies, 100*r.CPU, r.SHA256OK)
	})
	if len(results) > 0 {
		if err := netbench.WriteTable(stdout, results); err != nil {
			return err
		}
		rep := netbench.Report{Command: "netbench " + strings.Join(args, " "), Machine: netbench.DescribeMachine(), Finished: time.Now().UTC(), Results: results}
		jsonPath, pngPath := filepath.Join(outDir, "results.json"), filepath.Join(outDir, "results.png")
		if err := netbench.WriteJSON(jsonPath, rep); err != nil {
			return err
		}
		title := fmt.Sprintf("S = %.0f MB, peers %s, origin %s", float64(cfg.Size)/1e6, netbench.FormatRate(cfg.PeerRate), netbench.FormatRate(cfg.OriginRate))
		if err := netbench.Plot(pngPath, results, title); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "results: %s %s\n", jsonPath, pngPath)
	}
	if sweepErr != nil {
		return sweepErr
	}
	var failed []string
	for _, r := range results {
		if !r.SHA256OK || len(r.Errors) > 0 {
			failed = append(failed, fmt.Sprintf("%s N=%d", r.Scenario, r.N))
		}
	}
	if len(failed) > 0 {
		return errors.New("runs with errors: " + strings.Join(failed, ", "))
	}
	return nil
}
