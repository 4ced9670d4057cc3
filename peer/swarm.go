package peer

// Swarm: the peer side of the P2P swarm (the engine's Swarm implementation).
//
// Constructor (used by dfdaemon and, for the embedded case, by dfget):
//
//	sw, err := peer.NewSwarm(ctx, peer.SwarmConfig{
//		Supernode:  "127.0.0.1:8002",  // gRPC address of the supernode
//		Store:      store,             // the engine's block store
//		UploadAddr: "",                // "" = leech only (embedded dfget): holds nothing for others
//		Logger:     log,
//	})
//	defer sw.Close()                  // Leave + stop every goroutine
//	eng, err := peer.New(peer.Config{Store: store, Swarm: sw, ...})
//
// NewSwarm never fails because the supernode is down: it announces in the
// background and every operation made while the supernode is unreachable
// fails fast with ErrSwarmUnavailable, so the engine uses the origin.
//
// Control plane (supernode/api, gRPC):
//   - Announce every heartbeat. The full list of held tasks (bitmaps) goes
//     with the first announce, after any failed heartbeat, when the token key
//     changed, when a Sync/RegisterTask answer shows the supernode forgot this
//     host or task, and every tenth heartbeat — so swarms continue after a
//     supernode restart.
//   - RegisterTask when the engine resolves a task (the seed starts).
//   - Per task one Sync loop. FetchBlock calls register the block they wait
//     for; the next round sends every awaited block no Sync in flight
//     carries as a "want", plus the "have"s and fetch results gathered
//     since, so concurrent FetchBlock calls share one round trip. Rounds
//     run concurrently (up to maxRounds background ones), so a Sync the
//     supernode holds while its seed fetches a block delays nobody else.
//     A foreground block (a reader waits, see WithPriority) gets its own
//     Sync at once, and background wants stay home while a reader waits.
//     Only blocks about to be fetched are wanted: the supernode reserves a
//     parent's upload slot for each answer until the result is reported.
//     Bad-digest results are sent at once (the liar is blocked at once).
//
// Data plane: GET /blocks/{task}/{idx} (X-Dfly-Token; https:// with
// SwarmConfig.TLS, as is the gRPC control plane) on the ranked parents in
// order, skipping parents that served a bad block or failed 3 times in a row
// for the task; the bytes are paced by the engine's download rate limit and
// stored through the store's PutBlock, which checks them against the seed's
// digest (recorded in the store first), before FetchBlock returns. In the end game (≤ 8 blocks missing) a slow
// transfer is duplicated to the next parent and the first verified copy wins.
// A block no parent delivered within BlockTimeout, or any failure to reach the
// supernode, is an ErrSwarmUnavailable error: the engine then uses the origin.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/internal/tlsconf"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// SwarmConfig configures a Swarm.
type SwarmConfig struct {
	// Supernode is the supernode's gRPC address (HOST:PORT). Required.
	Supernode string
	// Store is the host's block store (the engine's). Required.
	Store *blockstore.Store
	// HostID identifies this host to the supernode. Default: hostname + "/" + UploadAddr
	// (or hostname + "/" + pid for a leech).
	HostID string
	// UploadAddr is the HOST:PORT other peers fetch blocks from. Empty means
	// leech only: the host fetches but never announces blocks.
	UploadAddr string
	// IDC and Rack are locality labels used by the scheduler.
	IDC, Rack string
	// UploadCapacity is the advertised upload capacity in bytes/s (0 = unknown).
	UploadCapacity int64
	// UploadStats, if set, reports the upload server's in-flight count and
	// total bytes served (sent with each heartbeat).
	UploadStats func() (inFlight int32, bytesServed int64)
	// BlockTimeout bounds how long FetchBlock waits for a block nobody holds
	// yet and for all parents to fail before giving up (the engine then uses
	// the origin). Default 60s.
	BlockTimeout time.Duration
	// StallTimeout aborts a block transfer that makes no progress for this long. Default 15s.
	StallTimeout time.Duration
	// RPCTimeout bounds each call to the supernode. Default 5s.
	RPCTimeout time.Duration
	// SupernodeGrace is how long block fetches wait for an unreachable
	// supernode (a restart) before they go to the origin. Default 10s,
	// at most BlockTimeout.
	SupernodeGrace time.Duration
	// DialOptions override the gRPC dial options (default: TLS with TLS,
	// else an insecure transport).
	DialOptions []grpc.DialOption
	// TLS secures the swarm's links (nil = plain TCP): gRPC to the
	// supernode and block fetches (https://) verify the server's
	// certificate against its CAs, the server name being the host part of
	// the address dialled, and present its certificate when asked (mutual
	// TLS). The whole swarm uses TLS or none.
	TLS *tlsconf.Reloader
	// HostSecret proves to the supernode that calls for HostID come from
	// this host (the supernode binds the id to the first secret it sees
	// while the host is live). Keep it across restarts of the same host
	// (dfdaemon stores it beside its block store); default: random.
	HostSecret string
	// OnPreheat, if set, receives the preheat orders of each heartbeat's
	// answer (repeated until their job ends; it must not block).
	OnPreheat func([]PreheatOrder)
	// HostStats, if set, gives the host's counters sent with each
	// heartbeat (the supernode's GET /api/v1/status; see Recent).
	HostStats func() *api.HostStats
	// ReceiveBuffer, if above 0, is the receive buffer (SO_RCVBUF, bytes)
	// of every block connection, instead of the kernel's autotuning: with
	// flow control a paced reader holds a sender back only by the window
	// its buffer advertises (flow.ReceiveBuffer, daemon_flow.go).
	ReceiveBuffer int
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Tracing traces the gRPC calls made inside a trace (RegisterTask, one
	// Sync round in 16) and the sampled block GETs (see trace.go); nil: off.
	Tracing *telemetry.Tracing
	// Compress asks parents for compressed forms of blocks when it pays,
	// decodes them and keeps them to serve them on (swarm_compress.go);
	// nil: plain blocks only.
	Compress *compress.Host
}

// SwarmStats are the swarm's counters.
type SwarmStats struct {
	Supernode        string           `json:"supernode"`
	SupernodeUp      bool             `json:"supernode_up"`
	Syncs            int64            `json:"syncs"`
	BlocksFromSeed   int64            `json:"blocks_from_seed"`
	BlocksFromPeers  int64            `json:"blocks_from_peers"`
	BytesFromSeed    int64            `json:"bytes_from_seed"`
	BytesFromPeers   int64            `json:"bytes_from_peers"`
	BadBlocks        int64            `json:"bad_blocks"`
	ParentErrors     int64            `json:"parent_errors"`
	ParentBusy       int64            `json:"parent_busy"` // of ParentErrors: answers 429 (upload cap reached)
	Steals           int64            `json:"steals"`
	Unavailable      int64            `json:"unavailable"`
	BytesByParent    map[string]int64 `json:"bytes_by_parent"`
	ActiveTasks      int              `json:"active_tasks"`
	HeartbeatsFailed int64            `json:"heartbeats_failed"`
	// Where FetchBlock spends its time: waiting for the supernode to assign
	// parents, and transferring blocks; rounds that assigned nothing.
	WaitSeconds     float64 `json:"wait_seconds"`
	TransferSeconds float64 `json:"transfer_seconds"`
	EmptyRounds     int64   `json:"empty_rounds"`
	// SeedPendingRounds counts the empty rounds whose block the seed had
	// not fetched from the origin yet (the rest: every holder was busy, or
	// a nearer copy was on its way).
	SeedPendingRounds int64 `json:"seed_pending_rounds"`
}

// SupernodeSwarm implements the engine's Swarm interface against a supernode.
type SupernodeSwarm struct {
	cfg    SwarmConfig
	log    *slog.Logger
	conn   *grpc.ClientConn
	client api.SchedulerClient
	http   *http.Client
	store  *blockstore.Store

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	tasks     map[string]*swarmTask
	keys      []ed25519.PublicKey // token-signing keys: the current one first, then the previous one
	byParent  map[string]int64
	downUntil time.Time // RPCs fail fast until then (the supernode just failed)
	downSince time.Time // start of the current outage (zero: the supernode answers)
	needFull  bool      // next heartbeat sends every held task
	closed    bool

	preheatReports []*api.PreheatReport // failed preheat orders, sent with the next heartbeat

	lastUpload rateSample    // last upload counter sample (for the heartbeat's rate)
	hbKick     chan struct{} // asks the heartbeat for a full announce now

	// bufs pools block buffers (*[]byte) of downloads that getBlock stored.
	bufs sync.Pool

	syncs, blocksSeed, blocksPeers, bytesSeed, bytesPeers atomic.Int64
	bad, parentErrs, parentBusy, steals, unavailable      atomic.Int64
	hbFailed                                              atomic.Int64
	waitNanos, xferNanos, emptyRounds, seedPending        atomic.Int64
	// lastBeat is when the supernode last answered a heartbeat (unix
	// nanos; 0: never) and beatEvery the interval it asked for (CheckSupernode).
	lastBeat, beatEvery atomic.Int64
}

// NewSwarm connects to the supernode (lazily: a supernode that is down is
// not an error) and starts the heartbeat. Close it to leave the swarm.
func NewSwarm(ctx context.Context, cfg SwarmConfig) (*SupernodeSwarm, error) {
	if cfg.Supernode == "" {
		return nil, fmt.Errorf("swarm: no supernode address (--supernode HOST:PORT): %w", blockstore.ErrInvalid)
	}
	if cfg.Store == nil {
		return nil, fmt.Errorf("swarm: no block store: %w", blockstore.ErrInvalid)
	}
	ctx = untraced(ctx) // the swarm's own calls (heartbeats, its loops) join no caller's trace
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BlockTimeout <= 0 {
		cfg.BlockTimeout = 60 * time.Second
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = 15 * time.Second
	}
	if cfg.RPCTimeout <= 0 {
		cfg.RPCTimeout = 5 * time.Second
	}
	if cfg.SupernodeGrace <= 0 {
		cfg.SupernodeGrace = 10 * time.Second
	}
	cfg.SupernodeGrace = min(cfg.SupernodeGrace, cfg.BlockTimeout)
	if cfg.HostID == "" {
		hn, _ := os.Hostname()
		if cfg.UploadAddr != "" {
			cfg.HostID = hn + "/" + cfg.UploadAddr
		} else {
			cfg.HostID = fmt.Sprintf("%s/leech-%d", hn, os.Getpid())
		}
	}
	if cfg.HostSecret == "" {
		cfg.HostSecret = rand.Text()
	}
	opts := cfg.DialOptions
	if opts == nil {
		creds := insecure.NewCredentials()
		if cfg.TLS != nil {
			creds = cfg.TLS.ClientCredentials(cfg.Supernode)
		}
		opts = []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	}
	secret := cfg.HostSecret
	opts = append(slices.Clip(opts), grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
		return invoker(metadata.AppendToOutgoingContext(ctx, api.HostSecretMetadata, secret), method, req, reply, cc, o...)
	}))
	opts = append(opts, cfg.Tracing.GRPCDialOptions()...)
	conn, err := grpc.NewClient(cfg.Supernode, opts...)
	if err != nil {
		return nil, fmt.Errorf("swarm: supernode address %q: %w", cfg.Supernode, err)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second, Control: receiveBufferControl(cfg.ReceiveBuffer)}
	tr := &http.Transport{
		DialContext:         dialer.DialContext,
		MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second, ResponseHeaderTimeout: cfg.StallTimeout,
	}
	if cfg.TLS != nil {
		tr.DialTLSContext = cfg.TLS.DialTLS(dialer)
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &SupernodeSwarm{
		cfg: cfg, log: cfg.Logger.With("component", "swarm"), conn: conn, client: api.NewSchedulerClient(conn),
		store: cfg.Store, ctx: sctx, cancel: cancel, tasks: map[string]*swarmTask{}, byParent: map[string]int64{},
		needFull: true, hbKick: make(chan struct{}, 1),
		http: &http.Client{Transport: tr},
	}
	// One synchronous heartbeat so that a daemon started next to a running
	// supernode is registered before its first download.
	first, err := s.announce(ctx)
	if err != nil {
		s.log.Warn("supernode not reachable yet; downloads use the origin until it is", "supernode", cfg.Supernode, "err", err)
	}
	s.wg.Add(1)
	go s.heartbeatLoop(first)
	return s, nil
}

