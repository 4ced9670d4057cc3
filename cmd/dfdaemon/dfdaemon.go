package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/peer"
	"github.com/dfly-p2p/dfly/peer/mirror"
)

const usageText = `Usage: dfdaemon --supernode HOST:PORT [flags]

Runs the dfly peer of this host: block store, upload server for other peers,
P2P downloads through the supernode, the local API (unix socket) that dfget
uses, and a registry mirror (the OCI pull API) through which containerd, CRI,
nerdctl and Docker pull every layer peer to peer (see docs/containerd.md;
"dfctl containerd configure" points containerd at it). Without --supernode it
serves in origin mode only.

When ready it prints one line (metrics=... only with the metrics listener on):
  dfdaemon ready sock=PATH upload=HOST:PORT mirror=HOST:PORT metrics=HOST:PORT
and it leaves the swarm cleanly on SIGINT/SIGTERM. The metrics listener
serves GET /metrics (Prometheus, see docs/metrics.md), /healthz (alive) and
/readyz (200 when the store is open and, with --supernode, the supernode
answered a heartbeat within 3 intervals; else 503 and why).

Flags:
%s
Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad usage.
`

// options are the parsed flags.
type options struct {
	cfg                             peer.DaemonConfig
	mirrorListen, mirrorRegistry    string
	mirrorListenSet                 bool
	metricsListen                   string
	metricsListenSet                bool
	mirrorInsecure                  []string
	caFiles                         []string
	quota, uploadRate, downloadRate string
	preheatRate                     string
	logLevel                        string
	tls                             *cli.TLSFlags
	trace                           *cli.TraceFlags
	storeKeyFile                    string
	compress                        string
	flow                            *flowFlags
}

// usageError is a command-line mistake; run prints it with the usage text.
type usageError struct {
	err   error
	usage string
}

func (u *usageError) Error() string { return u.err.Error() }

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := pflag.NewFlagSet("dfdaemon", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.cfg.Supernode, "supernode", "", "supernode gRPC address HOST:PORT (empty: origin mode, no P2P)")
	fs.StringVar(&o.cfg.Listen, "listen", "0.0.0.0:8003", "upload server listen address")
	fs.StringVar(&o.cfg.Advertise, "advertise", "", "HOST:PORT other peers reach the upload server at (default: derived from --listen)")
	fs.StringVar(&o.cfg.Sock, "sock", peer.DefaultSocketPath(), "local API unix socket")
	fs.StringVar(&o.cfg.StoreDir, "store", cli.DefaultStoreDir(), "block store directory")
	fs.StringVar(&o.quota, "quota", "0", "block store quota (e.g. 20G; 0 = none)")
	fs.BoolVar(&o.cfg.DirectIO, "direct-io", false, "move block bytes around the page cache (O_DIRECT) instead of caching them and uploading with sendfile")
	cli.AddStoreKeyFlag(fs, &o.storeKeyFile)
	fs.StringVar(&o.cfg.HostID, "host-id", "", "host ID used with the supernode (default: hostname/advertise address)")
	fs.StringVar(&o.cfg.IDC, "idc", "", "locality label: data center")
	fs.StringVar(&o.cfg.Rack, "rack", "", "locality label: rack")
	fs.StringVar(&o.uploadRate, "upload-rate", "0", "upload rate limit for the host (e.g. 100M = 100 MiB/s; 0 = unlimited)")
	fs.StringVar(&o.downloadRate, "download-rate", "0", "download rate limit for the host (0 = unlimited)")
	fs.StringVar(&o.preheatRate, "preheat-rate", "50M", "rate limit of preheat jobs the supernode sends this host (they also wait while a foreground download runs; 0 = only --download-rate)")
	fs.IntVar(&o.cfg.MaxUploads, "max-uploads", 16, "concurrent uploads; more get HTTP 429")
	fs.IntVar(&o.cfg.Concurrency, "concurrency", 8, "parallel block fetches per download")
	fs.StringVar(&o.compress, "compress", "auto", "compressed block transfers: auto (ask parents for zstd forms while this host's CPU has headroom and its link is the bottleneck; keep them in STORE/compressed, at most a quarter of --quota, and serve them on), always (ask whatever the load), off")
	fs.DurationVar(&o.cfg.BlockTimeout, "block-timeout", 60*time.Second, "give a block up to the origin when the swarm has not delivered it within this time")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&o.cfg.E2EPrivate, "e2e-private", false, "end-to-end encrypt every download and mirror blob that carries credentials (private content): it travels and is stored encrypted under a task key the supernode gives only hosts the origin accepted")
	fs.BoolVar(&o.cfg.CorruptUploads, "debug-corrupt-uploads", false, "TEST HOOK: serve every block with one byte flipped (to test liar detection); never use in production")
	fs.StringVar(&o.mirrorListen, "mirror-listen", mirror.DefaultListen, "registry mirror listen address (\"\" disables the mirror)")
	fs.StringVar(&o.mirrorRegistry, "mirror-registry", "", "registry for mirror requests that name none (Docker's registry-mirrors), e.g. docker.io")
	fs.StringSliceVar(&o.mirrorInsecure, "mirror-insecure", nil, "registry HOST:PORT the mirror reaches over plain HTTP (loopback always is); repeatable")
	fs.StringVar(&o.metricsListen, "metrics-listen", defaultMetricsListen, "listen address of /metrics, /healthz and /readyz (\"\" disables it; a busy default only disables it with a warning)")
	fs.StringSliceVar(&o.caFiles, "ca-file", nil, "PEM file of CA certificates trusted (besides the system's) for HTTPS origins and registries; repeatable")
	o.tls = cli.AddTLSFlags(fs, true)
	o.trace = cli.AddTraceFlags(fs)
	o.flow = addFlowFlags(fs)
	help := fs.BoolP("help", "h", false, "show this help")
	usage := fmt.Sprintf(usageText, fs.FlagUsages())
	if err := fs.Parse(args); err != nil {
		return o, &usageError{err, usage}
	}
	if *help {
		fmt.Fprint(stderr, usage)
		return o, errHelp
	}
	o.mirrorListenSet = fs.Changed("mirror-listen")
	o.metricsListenSet = fs.Changed("metrics-listen")
	if fs.NArg() > 0 {
		return o, &usageError{fmt.Errorf("unexpected arguments %q", fs.Args()), usage}
	}
	var err error
	if o.cfg.StoreKey, err = cli.LoadStoreKey(o.storeKeyFile); err != nil {
		return o, &usageError{fmt.Errorf("--store-key-file: %w", err), usage}
	}
	if len(o.caFiles) > 0 {
		if o.cfg.TLS, err = source.LoadCAs(o.caFiles...); err != nil {
			return o, &usageError{fmt.Errorf("--ca-file: %w", err), usage}
		}
	}
	for _, f := range []struct {
		name string
		s    string
		dst  *int64
	}{{"quota", o.quota, &o.cfg.Quota}, {"upload-rate", o.uploadRate, &o.cfg.UploadRate}, {"download-rate", o.downloadRate, &o.cfg.DownloadRate}, {"preheat-rate", o.preheatRate, &o.cfg.PreheatRate}} {
		if *f.dst, err = cli.ParseSize(f.s); err != nil {
			return o, &usageError{fmt.Errorf("--%s: %w", f.name, err), usage}
		}
	}
	if o.cfg.Flow, err = o.flow.options(); err != nil {
		return o, &usageError{err, usage}
	}
	if o.cfg.Compress, err = compress.ParseMode(o.compress); err != nil {
		return o, &usageError{fmt.Errorf("--compress: %w", err), usage}
	}
	return o, nil
}

