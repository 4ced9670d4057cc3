// Command dfmount mounts remote files lazily through FUSE: the files appear at
// once under DIR, reads fault in the blocks they touch, and a background
// prefetcher fetches the rest (throttled) and verifies the whole content.
//
// Status: the mount process rewrites STORE/mounts/<first 16 hex digits of
// sha256(absolute DIR)>.json every second (atomically, by rename) with its
// pid and, per file, the prefetch progress (blocks present/total, bytes/s,
// verified, errors) and where the bytes came from. dfmount --status DIR
// reads it, checks that the pid is alive, and prints it (--json: raw). A file
// was chosen over a socket because it needs no server in the mount process,
// survives as evidence after a crash, and is readable by scripts with jq.
//
// Engine: newEngine builds the engine in one place (standalone: an embedded
// engine over the store in origin mode; swarm mode plugs in there).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"golang.org/x/time/rate"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	dfs "github.com/dfly-p2p/dfly/fs"
	"github.com/dfly-p2p/dfly/fs/prefetch"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/internal/tlsconf"
	"github.com/dfly-p2p/dfly/peer"
)

// Exit codes (documented in --help).
const (
	exitOK          = 0
	exitFailure     = 1 // anything not below
	exitUsage       = 2 // bad flags or arguments
	exitMountpoint  = 3 // DIR missing, not a directory, not empty, already mounted, not a dfly mount (-u)
	exitNoFUSE      = 4 // no /dev/fuse, no permission, mount(2)/fusermount3 refused
	exitUnreachable = 5 // the origin is unreachable or answered an error at mount time
	exitStore       = 6 // the block store cannot be opened (in use, no space, quota)
	exitNotRunning  = 7 // --status: no live dfmount on DIR
)

const usageHead = `usage:
  dfmount URL [URL...] DIR [flags]   mount the URLs' content as files under DIR (foreground)
  dfmount -u DIR                     unmount DIR (also cleans a stale mount)
  dfmount --status DIR               show the prefetch progress of the mount at DIR

The files are read-only; reads fetch only the blocks they touch. Stop with
Ctrl-C, SIGTERM or dfmount -u DIR: the mount is removed cleanly. A mount
left behind by a killed dfmount is detected and cleaned by the next dfmount
of the same DIR, and the blocks fetched before are reused.

Status: the mount process rewrites STORE/mounts/<hash of DIR>.json every
second; dfmount --status DIR reads it (pass the same --store).

Rates take a byte count per second with an optional binary suffix:
512K, 10M, 1.5G (K = 1024).

Exit codes:
  0 ok   1 other error   2 bad flags or arguments
  3 DIR missing / not a directory / not empty / already mounted
  4 no /dev/fuse or no permission to mount
  5 URL unreachable or refused at mount time
  6 block store unusable (in use by another process, no space, quota)
  7 --status: no dfmount running on DIR

flags:
`