// buffer returns a block buffer of n bytes, from the pool when one fits.
func (s *SupernodeSwarm) buffer(n int64) []byte {
	if bp, _ := s.bufs.Get().(*[]byte); bp != nil && int64(cap(*bp)) >= n {
		return (*bp)[:n]
	}
	return make([]byte, n)
}

// HostID returns the ID this host uses with the supernode.
func (s *SupernodeSwarm) HostID() string { return s.cfg.HostID }

// Close leaves the swarm (whole host) and stops every goroutine.
func (s *SupernodeSwarm) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	if !s.isDown() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if _, err := s.client.Leave(ctx, &api.LeaveRequest{HostId: s.cfg.HostID}); err != nil {
			s.log.Debug("leave", "err", err)
		}
		cancel()
	}
	s.cancel()
	s.wg.Wait()
	s.http.CloseIdleConnections()
	return s.conn.Close()
}

// Stats returns the swarm's counters.
func (s *SupernodeSwarm) Stats() SwarmStats {
	s.mu.Lock()
	by := make(map[string]int64, len(s.byParent))
	for k, v := range s.byParent {
		by[k] = v
	}
	n := len(s.tasks)
	s.mu.Unlock()
	return SwarmStats{
		Supernode: s.cfg.Supernode, SupernodeUp: !s.isDown(), Syncs: s.syncs.Load(),
		BlocksFromSeed: s.blocksSeed.Load(), BlocksFromPeers: s.blocksPeers.Load(),
		BytesFromSeed: s.bytesSeed.Load(), BytesFromPeers: s.bytesPeers.Load(),
		BadBlocks: s.bad.Load(), ParentErrors: s.parentErrs.Load(), ParentBusy: s.parentBusy.Load(), Steals: s.steals.Load(),
		Unavailable: s.unavailable.Load(), BytesByParent: by, ActiveTasks: n, HeartbeatsFailed: s.hbFailed.Load(),
		WaitSeconds: time.Duration(s.waitNanos.Load()).Seconds(), TransferSeconds: time.Duration(s.xferNanos.Load()).Seconds(),
		EmptyRounds: s.emptyRounds.Load(), SeedPendingRounds: s.seedPending.Load(),
	}
}