var errHelp = errors.New("help requested")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, errHelp) {
		return 0
	}
	if ue := (*usageError)(nil); errors.As(err, &ue) {
		fmt.Fprintf(stderr, "dfdaemon: %v\n\n%s", ue.err, ue.usage)
		return 2
	}
	log, err := cli.NewLogger(o.logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "dfdaemon:", err)
		return 2
	}
	o.cfg.Logger = log
	if o.cfg.Supernode != "" || o.tls.Enabled() { // no swarm links in origin mode
		if o.cfg.SwarmTLS, err = o.tls.Load(log); err != nil {
			fmt.Fprintln(stderr, "dfdaemon:", err)
			return 2
		}
	}
	if o.cfg.Tracing, err = o.trace.Start(ctx, "dfdaemon", log); err != nil {
		fmt.Fprintln(stderr, "dfdaemon:", err)
		return 2
	}
	defer cli.StopTracing(o.cfg.Tracing, log) // after the daemon closed: its last spans go too
	if o.cfg.CorruptUploads {
		log.Warn("TEST HOOK --debug-corrupt-uploads is on: this host serves corrupt blocks")
	}
	var reg *prometheus.Registry
	var mm *mirror.Metrics
	if o.metricsListen != "" {
		reg = telemetry.NewRegistry("dfdaemon", telemetry.Version())
		o.cfg.Metrics = peer.NewMetrics(reg)
		mm = mirror.NewMetrics(reg)
	}
	d, err := peer.StartDaemon(ctx, o.cfg)
	if err != nil {
		fmt.Fprintln(stderr, "dfdaemon:", err)
		return 1
	}
	if reg != nil {
		reg.MustRegister(peer.StoreCollector(d.Engine().Store()))
	}
	m, mirrorAddr, err := startMirror(o, d, log, mm)
	if err != nil {
		fmt.Fprintln(stderr, "dfdaemon:", err)
		d.Close()
		return 1
	}
	ms, metricsAddr, err := startMetrics(o.metricsListen, o.metricsListenSet, reg, log, d.Ready)
	if err != nil {
		fmt.Fprintln(stderr, "dfdaemon:", err)
		m.close()
		d.Close()
		return 1
	}
	fmt.Fprintf(stdout, "dfdaemon ready sock=%s upload=%s mirror=%s%s\n", d.SockPath(), d.UploadAddr(), mirrorAddr, metricsField(metricsAddr))
	<-ctx.Done()
	log.Info("shutting down")
	ms.close(log)
	m.close()
	if err := d.Close(); err != nil {
		fmt.Fprintln(stderr, "dfdaemon: shutdown:", err)
		return 1
	}
	return 0
}
