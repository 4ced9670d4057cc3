// Package supernode is dfly's control plane: a scheduler that knows which
// host holds which blocks of which task and picks parents for peers (see
// score.go), a streaming seed that fetches tasks from their origins into its
// own block store, an HTTP upload server for the seed's blocks, and the gRPC
// service (supernode/api) that ties them to the peers.
//
// Scheduling decisions (scheduler.go, score.go) are pure logic; connection
// handling (server.go, upload.go) and origin access (seed.go) are separate.
package supernode

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/internal/tlsconf"
	"github.com/dfly-p2p/dfly/supernode/api"
	"github.com/dfly-p2p/dfly/supernode/preheat"
)

// Config configures a supernode.
type Config struct {
	// StoreDir holds the seed's block store (StoreDir/blocks), the token
	// key (StoreDir/token.key) and the admin token (StoreDir/admin.token:
	// GET /debug/state answers loopback callers and holders of it).
	StoreDir string
	// Quota caps the seed's store (bytes); 0 = none.
	Quota int64
	// DirectIO keeps block bytes out of the page cache (blockstore.Options.DirectIO).
	DirectIO bool
	// StoreKey encrypts the seed's store at rest (blockstore.Options.Key,
	// blockstore.LoadKey); nil = plain.
	StoreKey []byte
	// GRPCListen and UploadListen are the listen addresses of the control
	// plane and of the seed's upload server (defaults 0.0.0.0:8002, :8001).
	GRPCListen   string
	UploadListen string
	// IDC and Rack are the seed's locality labels (where the supernode runs),
	// so that peers in its idc prefer it to parents in another idc.
	IDC, Rack string
	// Advertise is the host:port peers use to reach the upload server.
	// Default: the upload listener's address; when it listens on every
	// interface, the host's first non-loopback IPv4 address (127.0.0.1 if none).
	Advertise string
	// UploadRate caps the seed's upload bytes/s (0 = unlimited); it is also
	// the seed's declared capacity for scheduling.
	UploadRate int64
	// MaxUploads caps concurrent uploads from the seed (default 64).
	MaxUploads int
	// SeedConcurrency is the number of parallel origin Range requests per task (default 6).
	SeedConcurrency int
	// SeedID is the seed's host id in the swarm (default "seed").
	SeedID string
	// TokenTTL is how long a task token stays valid (default 1h); peers
	// register again before it runs out.
	TokenTTL time.Duration
	// SeedRevalidateAfter: a registration revalidates a complete seeded
	// task with its origin when the last check is older than this (default
	// 1s, so a burst of registrations costs one conditional HEAD).
	SeedRevalidateAfter time.Duration
	// SyncWait bounds how long a Sync waits for the seed when none of the
	// wanted blocks can be assigned yet (default 1s).
	SyncWait time.Duration
	// Scheduler tunes parent selection.
	Scheduler SchedulerConfig
	// Preheat configures preheat jobs and registry notifications.
	Preheat PreheatConfig
	// APIListen, if set, also serves the preheat API and the notification
	// endpoints there: plain, or in a TLS swarm TLS without client
	// certificates (for registries, which cannot present the swarm's).
	APIListen string
	// Source overrides the origin client.
	Source *source.Client
	// Metrics records the supernode's Prometheus metrics (NewMetrics);
	// nil: none.
	Metrics *Metrics
	// TLS secures the swarm's links (nil = plain TCP): the gRPC control
	// plane and the seed's upload server serve TLS with its certificate
	// (requiring client certificates with ClientAuth), and the supernode's
	// checks of accused peers fetch over HTTPS. The whole swarm uses TLS
	// or none. It needs a certificate.
	TLS    *tlsconf.Reloader
	Logger *slog.Logger
	// Tracing traces the gRPC calls that arrive inside a trace, the seed's
	// origin fetches and the upload server's sampled blocks
	// (docs/tracing.md); nil: off.
	Tracing *telemetry.Tracing
	// Compress is the seed's compression (supernode --compress, see
	// compress.go): Auto tries every stored block while the supernode is
	// not loaded, Always regardless; forms are kept in StoreDir/compressed
	// (at most a quarter of Quota) and served to peers that ask. Off (the
	// zero value): plain blocks only.
	Compress compress.Mode
}