// CheckToken implements TokenChecker with the public keys the supernode
// sent (the current one and the one before, so a supernode that came back
// with a new key does not break transfers in flight): the token must be
// signed by the supernode, name the task and not have expired.
func (s *SupernodeSwarm) CheckToken(taskID, token string) error {
	s.mu.Lock()
	keys := s.keys
	s.mu.Unlock()
	if len(keys) == 0 {
		return errors.New("this host has not reached its supernode yet: it cannot check task tokens")
	}
	_, err := api.VerifyToken(keys, token, taskID, time.Now())
	return err
}

func (s *SupernodeSwarm) isDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Before(s.downUntil)
}

// gaveUp reports whether the supernode has been unreachable for longer than
// SupernodeGrace: block fetches then go to the origin at once. Within the
// grace (a supernode restarting) they keep to the parents they know and
// wait for the supernode, so a restart does not send every host's
// in-flight blocks to the origin.
func (s *SupernodeSwarm) gaveUp() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Before(s.downUntil) && !s.downSince.IsZero() && time.Since(s.downSince) > s.cfg.SupernodeGrace
}

// markDown makes RPCs fail fast for a second after the supernode failed.
func (s *SupernodeSwarm) markDown(err error) {
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unavailable && st.Code() != codes.DeadlineExceeded {
		return // the supernode answered: it is up
	}
	s.mu.Lock()
	now := time.Now()
	if s.downSince.IsZero() {
		s.downSince = now
	}
	s.downUntil = now.Add(time.Second)
	s.needFull = true
	s.mu.Unlock()
}

