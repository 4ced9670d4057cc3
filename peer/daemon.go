package peer

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/internal/flow"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/internal/tlsconf"
)

// DaemonConfig configures a Daemon (one per host: it owns the host's block store).
type DaemonConfig struct {
	// PreheatRate caps the bytes/s of preheat orders from the supernode
	// (preheat jobs with a host selector); 0 = only the download limit.
	// Preheats also wait while a foreground download runs on this host.
	PreheatRate int64
	// Supernode is the supernode's gRPC address; empty = origin mode (no swarm, no uploads).
	Supernode string
	// Listen is the upload server's address (default 0.0.0.0:8003).
	Listen string
	// Advertise is the HOST:PORT peers reach the upload server at (default:
	// the listen address, with an unspecified host replaced by this host's first
	// non-loopback IPv4).
	Advertise string
	// Sock is the local API's unix socket (default DefaultSocketPath()).
	Sock string
	// StoreDir is the block store directory. Required.
	StoreDir string
	// Quota caps the store (bytes); 0 = none.
	Quota int64
	// DirectIO keeps block bytes out of the page cache (blockstore.Options.DirectIO).
	DirectIO bool
	// StoreKey encrypts the store at rest (blockstore.Options.Key,
	// blockstore.LoadKey); nil = plain.
	StoreKey []byte
	// HostID overrides the ID used with the supernode.
	HostID    string
	IDC, Rack string
	// UploadRate and DownloadRate cap the host's traffic in bytes/s; 0 = unlimited.
	UploadRate, DownloadRate int64
	// MaxUploads caps concurrent uploads (default 16).
	MaxUploads int
	// Concurrency is the number of parallel block fetches per download (default 8).
	Concurrency int
	// BlockTimeout: see SwarmConfig.BlockTimeout.
	BlockTimeout time.Duration
	// CorruptUploads is a TEST HOOK (dfdaemon --debug-corrupt-uploads): the
	// upload server flips a byte of every block it serves.
	CorruptUploads bool
	// E2EPrivate makes every download with credentials (private content)
	// end-to-end encrypted (Request.E2E), as if it asked for it.
	E2EPrivate bool
	// TLS configures HTTPS to origins and registries (source.LoadCAs for a
	// private CA); nil = the system CAs.
	TLS *tls.Config
	// SwarmTLS secures the swarm's links (nil = plain TCP): the upload
	// server serves TLS with its certificate (requiring client certificates
	// with ClientAuth) and the swarm dials with it (SwarmConfig.TLS). It
	// needs a certificate when the daemon joins a swarm.
	SwarmTLS *tlsconf.Reloader
	Logger   *slog.Logger
	// Metrics, if set, receives the engine's, the upload server's and the
	// preheats' counters (see Metrics).
	Metrics *Metrics
	// Tracing traces the local API's downloads, the engine, the swarm's
	// calls and sampled blocks, and the upload server (docs/tracing.md);
	// nil: off.
	Tracing *telemetry.Tracing
	// Compress is the data plane's compression (dfdaemon --compress):
	// Auto asks parents for compressed forms while it pays, Always
	// always; both keep the forms received in StoreDir/compressed (at
	// most a quarter of Quota) and serve them on. Off (the zero value):
	// plain blocks only.
	Compress compress.Mode
	// Flow is the flow control (dfdaemon --flow, --flow-ceiling,
	// --flow-iface, --disk-backoff; daemon_flow.go). The zero value is the
	// fixed limits only; StoreDir, Supernode, DownloadRate and UploadRate
	// fill its store, target and fixed fields.
	Flow flow.Options
}

// Daemon is a running dfdaemon: block store, engine, swarm, upload server and local API.
type Daemon struct {
	cfg    DaemonConfig
	log    *slog.Logger
	store  *blockstore.Store
	engine *Engine
	swarm  *SupernodeSwarm // nil in origin mode
	upload *UploadServer
	sock   string
	advert string

	upLn, sockLn net.Listener
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	closeOnce    sync.Once
	downloads    atomic.Int64
	preheat      *preheater       // nil in origin mode
	recent       *Recent          // the last hour, for GET /v1/status (localapi_status.go)
	compress     *compression     // nil when off (daemon_compress.go)
	flow         *flow.Controller // nil without flow control (daemon_flow.go)
}