// Supernode is a running supernode.
type Supernode struct {
	cfg    Config
	log    *slog.Logger
	store  *blockstore.Store
	signer ed25519.PrivateKey // signs task tokens (StoreDir/token.key is its seed)
	auth   *hostAuth
	grants *grants
	checks *accusations
	sched  *Scheduler
	seed   *Seed
	upload *UploadServer
	// preheat runs preheat jobs (StoreDir/preheat; API under /api/v1/).
	preheat *preheat.Manager
	orders  *hostOrders  // preheat orders for hosts, sent with heartbeats
	api     http.Handler // the preheat API and notification endpoints
	// apiLn and apiSrv serve api on Config.APIListen (nil without one).
	apiLn  net.Listener
	apiSrv *http.Server
	// status keeps the hosts' reports for GET /api/v1/status (status.go).
	status *statusBook
	// comp is the seed's compression (compress.go); nil when off.
	comp *seedCompression

	grpcLn, upLn net.Listener
	grpcSrv      *grpc.Server
	grpcDone     chan struct{} // closed when the gRPC server stopped serving
	httpSrv      *http.Server

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Start opens the store, binds both listeners and starts serving.
func Start(cfg Config) (_ *Supernode, err error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("supernode: a store directory is required (--store)")
	}
	if cfg.GRPCListen == "" {
		cfg.GRPCListen = "0.0.0.0:8002"
	}
	if cfg.UploadListen == "" {
		cfg.UploadListen = ":8001"
	}
	if cfg.SeedID == "" {
		cfg.SeedID = "seed"
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = time.Hour
	}
	if cfg.SyncWait <= 0 {
		cfg.SyncWait = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Source == nil {
		cfg.Source = source.New(source.Options{Logger: cfg.Logger})
	}
	s := &Supernode{cfg: cfg, log: cfg.Logger, stop: make(chan struct{}), grpcDone: make(chan struct{})}
	defer func() {
		if err != nil {
			s.closeResources()
		}
	}()
	key, err := LoadOrCreateTokenKey(filepath.Join(cfg.StoreDir, "token.key"))
	if err != nil {
		return nil, fmt.Errorf("supernode: %w", err)
	}
	s.signer = ed25519.NewKeyFromSeed(key)
	adminToken, err := LoadOrCreateAdminToken(filepath.Join(cfg.StoreDir, AdminTokenFile))
	if err != nil {
		return nil, fmt.Errorf("supernode: %w", err)
	}
	if s.store, err = blockstore.Open(filepath.Join(cfg.StoreDir, "blocks"), blockstore.Options{Quota: cfg.Quota, DirectIO: cfg.DirectIO, Key: cfg.StoreKey, Logger: cfg.Logger}); err != nil {
		return nil, fmt.Errorf("supernode: %w", err)
	}
	if s.upLn, err = net.Listen("tcp", cfg.UploadListen); err != nil {
		return nil, fmt.Errorf("supernode: listen for uploads on %s (--upload-listen): %w", cfg.UploadListen, err)
	}
	if s.grpcLn, err = net.Listen("tcp", cfg.GRPCListen); err != nil {
		return nil, fmt.Errorf("supernode: listen for gRPC on %s (--listen): %w", cfg.GRPCListen, err)
	}
	grpcOpts := cfg.Tracing.GRPCServerOptions()
	if cfg.TLS != nil {
		if !cfg.TLS.HasCertificate() {
			return nil, fmt.Errorf("supernode: TLS without a certificate: pass --tls-cert and --tls-key: %w", tlsconf.ErrNoCertificate)
		}
		s.upLn = cfg.TLS.NewListener(s.upLn)
		grpcOpts = append(grpcOpts, grpc.Creds(cfg.TLS.ServerCredentials()))
	}
	if s.cfg.Advertise == "" {
		s.cfg.Advertise = advertiseAddr(s.upLn.Addr().(*net.TCPAddr))
	}

	s.sched = NewScheduler(cfg.Scheduler)
	sc := s.sched.Config()
	s.auth = newHostAuth(time.Duration(sc.MissedHeartbeats)*sc.HeartbeatInterval, sc.Now)
	s.grants = newGrants()
	if err := s.startCompression(); err != nil {
		return nil, fmt.Errorf("supernode: %w", err)
	}
	s.seed = NewSeed(SeedConfig{
		Store: s.store, Source: cfg.Source, Concurrency: cfg.SeedConcurrency, Logger: cfg.Logger, RevalidateAfter: cfg.SeedRevalidateAfter, BeforeAnnounce: s.comp.stored,
		Metrics:   cfg.Metrics,
		Tracing:   cfg.Tracing,
		OnMeta:    s.setSeedHolding,
		OnBlock:   func(id string, idx int) { _ = s.sched.AddBlocks(id, s.cfg.SeedID, []int{idx}) },
		OnReset:   func(id string) { s.sched.ForgetTask(id) },
		OnDropped: func(id string, blocks []int) { s.sched.RemoveBlocks(id, s.cfg.SeedID, blocks) },
		E2ESecret: key,
	})
	s.announceSeed()

	s.upload = NewUploadServer(UploadConfig{Store: s.store, TokenKeys: []ed25519.PublicKey{s.TokenPublicKey()}, Rate: cfg.UploadRate, MaxUploads: cfg.MaxUploads, Logger: cfg.Logger, Tracing: cfg.Tracing, Compress: s.comp.Host(),
		OnCorrupt: func(id string, idx int) {
			s.sched.RemoveBlocks(id, s.cfg.SeedID, []int{idx})
			s.seed.Resume(id, "")
		}})
	s.upload.Handle("GET /debug/state", adminGuard(adminToken, http.HandlerFunc(s.serveState)))
	if err := s.startPreheat(adminToken); err != nil {
		return nil, fmt.Errorf("supernode: %w", err)
	}
	s.mountStatus(adminToken)
	if err := s.listenAPI(); err != nil {
		return nil, fmt.Errorf("supernode: %w", err)
	}
	s.httpSrv = &http.Server{Handler: s.upload, ReadHeaderTimeout: 10 * time.Second}
	s.checks = newAccusations(s)
	s.grpcSrv = grpc.NewServer(append(grpcOpts, grpc.UnaryInterceptor(s.auth.interceptor))...)
	api.RegisterSchedulerServer(s.grpcSrv, &service{sn: s})
	cfg.Metrics.attach(liveSource{store: s.store, sched: s.sched, seed: s.seed, upload: s.upload, preheat: s.preheat})

	s.wg.Add(3)
	go func() {
		defer s.wg.Done()
		if err := s.httpSrv.Serve(s.upLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("upload server stopped", "err", err)
		}
	}()
	if s.apiSrv != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.apiSrv.Serve(s.apiLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("API server stopped", "err", err)
			}
		}()
	}
	go func() {
		defer s.wg.Done()
		defer close(s.grpcDone)
		if err := s.grpcSrv.Serve(s.grpcLn); err != nil {
			s.log.Error("gRPC server stopped", "err", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		s.janitor()
	}()
	return s, nil
}

// setSeedHolding registers a seeded task with the scheduler and the blocks
// the seed holds of it.
func (s *Supernode) setSeedHolding(t blockstore.Task, have blockstore.Bitmap) {
	if err := s.sched.EnsureTask(TaskInfo{ID: t.ID, URL: t.Source, Length: t.Length, BlockSize: t.BlockSize}); err != nil {
		s.log.Error("scheduler rejected seeded task", "task", t.ID, "err", err)
		return
	}
	if err := s.sched.SetHolding(t.ID, s.cfg.SeedID, have); err != nil {
		s.log.Error("record the seed's blocks", "task", t.ID, "err", err)
	}
}

// registerSeedHolding registers a task the seed already resolved (the
// scheduler forgot it while idle) with the blocks in the seed's store.
func (s *Supernode) registerSeedHolding(t blockstore.Task) {
	have, err := s.store.Bitmap(t.ID)
	if err != nil {
		s.log.Warn("read the seed's bitmap", "task", t.ID, "err", err)
		have = blockstore.NewBitmap(t.NumBlocks())
	}
	s.setSeedHolding(t, have)
}

// advertiseAddr turns a listener address into one peers can dial.
func advertiseAddr(a *net.TCPAddr) string {
	if !a.IP.IsUnspecified() {
		return a.String()
	}
	ip := "127.0.0.1"
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, x := range addrs {
			if n, ok := x.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
				ip = n.IP.String()
				break
			}
		}
	}
	return net.JoinHostPort(ip, fmt.Sprint(a.Port))
}