// markUp records an answer of the supernode.
func (s *SupernodeSwarm) markUp() {
	s.mu.Lock()
	s.downUntil, s.downSince = time.Time{}, time.Time{}
	s.mu.Unlock()
}

// forgotten is called when the supernode answered that it does not know this
// host or a task (it restarted): the next heartbeat, sent now, carries the
// full list of held tasks.
func (s *SupernodeSwarm) forgotten(err error) bool {
	if code := status.Code(err); code != codes.NotFound && code != codes.FailedPrecondition {
		return false
	}
	s.mu.Lock()
	s.needFull = true
	s.mu.Unlock()
	select {
	case s.hbKick <- struct{}{}:
	default:
	}
	return true
}

func (s *SupernodeSwarm) rpcCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.RPCTimeout)
}

// announce sends one heartbeat (the full held list when needed) and returns the interval to wait.
func (s *SupernodeSwarm) announce(ctx context.Context) (time.Duration, error) {
	s.mu.Lock()
	full := s.needFull
	reports := s.preheatReports
	s.mu.Unlock()
	req := &api.AnnounceRequest{Host: &api.Host{
		Id: s.cfg.HostID, UploadAddr: s.cfg.UploadAddr, Idc: s.cfg.IDC, Rack: s.cfg.Rack, UploadCapacity: s.cfg.UploadCapacity,
	}, PreheatReports: reports}
	if s.cfg.UploadStats != nil {
		inflight, served := s.cfg.UploadStats()
		req.UploadsInFlight = inflight
		req.UploadBytesPerSec = s.uploadRate(served)
	}
	if s.cfg.HostStats != nil {
		req.Stats = s.cfg.HostStats()
	}
	if full && s.cfg.UploadAddr != "" {
		req.Held = s.heldTasks()
	}
	rctx, cancel := s.rpcCtx(ctx)
	defer cancel()
	resp, err := s.client.Announce(rctx, req)
	if err != nil {
		s.hbFailed.Add(1)
		s.markDown(err)
		return 0, fmt.Errorf("announce to supernode %s: %w", s.cfg.Supernode, err)
	}
	s.mu.Lock()
	var key ed25519.PublicKey
	if pubs := resp.GetTokenPublicKeys(); len(pubs) > 0 && len(pubs[0]) == ed25519.PublicKeySize {
		key = ed25519.PublicKey(pubs[0])
	}
	restarted := key != nil && len(s.keys) > 0 && !s.keys[0].Equal(key)
	if key != nil && (len(s.keys) == 0 || restarted) {
		s.keys = append([]ed25519.PublicKey{key}, s.keys...)
		if len(s.keys) > 2 {
			s.keys = s.keys[:2]
		}
	}
	s.downUntil, s.downSince = time.Time{}, time.Time{}
	s.preheatReports = s.preheatReports[min(len(reports), len(s.preheatReports)):] // delivered
	if full {
		s.needFull = false
	}
	if restarted && !full {
		s.needFull = true // a restarted supernode needs our full list again
	}
	var active []*swarmTask
	if restarted {
		for _, t := range s.tasks {
			active = append(active, t)
		}
	}
	s.mu.Unlock()
	if restarted {
		s.log.Info("supernode restarted; re-announcing held tasks and re-registering active ones")
		for _, t := range active {
			t.markUnregistered()
		}
	}
	if full {
		s.log.Debug("announced", "held", len(req.Held))
	}
	if orders := resp.GetPreheat(); len(orders) > 0 && s.cfg.OnPreheat != nil {
		s.cfg.OnPreheat(preheatOrders(orders))
	}
	iv := time.Duration(resp.GetHeartbeatIntervalMs()) * time.Millisecond
	if iv <= 0 {
		iv = 2 * time.Second
	}
	s.beatEvery.Store(int64(iv))
	s.lastBeat.Store(time.Now().UnixNano())
	return iv, nil
}

