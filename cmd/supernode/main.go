// Command supernode runs dfly's control plane: the scheduler (gRPC), the
// streaming seed and the seed's upload server (HTTP, also /debug/state).
//
// When ready it prints one line to stdout:
//
//	supernode listening grpc=ADDR upload=ADDR [api=ADDR] [metrics=ADDR]
//
// and it shuts down cleanly on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/internal/oci"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/supernode"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "supernode:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a command-line mistake (exit 2); other errors exit 1.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// run parses args, starts the supernode and serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("supernode", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg       supernode.Config
		quota     byteSize
		rate      byteSize
		logLevel  string
		heartbeat time.Duration
	)
	fs.StringVar(&cfg.GRPCListen, "listen", "0.0.0.0:8002", "gRPC control-plane listen address")
	fs.StringVar(&cfg.UploadListen, "upload-listen", ":8001", "listen address of the seed's upload server (also serves GET /debug/state to loopback callers and holders of STORE/admin.token)")
	fs.StringVar(&cfg.Advertise, "advertise", "", "host:port peers use to reach the upload server (default: derived from --upload-listen)")
	fs.StringVar(&cfg.StoreDir, "store", "", "directory of the seed's block store and token key (required)")
	fs.StringVar(&cfg.IDC, "idc", "", "locality label of the seed: data center (peers in it prefer the seed to parents in other idcs)")
	fs.StringVar(&cfg.Rack, "rack", "", "locality label of the seed: rack")
	fs.Var(&quota, "quota", "cap on the seed's store, e.g. 50G (K, M, G, T are powers of 1024; 0 = none)")
	fs.BoolVar(&cfg.DirectIO, "direct-io", false, "move block bytes around the page cache (O_DIRECT) instead of caching them and uploading with sendfile")
	var storeKeyFile string
	cli.AddStoreKeyFlag(fs, &storeKeyFile)
	fs.Var(&rate, "upload-rate", "upload rate limit of the seed in bytes/s, e.g. 100M (0 = unlimited)")
	fs.IntVar(&cfg.MaxUploads, "max-uploads", 64, "maximum concurrent uploads from the seed (more get HTTP 429)")
	fs.IntVar(&cfg.SeedConcurrency, "seed-concurrency", 6, "parallel Range requests to the origin per task")
	compressMode := fs.String("compress", "auto", "compression of the seed's blocks: auto (try each stored block once with zstd while the supernode is not loaded, keep forms saving >= 10% in STORE/compressed, at most a quarter of --quota, and serve them to peers that ask), always (try every block whatever the load), off")
	fs.IntVar(&cfg.Scheduler.MaxCrossIDCTransfers, "max-cross-idc-transfers", 16, "block transfers in flight per task from parents in another idc into one idc (-1 = unbounded)")
	fs.DurationVar(&heartbeat, "heartbeat", 2*time.Second, "heartbeat interval given to peers; a peer silent for 3 intervals expires")
	var caFiles []string
	fs.StringSliceVar(&caFiles, "ca-file", nil, "PEM file of CA certificates trusted (besides the system's) for HTTPS origins and registries; repeatable")
	fs.DurationVar(&cfg.TokenTTL, "token-ttl", time.Hour, "lifetime of the task tokens the supernode signs (peers renew them past three quarters)")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	var registryConfig, notifySecretFile string
	var registryInsecure []string
	fs.StringVar(&registryConfig, "registry-config", "", "docker config.json with registry credentials for image preheat (default: $DOCKER_CONFIG, ~/.docker)")
	fs.StringSliceVar(&registryInsecure, "registry-insecure", nil, "registry HOST:PORT image preheat reaches over plain HTTP (loopback always is); repeatable")
	fs.StringVar(&cfg.APIListen, "api-listen", "", "also serve the preheat API and the registry notification endpoints here (plain, or TLS without client certificates in a TLS swarm, so registries can notify); \"\" = only on the upload server")
	var metricsListen string
	fs.StringVar(&metricsListen, "metrics-listen", ":8004", "listen address of GET /metrics (Prometheus), /healthz (liveness) and /readyz (readiness: store open, gRPC serving); \"\" disables")
	fs.StringVar(&notifySecretFile, "notify-secret-file", "", "file holding the shared secret registry notifications and Harbor webhooks send as Authorization: Bearer SECRET (unset: those endpoints refuse all)")
	tlsFlags := cli.AddTLSFlags(fs, true)
	traceFlags := cli.AddTraceFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q; see --help", fs.Args())}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)}
	}
	if cfg.StoreDir == "" {
		return usageError{errors.New("--store DIR is required (the seed's block store and token key live there)")}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.Quota, cfg.UploadRate = int64(quota), int64(rate)
	mode, err := compress.ParseMode(*compressMode)
	if err != nil {
		return usageError{fmt.Errorf("--compress: %w", err)}
	}
	cfg.Compress = mode
	cfg.Scheduler.HeartbeatInterval = heartbeat
	cfg.Logger = log
	if len(caFiles) > 0 {
		tc, err := source.LoadCAs(caFiles...)
		if err != nil {
			return usageError{fmt.Errorf("--ca-file: %w", err)}
		}
		cfg.Source = source.New(source.Options{TLS: tc, Logger: log})
	}
	if cfg.StoreKey, err = cli.LoadStoreKey(storeKeyFile); err != nil {
		return usageError{fmt.Errorf("--store-key-file: %w", err)}
	}
	if cfg.TLS, err = tlsFlags.Load(log); err != nil {
		return usageError{err}
	}
	if cfg.Tracing, err = traceFlags.Start(ctx, "supernode", log); err != nil {
		return usageError{err}
	}
	defer cli.StopTracing(cfg.Tracing, log) // after the supernode closed: its last spans go too

	kc, err := oci.DockerConfigKeychain(registryConfig)
	if err != nil {
		return usageError{fmt.Errorf("--registry-config: %w", err)}
	}
	cfg.Preheat.Registry = &oci.Resolver{Keychain: kc, Insecure: registryInsecure}
	if notifySecretFile != "" {
		b, err := os.ReadFile(notifySecretFile)
		if err != nil {
			return usageError{fmt.Errorf("--notify-secret-file: %w", err)}
		}
		if cfg.Preheat.NotifySecret = strings.TrimSpace(string(b)); len(cfg.Preheat.NotifySecret) < 16 {
			return usageError{fmt.Errorf("--notify-secret-file %s: the secret has %d characters, want at least 16", notifySecretFile, len(cfg.Preheat.NotifySecret))}
		}
	}

	reg := telemetry.NewRegistry("supernode", telemetry.Version())
	cfg.Metrics = supernode.NewMetrics(reg)
	sn, err := supernode.Start(cfg)
	if err != nil {
		return err
	}
	var metrics *telemetry.Server
	if metricsListen != "" {
		if metrics, err = telemetry.Listen(metricsListen, telemetry.Handler(reg, sn.Ready), log); err != nil {
			_ = sn.Close()
			return err
		}
		defer closeMetrics(metrics, log)
	}
	ready := fmt.Sprintf("supernode listening grpc=%s upload=%s", sn.GRPCAddr(), sn.UploadAddr())
	if a := sn.APIAddr(); a != "" {
		ready += " api=" + a
	}
	if metrics != nil {
		ready += " metrics=" + metrics.Addr()
	}
	fmt.Fprintln(stdout, ready)
	log.Info("supernode ready", "grpc", sn.GRPCAddr(), "upload", sn.UploadAddr(), "advertise", sn.Advertise(), "store", cfg.StoreDir)
	<-ctx.Done()
	log.Info("shutting down")
	if err := sn.Close(); err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	return nil
}

// closeMetrics stops the metrics listener (after the supernode: /readyz
// says "shutting down" meanwhile).
func closeMetrics(s *telemetry.Server, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		log.Warn("stop the metrics listener", "err", err)
	}
}

// byteSize is a pflag value for sizes such as 100M, 1.5G, 4096 or 10MiB
// (K, M, G, T are powers of 1024; a trailing B or iB is ignored).
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }
func (b *byteSize) Type() string   { return "size" }
func (b *byteSize) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "B")
	t = strings.TrimSuffix(t, "I")
	mult := int64(1)
	if t != "" {
		if i := strings.IndexByte("KMGT", t[len(t)-1]); i >= 0 {
			mult = int64(1) << (10 * (i + 1))
			t = t[:len(t)-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if v := f * float64(mult); err != nil || f < 0 || !(v < math.MaxInt64) { // (NaN, Inf, past int64)
		return 0, fmt.Errorf("size %q: want a non-negative number with an optional K, M, G or T suffix, e.g. 100M", s)
	}
	return int64(f * float64(mult)), nil
}