type config struct {
	urls        []string
	dir         string
	names       []string
	digests     []string
	headers     http.Header
	supernode   string
	prefetch    bool
	order       prefetch.Order
	prefetchBps int64
	diskBps     int64
	concurrency int
	timeout     time.Duration
	allowOther  bool
	store       string
	quiet       bool
	debug       bool
	swarmTLS    *tlsconf.Reloader // the embedded peer's swarm links; nil = plain
	metrics     string            // --metrics-listen; "" = off
	tracing     *telemetry.Tracing
}

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func fail(code int, format string, a ...any) error {
	return &exitError{code: code, err: fmt.Errorf(format, a...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is dfmount's main; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fset := pflag.NewFlagSet("dfmount", pflag.ContinueOnError)
	fset.SetOutput(stderr)
	var (
		unmount, status, jsonOut, help    bool
		orderName, prefetchRate, diskRate string
		headers                           []string
		cfg                               config
	)
	fset.BoolVarP(&unmount, "unmount", "u", false, "unmount DIR")
	fset.BoolVar(&status, "status", false, "print the progress of the mount at DIR")
	fset.BoolVar(&jsonOut, "json", false, "with --status: print the raw JSON status")
	fset.StringVar(&cfg.supernode, "supernode", "", "supernode gRPC address HOST:PORT: fetch from the swarm (falling back to the origin); empty = origin only")
	fset.StringArrayVar(&cfg.digests, "digest", nil, "expected whole-content digest sha256:HEX or md5:HEX (once per URL, in order)")
	fset.BoolVar(&cfg.prefetch, "prefetch", true, "fetch every block in the background and verify the whole content")
	fset.StringVar(&orderName, "prefetch-order", "", "prefetch order: sequential | rarest (default: rarest with --supernode, else sequential)")
	fset.StringVar(&prefetchRate, "prefetch-rate", "0", "network rate of the prefetcher in bytes/s (0 = unlimited)")
	fset.StringVar(&diskRate, "disk-rate", "0", "disk-write rate of the prefetcher in bytes/s (0 = unlimited)")
	fset.IntVar(&cfg.concurrency, "concurrency", 4, "blocks the prefetcher fetches in parallel")
	fset.DurationVar(&cfg.timeout, "timeout", 30*time.Second, "a read that gets no data within this time fails with EIO")
	fset.StringArrayVarP(&headers, "header", "H", nil, `HTTP header for the origin, "Name: value" (repeatable)`)
	fset.StringArrayVar(&cfg.names, "name", nil, "file name under DIR (once per URL, in order; default: the URL's last path element)")
	fset.BoolVar(&cfg.allowOther, "allow-other", false, "let other users read the mount (needs user_allow_other in /etc/fuse.conf when not root)")
	fset.StringVar(&cfg.store, "store", defaultStore(), "block store directory (env DFLY_STORE)")
	fset.BoolVarP(&cfg.quiet, "quiet", "q", false, "log only warnings and errors")
	fset.BoolVar(&cfg.debug, "debug", false, "log every FUSE request")
	fset.StringVar(&cfg.metrics, "metrics-listen", "", "listen address of /metrics (Prometheus), /healthz and /readyz (ready: the block store is open), e.g. 127.0.0.1:65004; empty = off")
	tlsFlags := cli.AddTLSFlags(fset, false)
	traceFlags := cli.AddTraceFlags(fset)
	fset.BoolVarP(&help, "help", "h", false, "show this help")
	fset.Usage = func() {
		fmt.Fprint(stderr, usageHead)
		fmt.Fprint(stderr, fset.FlagUsages())
	}
	if err := fset.Parse(args); err != nil {
		fmt.Fprintf(stderr, "dfmount: %v (see dfmount --help)\n", err)
		return exitUsage
	}
	if help {
		fset.SetOutput(stdout)
		fmt.Fprint(stdout, usageHead)
		fmt.Fprint(stdout, fset.FlagUsages())
		return exitOK
	}
	level := slog.LevelInfo
	if cfg.quiet {
		level = slog.LevelWarn
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	pos := fset.Args()
	var err error
	switch {
	case unmount || status:
		if len(pos) != 1 {
			fmt.Fprintln(stderr, "dfmount: -u and --status take exactly one argument, DIR (see dfmount --help)")
			return exitUsage
		}
		if unmount {
			err = doUnmount(pos[0], log)
		} else {
			err = doStatus(pos[0], cfg.store, jsonOut, stdout)
		}
	default:
		err = parseConfig(&cfg, pos, headers, orderName, prefetchRate, diskRate)
		if err == nil && tlsFlags.Enabled() {
			if cfg.supernode == "" {
				err = fail(exitUsage, "the --tls-* flags secure the swarm links of --supernode: they need it")
			} else if cfg.swarmTLS, err = tlsFlags.Load(log); err != nil {
				err = &exitError{code: exitUsage, err: err}
			}
		}
		if err == nil {
			if cfg.tracing, err = traceFlags.Start(ctx, "dfmount", log); err != nil {
				err = &exitError{code: exitUsage, err: err}
			} else {
				defer cli.StopTracing(cfg.tracing, log)
			}
		}
		if err == nil {
			err = mountAndServe(ctx, cfg, log)
		}
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "dfmount: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailure
}

func defaultStore() string {
	if s := os.Getenv("DFLY_STORE"); s != "" {
		return s
	}
	if os.Geteuid() == 0 {
		return "/var/lib/dfly/dfmount"
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "dfly", "dfmount")
	}
	return filepath.Join(os.TempDir(), "dfly-dfmount")
}

func parseConfig(cfg *config, pos, headers []string, orderName, prefetchRate, diskRate string) error {
	if len(pos) < 2 {
		return fail(exitUsage, "need at least one URL and a DIR (see dfmount --help)")
	}
	cfg.urls, cfg.dir = pos[:len(pos)-1], pos[len(pos)-1]
	for _, u := range cfg.urls {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return fail(exitUsage, "%q is not an http(s) URL", u)
		}
	}
	if len(cfg.names) > len(cfg.urls) {
		return fail(exitUsage, "%d --name for %d URLs: give at most one per URL", len(cfg.names), len(cfg.urls))
	}
	if len(cfg.digests) > len(cfg.urls) {
		return fail(exitUsage, "%d --digest for %d URLs: give at most one per URL", len(cfg.digests), len(cfg.urls))
	}
	for _, d := range cfg.digests {
		if _, _, err := blockstore.ParseDigest(d); err != nil {
			return fail(exitUsage, "--digest: %w", err)
		}
	}
	for _, n := range cfg.names {
		if err := dfs.ValidName(n); err != nil {
			return fail(exitUsage, "--name: %w", err)
		}
	}
	cfg.headers = http.Header{}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return fail(exitUsage, "--header %q: want \"Name: value\"", h)
		}
		cfg.headers.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	var err error
	if orderName == "" && cfg.supernode != "" {
		orderName = "rarest"
	}
	if cfg.order, err = prefetch.ParseOrder(orderName); err != nil {
		return fail(exitUsage, "--prefetch-order: %w", err)
	}
	if cfg.prefetchBps, err = parseRate(prefetchRate); err != nil {
		return fail(exitUsage, "--prefetch-rate: %w", err)
	}
	if cfg.diskBps, err = parseRate(diskRate); err != nil {
		return fail(exitUsage, "--disk-rate: %w", err)
	}
	if cfg.timeout <= 0 {
		return fail(exitUsage, "--timeout must be positive, got %s", cfg.timeout)
	}
	if cfg.concurrency <= 0 {
		return fail(exitUsage, "--concurrency must be positive, got %d", cfg.concurrency)
	}
	if cfg.store == "" {
		return fail(exitUsage, "--store must not be empty")
	}
	return nil
}

// parseRate parses "0", "1048576", "512K", "10M", "1.5G", "10MiB" (binary units).
func parseRate(s string) (int64, error) {
	s = strings.TrimSpace(s)
	t := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(s), "/S"), "B"), "I")
	mult := 1.0
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:len(t)-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || !(v*mult < math.MaxInt64) { // (NaN, Inf, past int64)
		return 0, fmt.Errorf("%q: want a non-negative byte rate such as 0, 512K, 10M, 1.5G", s)
	}
	return int64(v * mult), nil
}