// StartDaemon opens the store, starts the upload server, joins the swarm and
// serves the local API. Stop it with Close.
func StartDaemon(ctx context.Context, cfg DaemonConfig) (_ *Daemon, err error) {
	if cfg.StoreDir == "" {
		return nil, fmt.Errorf("dfdaemon: no store directory (--store DIR): %w", blockstore.ErrInvalid)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Listen == "" {
		cfg.Listen = "0.0.0.0:8003"
	}
	if cfg.Sock == "" {
		cfg.Sock = DefaultSocketPath()
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, sock: cfg.Sock, recent: NewRecent(nil)}
	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()
	d.store, err = blockstore.Open(cfg.StoreDir, blockstore.Options{Quota: cfg.Quota, DirectIO: cfg.DirectIO, Key: cfg.StoreKey, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, func() { d.store.Close() })
	if d.compress, err = openCompression(cfg, d.store); err != nil {
		return nil, err
	}
	cleanup = append(cleanup, d.compress.close)

	if cfg.Supernode != "" {
		d.upLn, err = net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("dfdaemon: upload server cannot listen on %s (another dfdaemon? pass --listen): %w", cfg.Listen, err)
		}
		cleanup = append(cleanup, func() { d.upLn.Close() })
		d.advert = cfg.Advertise
		if d.advert == "" {
			d.advert = advertiseAddr(d.upLn.Addr().(*net.TCPAddr))
		}
		if cfg.SwarmTLS != nil {
			if !cfg.SwarmTLS.HasCertificate() {
				return nil, fmt.Errorf("dfdaemon: TLS without a certificate for the upload server: pass --tls-cert and --tls-key: %w", tlsconf.ErrNoCertificate)
			}
			d.upLn = cfg.SwarmTLS.NewListener(d.upLn)
		}
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Sock), 0o755); err != nil {
		return nil, fmt.Errorf("dfdaemon: create socket directory: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, derr := DialDaemon(pctx, cfg.Sock)
	cancel()
	switch {
	case derr == nil:
		c.Close()
		return nil, fmt.Errorf("dfdaemon: another dfdaemon already answers on %s; stop it or pass --sock", cfg.Sock)
	case !errors.Is(derr, ErrNoDaemon):
		return nil, fmt.Errorf("dfdaemon: something listens on %s but does not answer (a hung dfdaemon?); stop it or pass --sock: %w", cfg.Sock, derr)
	}
	_ = os.Remove(cfg.Sock) // stale socket of a dead daemon
	d.sockLn, err = net.Listen("unix", cfg.Sock)
	if err != nil {
		return nil, fmt.Errorf("dfdaemon: listen on %s: %w", cfg.Sock, err)
	}
	cleanup = append(cleanup, func() { d.sockLn.Close(); os.Remove(cfg.Sock) })
	if err := os.Chmod(cfg.Sock, 0o666); err != nil {
		return nil, fmt.Errorf("dfdaemon: chmod %s: %w", cfg.Sock, err)
	}
	// Go listens with the largest backlog the kernel allows
	// (net.core.somaxconn); a client finding the accept queue full waits
	// and retries (see dialDaemon), but a short queue makes bursts slow.
	if n, err := somaxconn(); err == nil && n < minSockBacklog {
		d.log.Warn("the local API's accept queue is short: bursts of more dfget clients than this wait for their turn",
			"net.core.somaxconn", n, "raise_with", fmt.Sprintf("sysctl -w net.core.somaxconn=%d", 4096))
	}

	if err := d.newFlow(ctx); err != nil {
		return nil, err
	}
	var sw Swarm
	if cfg.Supernode != "" {
		d.upload = NewUploadServer(UploadConfig{Store: d.store, Rate: cfg.UploadRate, MaxUploads: cfg.MaxUploads,
			CorruptUploads: cfg.CorruptUploads, Logger: cfg.Logger, Metrics: cfg.Metrics, Compress: d.compress.Host()})
		secret, serr := loadOrCreateHostSecret(filepath.Join(cfg.StoreDir, "host.secret"))
		if serr != nil {
			return nil, fmt.Errorf("dfdaemon: %w", serr)
		}
		d.preheat = newPreheater(cfg.Logger, cfg.PreheatRate, func() bool { return d.engine != nil && d.engine.Busy() },
			func(job, task string, err error) { d.swarm.ReportPreheat(job, task, err) })
		d.preheat.metrics = cfg.Metrics
		d.preheat.background = func(ctx context.Context, n int64) error { return d.engine.PaceBackground(ctx, n) }
		d.swarm, err = NewSwarm(ctx, SwarmConfig{
			OnPreheat: d.preheat.offer, HostStats: d.hostStats, ReceiveBuffer: d.receiveBuffer(),
			Supernode: cfg.Supernode, Store: d.store, HostID: cfg.HostID, UploadAddr: d.advert, HostSecret: secret,
			IDC: cfg.IDC, Rack: cfg.Rack, UploadCapacity: cfg.UploadRate, BlockTimeout: cfg.BlockTimeout, TLS: cfg.SwarmTLS,
			UploadStats: func() (int32, int64) {
				s := d.upload.Stats()
				return s.InFlight, s.BytesServed
			},
			Logger:   cfg.Logger,
			Tracing:  cfg.Tracing,
			Compress: d.compress.Host(),
		})
		if err != nil {
			return nil, err
		}
		cleanup = append(cleanup, func() { d.swarm.Close() })
		d.upload.cfg.Tokens = d.swarm
		d.upload.cfg.Tracing = cfg.Tracing
		sw = d.swarm
	}
	d.engine, err = New(Config{Store: d.store, Source: source.New(source.Options{Logger: cfg.Logger, TLS: cfg.TLS}),
		Concurrency: cfg.Concurrency, DownloadRate: cfg.DownloadRate, Logger: cfg.Logger, Swarm: sw, Metrics: cfg.Metrics,
		Recent: d.recent, Tracing: cfg.Tracing})
	if err != nil {
		return nil, err
	}

	if d.preheat != nil {
		d.preheat.start(d.runPreheat)
		cleanup = append(cleanup, d.preheat.close)
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.cancel = cancel
	d.runFlow(sctx)
	if d.upload != nil {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := d.upload.Serve(sctx, d.upLn); err != nil {
				d.log.Error("upload server stopped", "err", err)
			}
		}()
	}
	api := &localAPI{d: d, log: cfg.Logger}
	srv := &http.Server{Handler: api.handler(), ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if cred, ok := peerCred(c); ok {
				return context.WithValue(ctx, credKey{}, cred)
			}
			return ctx
		}}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(d.sockLn) }()
		select {
		case err := <-errc:
			if !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("local API stopped", "err", err)
			}
			return
		case <-sctx.Done():
		}
		shctx, c := context.WithTimeout(context.Background(), 3*time.Second)
		defer c()
		if err := srv.Shutdown(shctx); err != nil {
			srv.Close()
		}
		<-errc
	}()
	return d, nil
}

