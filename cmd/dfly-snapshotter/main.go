// Command dfly-snapshotter serves dfly's containerd remote snapshotter as a proxy plugin
// on a unix socket: eStargz layers are mounted lazily through FUSE, their bytes come
// through dfly's block layer, and every other layer is a normal overlayfs snapshot.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/fs/prefetch"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/internal/tlsconf"
	"github.com/dfly-p2p/dfly/peer"
	"github.com/dfly-p2p/dfly/snapshotter"
)

const usage = `usage:
  dfly-snapshotter [flags]            serve the snapshotter (foreground; stop with SIGTERM)
  dfly-snapshotter --status [flags]   print the per-layer status of a running snapshotter

containerd config (1.6/1.7):
  [proxy_plugins.dfly]
    type = "snapshot"
    address = "<--address>"
Then pull with "dfctl image pull REF" and run with "ctr run --snapshotter dfly".

flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type config struct {
	root, address, store, logLevel, dockerConfig string
	supernode, listen, advertise                 string
	insecure                                     []string
	prefetchRate                                 string
	noPrefetch, status, inProcess                bool
	swarmTLS                                     *tlsconf.Reloader // with --supernode; nil = plain
	storeKeyFile                                 string
	storeKey                                     []byte // nil = store not encrypted at rest
	metricsListen                                string // "" = no metrics listener
	metricsListenSet                             bool   // given explicitly (a busy address is then an error)
	tracing                                      *telemetry.Tracing
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == snapshotter.LayerServerCommand {
		// Internal: serve one remote layer's FUSE mount (started by the snapshotter).
		return snapshotter.RunLayerServer(ctx, args[1:], stderr)
	}
	fset := pflag.NewFlagSet("dfly-snapshotter", pflag.ContinueOnError)
	fset.SetOutput(stderr)
	var c config
	fset.StringVar(&c.root, "root", "/var/lib/dfly/snapshotter", "snapshot directory (overlay snapshots and FUSE mountpoints)")
	fset.StringVar(&c.address, "address", "/run/dfly/snapshotter.sock", "unix socket containerd's proxy_plugins entry points at")
	fset.StringVar(&c.store, "store", "", "block store directory (default ROOT/store)")
	fset.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fset.StringVar(&c.dockerConfig, "docker-config", "", "docker-style config.json with registry credentials (default: $DOCKER_CONFIG or ~/.docker)")
	fset.StringSliceVar(&c.insecure, "insecure-registry", nil, "registry host:port reached over plain HTTP (localhost always is); repeatable")
	fset.StringVar(&c.prefetchRate, "prefetch-rate", "0", "cap of background prefetch bytes/s per layer (e.g. 50M; 0 = unlimited)")
	fset.BoolVar(&c.noPrefetch, "no-prefetch", false, "fetch only what containers read (no background completion, no whole-layer verification)")
	fset.StringVar(&c.supernode, "supernode", "", "supernode gRPC address: fetch layer blocks from peers and the seed (P2P); empty = registry only")
	fset.StringVar(&c.listen, "listen", "0.0.0.0:8003", "with --supernode: upload server listen address (serves this host's blocks to peers)")
	fset.StringVar(&c.advertise, "advertise", "", "with --supernode: host:port peers reach the upload server at (default: derived from --listen)")
	fset.BoolVar(&c.inProcess, "in-process-layers", false, "serve remote layers' FUSE mounts inside this process (they then die with it: running containers lose them on a restart)")
	fset.BoolVar(&c.status, "status", false, "print the status of the snapshotter running with --root and exit")
	fset.StringVar(&c.metricsListen, "metrics-listen", defaultMetricsListen, "listen address of /metrics (Prometheus), /healthz and /readyz (ready: the block store is open); \"\" disables it, a busy default only disables it with a warning")
	tlsFlags := cli.AddTLSFlags(fset, true)
	traceFlags := cli.AddTraceFlags(fset)
	cli.AddStoreKeyFlag(fset, &c.storeKeyFile)
	fset.Usage = func() { _, _ = fmt.Fprint(stderr, usage+fset.FlagUsages()) }
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		_, _ = fmt.Fprintf(stderr, "dfly-snapshotter: %v (see dfly-snapshotter --help)\n", err)
		return 2
	}
	if fset.NArg() != 0 {
		fset.Usage()
		return 2
	}
	if c.store == "" {
		c.store = filepath.Join(c.root, "store")
	}
	c.metricsListenSet = fset.Changed("metrics-listen")
	if c.status {
		return printStatus(c.root, stdout, stderr)
	}
	log, err := cli.NewLogger(c.logLevel)
	if err != nil {
		_, _ = fmt.Fprintln(stderr, err)
		return 2
	}
	if c.supernode != "" || tlsFlags.Enabled() { // swarm links only with --supernode
		if c.swarmTLS, err = tlsFlags.Load(log); err != nil {
			_, _ = fmt.Fprintln(stderr, "dfly-snapshotter:", err)
			return 2
		}
	}
	if c.storeKey, err = cli.LoadStoreKey(c.storeKeyFile); err != nil {
		_, _ = fmt.Fprintln(stderr, "dfly-snapshotter: --store-key-file:", err)
		return 2
	}
	if c.tracing, err = traceFlags.Start(ctx, "dfly-snapshotter", log); err != nil {
		_, _ = fmt.Fprintln(stderr, "dfly-snapshotter:", err)
		return 2
	}
	defer cli.StopTracing(c.tracing, log)
	if err := serve(ctx, c, log); err != nil {
		log.Error("snapshotter stopped", "err", err)
		return 1
	}
	return 0
}

func statusPath(root string) string { return filepath.Join(root, "status.json") }

func printStatus(root string, stdout, stderr io.Writer) int {
	b, err := os.ReadFile(statusPath(root))
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "no status at %s (is dfly-snapshotter running with --root %s?): %v\n", statusPath(root), root, err)
		return 1
	}
	var sts []snapshotter.LayerStatus
	if err := json.Unmarshal(b, &sts); err != nil {
		_, _ = fmt.Fprintf(stderr, "status file %s: %v\n", statusPath(root), err)
		return 1
	}
	if len(sts) == 0 {
		_, _ = fmt.Fprintln(stdout, "no remote layers mounted")
	}
	for _, s := range sts {
		_, _ = fmt.Fprintln(stdout, s.String())
	}
	return 0
}

func serve(ctx context.Context, c config, log *slog.Logger) error {
	rate, err := cli.ParseSize(c.prefetchRate)
	if err != nil {
		return fmt.Errorf("--prefetch-rate: %w", err)
	}
	kc, err := snapshotter.DockerConfigKeychain(c.dockerConfig)
	if err != nil {
		return err
	}
	var reg *prometheus.Registry
	var pm *peer.Metrics
	if c.metricsListen != "" {
		reg = telemetry.NewRegistry("dfly-snapshotter", telemetry.Version())
		pm = peer.NewMetrics(reg)
	}
	var eng *peer.Engine
	if c.supernode != "" {
		// P2P: a full peer (block store, swarm, upload server) whose engine the
		// snapshotter reads layers through.
		d, err := peer.StartDaemon(ctx, peer.DaemonConfig{Supernode: c.supernode, Listen: c.listen, Advertise: c.advertise,
			Sock: filepath.Join(c.root, "dfdaemon.sock"), StoreDir: c.store, StoreKey: c.storeKey, SwarmTLS: c.swarmTLS, Logger: log, Metrics: pm, Tracing: c.tracing})
		if err != nil {
			return fmt.Errorf("start the P2P peer (supernode %s): %w", c.supernode, err)
		}
		defer func() { _ = d.Close() }()
		eng = d.Engine()
		log.Info("P2P mode", "supernode", c.supernode, "upload", d.UploadAddr())
	} else {
		st, err := blockstore.Open(c.store, blockstore.Options{Key: c.storeKey, Logger: log})
		if err != nil {
			return fmt.Errorf("open block store %s: %w", c.store, err)
		}
		defer func() { _ = st.Close() }()
		if eng, err = peer.New(peer.Config{Store: st, Logger: log, Metrics: pm, Tracing: c.tracing}); err != nil {
			return err
		}
		defer func() { _ = eng.Close() }()
	}
	ropt := snapshotter.RemoteFSOptions{
		Engine: eng, Resolver: &snapshotter.Resolver{Keychain: kc, Insecure: c.insecure}, Logger: log,
		Prefetch: prefetch.Options{NetworkRate: rate}, NoPrefetch: c.noPrefetch,
	}
	if reg != nil {
		reg.MustRegister(peer.StoreCollector(eng.Store()))
		ropt.Prefetch.Metrics = prefetch.NewMetrics(reg)
	}
	if !c.inProcess {
		// Each remote layer is served by its own process (in its own session), which
		// outlives this one: running containers keep their layers across a restart.
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable to start layer servers: %w", err)
		}
		if err := os.MkdirAll(c.root, 0o700); err != nil {
			return fmt.Errorf("create snapshotter root %s: %w", c.root, err)
		}
		ropt.LayerServer = []string{exe, snapshotter.LayerServerCommand}
		ropt.BlockSocket = filepath.Join(c.root, "blocks.sock")
		ropt.LayerServerLogLevel = c.logLevel
	}
	rfs, err := snapshotter.NewRemoteFS(ropt)
	if err != nil {
		return err
	}
	defer func() { _ = rfs.Close() }()
	sn, err := snapshotter.New(ctx, c.root, rfs, snapshotter.Options{Logger: log})
	if err != nil {
		return err
	}
	defer func() { _ = sn.Close() }()

	statusCtx, stopStatus := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		writeStatusLoop(statusCtx, c.root, rfs, log)
	}()
	defer func() { stopStatus(); <-done }()
	ms, err := startMetrics(c.metricsListen, c.metricsListenSet, reg, log, peer.StoreCheck(eng.Store()))
	if err != nil {
		return err
	}
	defer stopMetrics(ms, log)
	log.Info("dfly snapshotter serving", "address", c.address, "root", c.root, "store", c.store, "metrics", addrOf(ms))
	return snapshotter.Serve(ctx, c.address, sn)
}

// writeStatusLoop rewrites ROOT/status.json every second until ctx ends.
func writeStatusLoop(ctx context.Context, root string, rfs *snapshotter.RemoteFS, log *slog.Logger) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		b, _ := json.MarshalIndent(rfs.Status(), "", "  ")
		tmp := statusPath(root) + ".tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			log.Debug("write status file", "err", err)
		} else {
			_ = os.Rename(tmp, statusPath(root))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