// engineConfig is what the engine is built from.
type engineConfig struct {
	storeDir    string
	supernode   string
	timeout     time.Duration
	concurrency int
	tls         *tlsconf.Reloader
	log         *slog.Logger
	metrics     *peer.Metrics // nil = none
	tracing     *telemetry.Tracing
}

// newEngine builds the peer engine dfmount reads through: an embedded engine
// over its own block store, fetching from the origin, and with --supernode
// from the swarm too (a leech like dfget's embedded peer: it fetches from
// peers and the seed, falling back to the origin, but serves nobody; its
// rarest-first order drives the prefetcher). The returned function closes
// the swarm, the engine and the store.
func newEngine(ctx context.Context, ec engineConfig) (*peer.Engine, *peer.SupernodeSwarm, func(), error) {
	key, err := cli.LoadStoreKey("") // a store encrypted at rest: its key in DFLY_STORE_KEY
	if err != nil {
		return nil, nil, nil, &exitError{code: exitStore, err: err}
	}
	st, err := blockstore.Open(ec.storeDir, blockstore.Options{Key: key, Logger: ec.log})
	if err != nil {
		return nil, nil, nil, &exitError{code: exitStore, err: err}
	}
	src := source.New(source.Options{Timeout: ec.timeout, Logger: ec.log})
	// CacheBlocks: the kernel keeps several 1 MiB reads in flight and they
	// rarely align with blocks; caching 16 verified blocks avoids reading and
	// hashing a block once per read.
	cfg := peer.Config{Store: st, Source: src, Concurrency: ec.concurrency, Logger: ec.log, CacheBlocks: 16, Metrics: ec.metrics, Tracing: ec.tracing}
	var sw *peer.SupernodeSwarm
	if ec.supernode != "" {
		// Half the read timeout for the swarm, so that the origin fallback
		// still fits in a read when nobody holds the block.
		sw, err = peer.NewSwarm(ctx, peer.SwarmConfig{Supernode: ec.supernode, Store: st, BlockTimeout: ec.timeout / 2, TLS: ec.tls, Logger: ec.log, Tracing: ec.tracing})
		if err != nil {
			st.Close()
			return nil, nil, nil, fail(exitUsage, "--supernode %s: %w", ec.supernode, err)
		}
		cfg.Swarm = sw
	}
	eng, err := peer.New(cfg)
	if err != nil {
		if sw != nil {
			sw.Close()
		}
		st.Close()
		return nil, nil, nil, err
	}
	return eng, sw, func() {
		if sw != nil {
			sw.Close()
		}
		eng.Close()
		if err := st.Close(); err != nil {
			ec.log.Error("close block store", "dir", ec.storeDir, "err", err)
		}
	}, nil
}