// minSockBacklog is the accept queue below which the daemon warns.
const minSockBacklog = 1024

// somaxconn reads the kernel's cap on listen backlogs.
func somaxconn() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// advertiseAddr turns a listen address into one peers can reach.
func advertiseAddr(a *net.TCPAddr) string {
	if !a.IP.IsUnspecified() {
		return a.String()
	}
	host := "127.0.0.1"
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, ad := range addrs {
			if ipn, ok := ad.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
				host = ipn.IP.String()
				break
			}
		}
	}
	return net.JoinHostPort(host, fmt.Sprint(a.Port))
}

// UploadAddr is the advertised upload address ("" in origin mode).
func (d *Daemon) UploadAddr() string { return d.advert }

// SockPath is the local API's socket.
func (d *Daemon) SockPath() string { return d.sock }

// Engine returns the daemon's engine.
func (d *Daemon) Engine() *Engine { return d.engine }

// Stats returns the daemon's counters.
func (d *Daemon) Stats() DaemonStats {
	s := DaemonStats{UploadAddr: d.advert, Store: d.store.Stats(), Fallbacks: d.engine.Fallbacks(), Downloads: d.downloads.Load()}
	if c := d.compress.Host(); c != nil {
		cs := c.Stats()
		s.Compression = &cs
	}
	s.Flow = d.flowStatus()
	if d.upload != nil {
		s.Upload = d.upload.Stats()
	}
	if d.swarm != nil {
		ss := d.swarm.Stats()
		s.Swarm = &ss
		s.HostID = d.swarm.HostID()
	}
	return s
}