type rateSample struct {
	at     time.Time
	served int64
}

// uploadRate turns the upload server's byte counter into bytes/s since the last heartbeat.
func (s *SupernodeSwarm) uploadRate(served int64) int64 {
	now := time.Now()
	s.mu.Lock()
	prev := s.lastUpload
	s.lastUpload = rateSample{now, served}
	s.mu.Unlock()
	if prev.at.IsZero() {
		return 0
	}
	dt := now.Sub(prev.at).Seconds()
	if dt <= 0 {
		return 0
	}
	return int64(float64(served-prev.served) / dt)
}

func (s *SupernodeSwarm) heldTasks() []*api.HeldTask {
	var held []*api.HeldTask
	for _, t := range s.store.List() {
		bm, err := s.store.Bitmap(t.ID)
		if err != nil || bm.Count() == 0 {
			continue
		}
		held = append(held, &api.HeldTask{TaskId: t.ID, Bitmap: bm, Url: t.Source, Tag: t.Tag, Etag: t.ETag, Length: t.Length, BlockSize: t.BlockSize, E2E: t.E2E})
	}
	return held
}

func (s *SupernodeSwarm) heartbeatLoop(first time.Duration) {
	defer s.wg.Done()
	wait, beats := first, 0
	if wait <= 0 {
		wait = time.Second
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.hbKick:
		case <-time.After(wait):
		}
		iv, err := s.announce(s.ctx)
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Debug("heartbeat failed", "err", err)
			}
			wait = time.Second
			continue
		}
		s.mu.Lock()
		again := s.needFull
		// A supernode that restarted between two heartbeats (keeping its
		// token key) learns the held tasks from this periodic full announce
		// at the latest, or sooner when a Sync finds it forgot us.
		if beats++; beats%fullEvery == 0 {
			s.needFull = true
		}
		s.mu.Unlock()
		if again {
			wait = 0
			continue
		}
		wait = iv
	}
}