// mountedFile is one file of a mount and its prefetcher.
type mountedFile struct {
	name string
	url  string
	task *peer.Task
	pf   *prefetch.Prefetcher
}

func mountAndServe(ctx context.Context, cfg config, log *slog.Logger) error {
	dir, err := filepath.Abs(cfg.dir)
	if err != nil {
		return fail(exitMountpoint, "mount point %s: %w", cfg.dir, err)
	}
	if store, err := filepath.Abs(cfg.store); err == nil && (store == dir || strings.HasPrefix(store, dir+"/")) {
		// The server would deadlock on its own mount.
		return fail(exitUsage, "--store %s is inside the mount point %s; put it elsewhere", store, dir)
	}
	cleaned, err := dfs.PrepareMountpoint(dir)
	if cleaned {
		log.Warn("cleaned a stale mount left by a killed dfmount", "dir", dir)
	}
	if err != nil {
		return &exitError{code: exitMountpoint, err: err}
	}
	if err := dfs.CheckFUSE(); err != nil {
		return &exitError{code: exitNoFUSE, err: err}
	}
	var reg *prometheus.Registry
	var fm *dfs.Metrics
	var pfm *prefetch.Metrics
	ec := engineConfig{storeDir: cfg.store, supernode: cfg.supernode, timeout: cfg.timeout, concurrency: cfg.concurrency, tls: cfg.swarmTLS, log: log, tracing: cfg.tracing}
	if cfg.metrics != "" {
		reg = telemetry.NewRegistry("dfmount", telemetry.Version())
		ec.metrics, fm, pfm = peer.NewMetrics(reg), dfs.NewMetrics(reg), prefetch.NewMetrics(reg)
	}
	eng, sw, closeEngine, err := newEngine(ctx, ec)
	if err != nil {
		return err
	}
	defer closeEngine()
	if reg != nil {
		reg.MustRegister(peer.StoreCollector(eng.Store()))
		ms, err := telemetry.Listen(cfg.metrics, telemetry.Handler(reg, peer.StoreCheck(eng.Store())), log)
		if err != nil {
			return fail(exitFailure, "%w", err)
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_ = ms.Close(sctx)
		}()
		log.Info("metrics listening", "metrics", ms.Addr())
	}

	files, err := openFiles(ctx, eng, cfg, log)
	if err != nil {
		return err
	}
	entries := make([]dfs.Entry, len(files))
	for i, f := range files {
		entries[i] = dfs.Entry{Name: f.name, Content: f.task}
	}
	root, err := dfs.NewRoot(entries, dfs.Options{Timeout: cfg.timeout, Logger: log, Metrics: fm, Tracing: cfg.tracing})
	if err != nil {
		return fail(exitUsage, "%w", err)
	}
	srv, err := dfs.Mount(dir, root, dfs.MountOptions{AllowOther: cfg.allowOther, FsName: "dfly:" + files[0].name, Debug: cfg.debug, Logger: log})
	if err != nil {
		root.Close()
		return &exitError{code: exitNoFUSE, err: err}
	}
	for _, f := range files {
		info := f.task.Info()
		log.Info("mounted", "file", filepath.Join(dir, f.name), "size", info.Length, "block_size", info.BlockSize,
			"blocks_present", info.NumBlocks()-len(f.task.Missing()), "blocks", info.NumBlocks(), "state", info.State)
	}

	// Background work: prefetchers and the status writer, stopped by cancel.
	bg, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if cfg.prefetch {
		var netLim, diskLim *rate.Limiter
		burst := int(blockstore.MaxBlockSize)
		if cfg.prefetchBps > 0 {
			netLim = prefetch.NewLimiter(cfg.prefetchBps, burst)
		}
		if cfg.diskBps > 0 {
			diskLim = prefetch.NewLimiter(cfg.diskBps, burst)
		}
		for _, f := range files {
			var rank func([]int) []int
			if sw != nil {
				rank = func(missing []int) []int { return sw.Order(f.task, missing) }
			}
			f.pf = prefetch.New(f.task, prefetch.Options{Order: cfg.order, Rank: rank, NetworkLimiter: netLim, DiskLimiter: diskLim,
				Concurrency: cfg.concurrency, Logger: log, Name: f.name, Metrics: pfm})
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Run logs its own outcome; the file stays readable either way.
				_ = f.pf.Run(bg)
			}()
		}
	}
	sf := statusPath(cfg.store, dir)
	wg.Add(1)
	go func() {
		defer wg.Done()
		statusLoop(bg, sf, dir, files, log)
	}()

	unmounted := make(chan struct{})
	go func() { // ends when the filesystem is unmounted (by us below or externally)
		srv.Wait()
		close(unmounted)
	}()
	select {
	case <-ctx.Done():
		// A second Ctrl-C exits at once (a busy mount is detached lazily and
		// served until its last open file is closed).
		signal.Reset(os.Interrupt, syscall.SIGTERM)
		log.Info("interrupted; unmounting (interrupt again to exit at once)", "dir", dir)
		if err := srv.Unmount(10 * time.Second); err != nil {
			log.Error("unmount", "dir", dir, "err", err)
		}
		<-unmounted
	case <-unmounted:
		log.Info("unmounted", "dir", dir)
	}
	cancel()
	wg.Wait()
	if err := os.Remove(sf); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("remove status file", "file", sf, "err", err)
	}
	return nil
}