// announceSeed registers (or refreshes) the seed as a host of the swarm.
func (s *Supernode) announceSeed() {
	s.sched.UpsertHost(HostInfo{ID: s.cfg.SeedID, UploadAddr: s.cfg.Advertise, IsSeed: true, Capacity: s.cfg.UploadRate, IDC: s.cfg.IDC, Rack: s.cfg.Rack}, s.uploadInFlight())
}

func (s *Supernode) uploadInFlight() int {
	if s.upload == nil {
		return 0
	}
	return s.upload.InFlight()
}

// janitor expires silent hosts and refreshes the seed's load every heartbeat.
func (s *Supernode) janitor() {
	t := time.NewTicker(s.sched.Config().HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.announceSeed()
			for _, id := range s.sched.Expire() {
				s.log.Info("host expired: missed its heartbeats; dropped its holdings", "host", id)
				s.grants.forget(id)
			}
			s.auth.expire()
		}
	}
}

// GRPCAddr is the address the control plane listens on.
func (s *Supernode) GRPCAddr() string { return s.grpcLn.Addr().String() }

// UploadAddr is the address the upload server listens on.
func (s *Supernode) UploadAddr() string { return s.upLn.Addr().String() }

// Advertise is the upload address given to peers.
func (s *Supernode) Advertise() string { return s.cfg.Advertise }