// Download downloads dr through the engine and writes the output (see the local API).
func (d *Daemon) Download(ctx context.Context, dr DownloadRequest, cred *syscall.Ucred, progress func(Progress)) (DownloadResult, error) {
	d.downloads.Add(1)
	req := Request{URL: dr.URL, Digest: dr.Digest, TaskID: dr.TaskID, Tag: dr.Tag, E2E: dr.E2E}
	if len(dr.Headers) > 0 {
		req.Header = http.Header{}
		for k, v := range dr.Headers {
			req.Header.Set(k, v)
		}
	}
	if d.cfg.E2EPrivate && source.Sensitive(req.Header) {
		req.E2E = true
	}
	start := time.Now()
	// Open first: a request the origin refuses (or a private task the
	// caller may not read) leaves no file behind, not even a temporary one.
	t, err := d.engine.Open(ctx, req)
	if err != nil {
		d.cfg.Metrics.download(ctx, err)
		d.recent.Done(fmt.Errorf("download %s: %w", dr.URL, err))
		return DownloadResult{}, fmt.Errorf("download %s: %w", dr.URL, err)
	}
	opened := time.Since(start)
	opts := DownloadOptions{Progress: progress}
	var of *outputFile
	if dr.Output != "" {
		// The engine writes each block to the output as soon as it is
		// stored (the verified bytes, while the transfer runs) and the rest
		// in the pass that verifies the whole content.
		if of, err = createOutput(dr.Output, d.log); err != nil {
			return DownloadResult{}, err
		}
		opts.OutputAt = of.w
	}
	res, err := t.Download(ctx, opts)
	res.Open = opened
	if res.FirstBlock > 0 {
		res.FirstBlock += opened
	}
	if err != nil {
		if of != nil {
			of.abort()
		}
		return DownloadResult{}, fmt.Errorf("download %s: %w", dr.URL, err)
	}
	out := DownloadResult{
		TaskID: res.Task.ID, Output: dr.Output, Length: res.Task.Length, Digest: res.Task.Digest, Verified: res.Task.Verified,
		BytesLocal: res.Stats.BytesLocal, BytesOrigin: res.Stats.BytesOrigin, BytesSeed: res.Stats.BytesSeed,
		BytesPeers: res.Stats.BytesPeers, Fallbacks: res.Fallback,
	}
	var commit time.Duration
	if of != nil {
		began := time.Now()
		sum, err := of.commit(res.Task, cred)
		if err != nil {
			return DownloadResult{}, err
		}
		out.SHA256 = sum
		commit = time.Since(began)
	} else if algo, hexsum, err := blockstore.ParseDigest(res.Task.Digest); err == nil && algo == "sha256" {
		out.SHA256 = hexsum
	}
	out.DurationMS = time.Since(start).Milliseconds()
	attrs := []any{"task", out.TaskID, "bytes", out.Length, "origin", out.BytesOrigin,
		"seed", out.BytesSeed, "peers", out.BytesPeers, "fallbacks", out.Fallbacks, "ms", out.DurationMS,
		"open_ms", res.Open.Milliseconds(), "first_block_ms", res.FirstBlock.Milliseconds(),
		"verify_ms", res.Verify.Milliseconds(), "hashed_early", res.HashedEarly, "commit_ms", commit.Milliseconds()}
	if d.swarm != nil { // where the host's swarm time went (cumulative over its downloads)
		ss := d.swarm.Stats()
		attrs = append(attrs, "syncs", ss.Syncs, "empty_rounds", ss.EmptyRounds, "seed_pending_rounds", ss.SeedPendingRounds, "wait_s", fmt.Sprintf("%.1f", ss.WaitSeconds),
			"transfer_s", fmt.Sprintf("%.1f", ss.TransferSeconds), "steals", ss.Steals, "parent_errors", ss.ParentErrors, "parent_busy", ss.ParentBusy)
	}
	d.log.Info("download complete", attrs...)
	return out, nil
}

// Close stops serving, leaves the swarm and closes the store.
func (d *Daemon) Close() error {
	var err error
	d.closeOnce.Do(func() {
		d.cancel()
		d.wg.Wait()
		if d.preheat != nil {
			d.preheat.close()
		}
		if d.swarm != nil {
			err = errors.Join(err, d.swarm.Close())
		}
		err = errors.Join(err, d.engine.Close())
		d.compress.close()
		err = errors.Join(err, d.store.Close())
		os.Remove(d.sock)
	})
	return err
}

// loadOrCreateHostSecret returns the host's secret for the supernode's
// host authentication (SwarmConfig.HostSecret), kept beside the store so a
// restarted daemon keeps its host id.
func loadOrCreateHostSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if s := strings.TrimSpace(string(b)); len(s) >= 16 {
			return s, nil
		}
		return "", fmt.Errorf("host secret %s is too short; delete it to make a new one", path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read host secret: %w", err)
	}
	s := rand.Text()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write host secret: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("install host secret: %w", err)
	}
	return s, nil
}

// runPreheat fetches a preheat order into the store (no output), pacing
// every block (see preheater.pace).
func (d *Daemon) runPreheat(ctx context.Context, o PreheatOrder, pace func(context.Context, int64) error) error {
	_, err := d.engine.Download(ctx, Request{URL: o.URL, Header: o.Header, Digest: o.Digest, TaskID: o.TaskID, Tag: o.Tag},
		DownloadOptions{Pace: pace})
	return err
}