// task returns the swarm state of a task, creating it (and its Sync loop).
func (s *SupernodeSwarm) task(id string, req Request) (*swarmTask, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("swarm closed: %w", ErrSwarmUnavailable)
	}
	if st, ok := s.tasks[id]; ok {
		return st, nil
	}
	ctx, cancel := context.WithCancel(s.ctx)
	st := &swarmTask{
		s: s, id: id, req: req, ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1),
		next: newRound(), nextFg: newRound(), sent: map[int]*round{}, fgAwait: map[int]int{}, awaited: map[int]int{}, assign: map[int]assignment{}, holders: map[int]int{}, pending: map[int]bool{},
		excluded: map[string]bool{}, fails: map[string]int{}, loopDone: make(chan struct{}),
		rng: mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64())),
	}
	s.tasks[id] = st
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		st.loop()
	}()
	return st, nil
}

// Resolve implements Swarm: it registers the task with the supernode, which
// starts seeding it, and returns the metadata the seed found.
func (s *SupernodeSwarm) Resolve(ctx context.Context, req Request, id string) (blockstore.Task, error) {
	if s.isDown() {
		s.unavailable.Add(1)
		return blockstore.Task{}, fmt.Errorf("resolve task %s: supernode %s is unreachable: %w", id, s.cfg.Supernode, ErrSwarmUnavailable)
	}
	st, err := s.task(id, req)
	if err != nil {
		return blockstore.Task{}, err
	}
	meta, err := st.register(ctx)
	if err != nil {
		return blockstore.Task{}, err
	}
	return meta, nil
}

// TaskKey implements E2EKeys: the key the supernode gave with the task's
// token (registering the task first if it is not).
func (s *SupernodeSwarm) TaskKey(ctx context.Context, req Request, id string) ([]byte, error) {
	if s.isDown() {
		return nil, fmt.Errorf("key of task %s: supernode %s is unreachable: %w", id, s.cfg.Supernode, ErrSwarmUnavailable)
	}
	st, err := s.task(id, req)
	if err != nil {
		return nil, err
	}
	if err := st.ensureRegistered(ctx); err != nil {
		return nil, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.taskKey) == 0 {
		return nil, fmt.Errorf("key of task %s: the supernode gave none: %w", id, ErrSwarmUnavailable)
	}
	return st.taskKey, nil
}

// FetchBlock implements Swarm: it gets block idx's parents from the
// supernode, fetches it from the best one that works, and verifies it.
func (s *SupernodeSwarm) FetchBlock(ctx context.Context, t *Task, idx int) ([]byte, From, error) {
	if s.gaveUp() {
		s.unavailable.Add(1)
		return nil, 0, fmt.Errorf("block %d of task %s: supernode %s is unreachable: %w", idx, t.ID(), s.cfg.Supernode, ErrSwarmUnavailable)
	}
	st, err := s.task(t.ID(), t.Request())
	if err != nil {
		return nil, 0, err
	}
	data, from, err := st.fetch(ctx, t.Info(), idx, t.Engine().wait)
	if err != nil && !errors.Is(err, context.Canceled) {
		s.unavailable.Add(1)
	}
	if err == nil {
		// getBlock stored it (PutBlock verified these very bytes): they go
		// to the outputs of running downloads, then back to the pool.
		t.stored(idx, data)
		buf := data
		s.bufs.Put(&buf)
		data = nil
	}
	return data, from, err
}

// Stored implements Swarm: the block is announced with the next Sync.
func (s *SupernodeSwarm) Stored(t *Task, idx int) {
	if s.cfg.UploadAddr == "" {
		return // a leech serves nothing
	}
	s.mu.Lock()
	st, ok := s.tasks[t.ID()]
	s.mu.Unlock()
	if ok {
		st.stored(idx)
	}
}