// Scheduler exposes the scheduler (tests, inspection).
func (s *Supernode) Scheduler() *Scheduler { return s.sched }

// Store exposes the seed's block store.
func (s *Supernode) Store() *blockstore.Store { return s.store }

// TokenPublicKey verifies the task tokens this supernode signs.
func (s *Supernode) TokenPublicKey() ed25519.PublicKey { return s.signer.Public().(ed25519.PublicKey) }

// IssueToken signs a token that lets host fetch blocks of task until it
// expires (Config.TokenTTL from now).
func (s *Supernode) IssueToken(task, host string) (string, time.Time) {
	exp := time.Now().Add(s.cfg.TokenTTL)
	return api.SignToken(s.signer, api.TokenClaims{Task: task, Host: host, Expires: exp}), exp
}

// Close stops serving (in-flight RPCs get a moment to finish), stops the
// seed and closes the store.
func (s *Supernode) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.stop)
		if s.grpcSrv != nil {
			done := make(chan struct{})
			go func() { s.grpcSrv.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(3 * time.Second):
				s.grpcSrv.Stop()
				<-done
			}
		}
		for _, srv := range []*http.Server{s.httpSrv, s.apiSrv} {
			if srv == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			if srv.Shutdown(ctx) != nil {
				srv.Close()
			}
			cancel()
		}
		s.wg.Wait()
		if s.checks != nil {
			s.checks.close()
		}
		err = s.closeResources()
	})
	return err
}

func (s *Supernode) closeResources() error {
	if s.preheat != nil {
		s.preheat.Close() // before the seed: its jobs wait on the seed
	}
	if s.seed != nil {
		s.seed.Close()
	}
	s.comp.close() // after the seed: its fetches wait on the trials
	for _, ln := range []net.Listener{s.grpcLn, s.upLn, s.apiLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if s.store != nil {
		if err := s.store.Close(); err != nil {
			return fmt.Errorf("close supernode store: %w", err)
		}
	}
	return nil
}

// State is what GET /debug/state returns.
type State struct {
	Advertise string           `json:"advertise"`
	Scheduler SchedulerState   `json:"scheduler"`
	Seed      SeedState        `json:"seed"`
	Upload    UploadStats      `json:"upload"`
	Store     blockstore.Stats `json:"store"`
	// Compression: the seed's trials and forms (compress.go); absent when off.
	Compression *compress.CompressorStats `json:"compression,omitempty"`
}

// SeedState is the seed's part of State.
type SeedState struct {
	ID              string          `json:"id"`
	BytesFromOrigin int64           `json:"bytes_from_origin"`
	Tasks           []SeedTaskState `json:"tasks"`
}

// State returns a snapshot of the supernode: tasks with their holders and
// blocked hosts, hosts with bytes served, seed progress and origin bytes.
// The seed's bytes_served is what its upload server actually sent.
func (s *Supernode) State() State {
	st := State{
		Advertise: s.cfg.Advertise,
		Scheduler: s.sched.State(),
		Seed:      SeedState{ID: s.cfg.SeedID, BytesFromOrigin: s.seed.BytesFromOrigin(), Tasks: s.seed.State()},
		Upload:    s.upload.Stats(),
		Store:     s.store.Stats(),
	}
	st.Compression = s.comp.Stats()
	for i := range st.Scheduler.Hosts {
		if st.Scheduler.Hosts[i].ID == s.cfg.SeedID {
			st.Scheduler.Hosts[i].BytesServed = st.Upload.BytesServed
		}
	}
	return st
}

func (s *Supernode) serveState(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s.State()); err != nil {
		s.log.Debug("write /debug/state", "err", err)
	}
}