// openFiles opens a task per URL (no network when the store already has it).
func openFiles(ctx context.Context, eng *peer.Engine, cfg config, log *slog.Logger) ([]*mountedFile, error) {
	var files []*mountedFile
	names := map[string]bool{}
	for i, u := range cfg.urls {
		req := peer.Request{URL: u, Header: cfg.headers}
		if i < len(cfg.digests) {
			req.Digest = cfg.digests[i]
		}
		name := dfs.NameFromURL(u)
		if i < len(cfg.names) {
			name = cfg.names[i]
		}
		if names[name] {
			return nil, fail(exitUsage, "two URLs map to the file name %q; give each a --name", name)
		}
		names[name] = true
		octx, cancel := context.WithTimeout(ctx, cfg.timeout)
		t, err := eng.Open(octx, req)
		cancel()
		if err != nil {
			var he *source.HTTPError
			switch {
			case errors.Is(err, source.ErrUnreachable) || errors.As(err, &he) || errors.Is(err, context.DeadlineExceeded):
				return nil, fail(exitUnreachable, "open %s: %w; check the URL and that the origin is up", u, err)
			case errors.Is(err, blockstore.ErrQuota) || errors.Is(err, blockstore.ErrNoSpace):
				return nil, &exitError{code: exitStore, err: err}
			}
			return nil, fmt.Errorf("open %s: %w", u, err)
		}
		log.Debug("task opened", "url", u, "task", t.ID())
		files = append(files, &mountedFile{name: name, url: u, task: t})
	}
	return files, nil
}

func doUnmount(dir string, log *slog.Logger) error {
	if err := dfs.Unmount(dir); err != nil {
		if errors.Is(err, dfs.ErrMountpoint) {
			return &exitError{code: exitMountpoint, err: err}
		}
		return err
	}
	log.Info("unmounted", "dir", dir)
	return nil
}