// Order implements Swarm: rarest block first among the blocks with a known
// holder count, then the rest in a random order of this host's own (see
// rarestFirst). Holder counts come from the supernode's earlier answers for
// this task; the swarm never asks about blocks it will not fetch at once just
// to learn how rare they are, because every "want" the supernode answers
// reserves an upload slot of a parent until the result is reported.
func (s *SupernodeSwarm) Order(t *Task, missing []int) []int {
	if len(missing) == 0 {
		return missing
	}
	st, err := s.task(t.ID(), t.Request())
	if err != nil {
		return missing
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return rarestFirst(missing, st.holders, st.rng, orderWindow)
}

// Done implements Swarm: it flushes what is pending (with done=true when the
// download completed) and stops the task's Sync loop.
func (s *SupernodeSwarm) Done(t *Task, err error) {
	s.mu.Lock()
	st, ok := s.tasks[t.ID()]
	if ok {
		delete(s.tasks, t.ID())
	}
	s.mu.Unlock()
	if !ok {
		return
	}
	st.finish(err == nil)
}

const (
	maxWant       = 64 // wants per Sync (the protocol's bound)
	assignTTL     = 2 * time.Second
	syncInterval  = 50 * time.Millisecond
	coalesceDelay = 5 * time.Millisecond   // a kicked background round waits this long for more wants
	maxRounds     = 4                      // background Syncs in flight per task
	fgRetry       = 10 * time.Millisecond  // a reader's pause after an answer without parents
	orderWindow   = 0                      // shuffle all unheld blocks (see rarestFirst)
	endgameLeft   = 8                      // steal when at most this many blocks are missing
	fullEvery     = 10                     // every tenth heartbeat carries the full held list
	graceRetry    = 250 * time.Millisecond // a fetch's pause while the supernode is briefly unreachable
)

// rarestFirst orders missing blocks: held blocks by ascending holder count
// (ties in a random order from rng), then the blocks with no known holder
// in a random order too. Every host draws its own order, so hosts that start
// together hold different blocks early and can trade them, instead of all
// waiting on the seed for the same block (the seed fetches wanted blocks
// first, so a random order does not slow it down). With w > 1 the unheld
// blocks are only shuffled within consecutive windows of w blocks, which
// keeps a streaming reader's order roughly sequential.
func rarestFirst(missing []int, holders map[int]int, rng *mrand.Rand, w int) []int {
	held := make([]int, 0, len(missing))
	var unheld []int
	for _, b := range missing {
		if holders[b] > 0 {
			held = append(held, b)
		} else {
			unheld = append(unheld, b)
		}
	}
	rng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
	slices.SortStableFunc(held, func(a, b int) int { return holders[a] - holders[b] })
	slices.Sort(unheld)
	if w <= 0 {
		w = len(unheld)
	}
	if w > 1 {
		for i := 0; i < len(unheld); i += w {
			win := unheld[i:min(i+w, len(unheld))]
			rng.Shuffle(len(win), func(a, b int) { win[a], win[b] = win[b], win[a] })
		}
	}
	return append(held, unheld...)
}

// shouldSteal decides whether a block request in flight for elapsed should be
// duplicated to a second parent: only in the end game (at most endgame
// blocks missing), only when another parent exists, and only when the
// request is slow — more than twice the typical block time, and at least
// minWait.
func shouldSteal(missing, endgame int, elapsed, typical, minWait time.Duration, spareParents int) bool {
	if missing > endgame || spareParents == 0 {
		return false
	}
	return elapsed >= max(2*typical, minWait)
}

// transient reports whether err is the supernode being unreachable for
// less than SupernodeGrace (a fetch then waits instead of giving up).
func (s *SupernodeSwarm) transient(err error) bool {
	if !errors.Is(err, ErrSwarmUnavailable) || s.gaveUp() {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.downSince.IsZero()
}

type priorityKey struct{}

// WithPriority marks ctx with the priority of the fetch it carries, so that
// FetchBlock asks the supernode for foreground blocks (a reader is waiting)
// before background ones in the same Sync round. Unmarked fetches count as
// background.
func WithPriority(ctx context.Context, p Priority) context.Context {
	return context.WithValue(ctx, priorityKey{}, p)
}

func priorityOf(ctx context.Context) Priority {
	if p, ok := ctx.Value(priorityKey{}).(Priority); ok {
		return p
	}
	return Background
}
