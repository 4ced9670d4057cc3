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
	"io"
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
	// Logger; default slog.Default().
	Logger *slog.Logger
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
	conn, err := grpc.NewClient(cfg.Supernode, opts...)
	if err != nil {
		return nil, fmt.Errorf("swarm: supernode address %q: %w", cfg.Supernode, err)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
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
		held = append(held, &api.HeldTask{TaskId: t.ID, Bitmap: bm, Url: t.Source, Tag: t.Tag, Etag: t.ETag, Length: t.Length, BlockSize: t.BlockSize})
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

// assignment is a cached answer of the supernode for one block.
type assignment struct {
	parents []*api.Parent
	at      time.Time
}

// round is one Sync round trip that waiters can wait for.
type round struct {
	done chan struct{}
	err  error
}

func newRound() *round { return &round{done: make(chan struct{})} }

// swarmTask is the swarm state of one task.
type swarmTask struct {
	s      *SupernodeSwarm
	id     string
	req    Request
	ctx    context.Context
	cancel context.CancelFunc
	kick   chan struct{}

	regMu sync.Mutex // serialises RegisterTask

	mu                        sync.Mutex
	registered                bool
	meta                      blockstore.Task
	token                     string
	tokenIssued, tokenExpires time.Time
	next                      *round         // the next background Sync round
	nextFg                    *round         // the next foreground Sync round
	sent                      map[int]*round // awaited blocks a Sync in flight carries
	bgRounds                  int            // background Syncs in flight
	rounds                    sync.WaitGroup // Syncs in flight (the loop waits for them)
	awaited                   map[int]int    // block → number of FetchBlock calls waiting for parents
	awaitOrder                []int          // awaited blocks in arrival order
	fgAwait                   map[int]int    // block → foreground callers among them
	assign                    map[int]assignment
	holders                   map[int]int
	pending                   map[int]bool // wanted blocks the seed had not fetched yet at the last answer
	have                      []int32
	results                   []*api.BlockResult
	excluded                  map[string]bool // parents that served a bad block (this task)
	fails                     map[string]int  // consecutive failures per parent
	typical                   time.Duration   // moving average of successful block fetches
	seedError                 string
	rng                       *mrand.Rand
	loopDone                  chan struct{}
}

func (st *swarmTask) markUnregistered() {
	st.mu.Lock()
	st.registered = false
	st.mu.Unlock()
	st.poke()
}

func (st *swarmTask) poke() {
	select {
	case st.kick <- struct{}{}:
	default:
	}
}

// register calls RegisterTask and records the metadata and token.
func (st *swarmTask) register(ctx context.Context) (blockstore.Task, error) {
	st.regMu.Lock()
	defer st.regMu.Unlock()
	s := st.s
	req := &api.RegisterTaskRequest{HostId: s.cfg.HostID, TaskId: st.id, Url: st.req.URL, Tag: st.req.Tag, Digest: st.req.Digest}
	for name, vs := range st.req.Header {
		for _, v := range vs {
			req.Headers = append(req.Headers, &api.Header{Name: name, Value: v})
		}
	}
	if bm, err := s.store.Bitmap(st.id); err == nil && s.cfg.UploadAddr != "" {
		req.Bitmap = bm
		if local, err := s.store.Task(st.id); err == nil {
			req.Etag = local.ETag
		}
	}
	var resp *api.RegisterTaskResponse
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, 3*s.cfg.RPCTimeout) // the seed may HEAD the origin first
		resp, err = s.client.RegisterTask(rctx, req)
		cancel()
		if code := status.Code(err); attempt == 0 && (code == codes.NotFound || code == codes.FailedPrecondition) {
			// The supernode does not know this host (it restarted): announce and retry.
			if _, aerr := s.announce(ctx); aerr != nil {
				break
			}
			continue
		}
		break
	}
	if err != nil {
		s.markDown(err)
		return blockstore.Task{}, fmt.Errorf("register task %s with supernode %s: %v: %w", st.id, s.cfg.Supernode, err, ErrSwarmUnavailable)
	}
	m := resp.GetMeta()
	if m.GetSeedError() != "" {
		st.mu.Lock()
		st.seedError = m.GetSeedError()
		st.mu.Unlock()
		return blockstore.Task{}, fmt.Errorf("task %s: the supernode's seed failed: %s: %w", st.id, m.GetSeedError(), ErrSwarmUnavailable)
	}
	meta := blockstore.Task{
		ID: st.id, Source: m.GetUrl(), Length: m.GetLength(), BlockSize: m.GetBlockSize(),
		Digest: m.GetDigest(), ETag: m.GetEtag(), LastModified: m.GetLastModified(),
	}
	if meta.Source == "" {
		meta.Source = st.req.URL
	}
	if local, err := s.store.Task(st.id); err == nil && (local.Length != meta.Length || local.BlockSize != meta.BlockSize) {
		return blockstore.Task{}, fmt.Errorf("task %s: the supernode says %d bytes in blocks of %d, the local store has %d/%d: %w",
			st.id, meta.Length, meta.BlockSize, local.Length, local.BlockSize, ErrSwarmUnavailable)
	}
	st.mu.Lock()
	st.registered, st.meta, st.token, st.seedError = true, meta, resp.GetToken(), ""
	st.tokenIssued, st.tokenExpires = time.Now(), time.Unix(resp.GetTokenExpiresUnix(), 0)
	st.mu.Unlock()
	return meta, nil
}

func (st *swarmTask) ensureRegistered(ctx context.Context) error {
	st.mu.Lock()
	ok := st.registered
	st.mu.Unlock()
	if ok {
		return nil
	}
	_, err := st.register(ctx)
	return err
}

// tokenFor returns the token to present to parents: the one the supernode
// issued to this host. Past three quarters of its life the task registers
// again (in the background, through the Sync loop) for a fresh one.
func (st *swarmTask) tokenFor() string {
	st.mu.Lock()
	tok, refresh := st.token, st.registered && tokenDue(st.tokenIssued, st.tokenExpires, time.Now())
	st.mu.Unlock()
	if refresh {
		st.markUnregistered()
	}
	return tok
}

// tokenDue reports whether a token issued at issued and expiring at expires
// should be renewed at now (past three quarters of its life).
func tokenDue(issued, expires, now time.Time) bool {
	if expires.IsZero() || !expires.After(issued) {
		return false
	}
	return now.After(issued.Add(expires.Sub(issued) * 3 / 4))
}

func (st *swarmTask) stored(idx int) {
	st.mu.Lock()
	st.have = append(st.have, int32(idx))
	n := len(st.have)
	st.mu.Unlock()
	if n >= 32 {
		st.poke()
	}
}

func (st *swarmTask) report(r *api.BlockResult, urgent bool) {
	st.mu.Lock()
	st.results = append(st.results, r)
	st.mu.Unlock()
	if urgent {
		st.poke()
	}
}

// finish flushes pending haves/results with a final Sync and stops the loop.
func (st *swarmTask) finish(complete bool) {
	st.cancel()
	<-st.loopDone
	st.mu.Lock()
	req := &api.SyncRequest{HostId: st.s.cfg.HostID, TaskId: st.id, Have: st.have, Results: st.results, Done: complete}
	st.have, st.results = nil, nil
	registered := st.registered
	st.mu.Unlock()
	if !registered || st.s.isDown() {
		return
	}
	ctx, cancel := st.s.rpcCtx(context.Background())
	defer cancel()
	if _, err := st.s.client.Sync(ctx, req); err != nil {
		st.s.log.Debug("final sync", "task", st.id, "err", err)
	}
}

// loop starts Sync rounds: at once when kicked (a waiter, an urgent result,
// many haves), else every syncInterval while something is pending. Rounds
// run concurrently (see startRoundsLocked): a Sync the supernode holds while
// its seed fetches a wanted block never delays the wants that came after it.
func (st *swarmTask) loop() {
	defer close(st.loopDone)
	defer st.rounds.Wait()
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	for {
		select {
		case <-st.ctx.Done():
			st.mu.Lock()
			rs := []*round{st.next, st.nextFg}
			st.next, st.nextFg = newRound(), newRound()
			st.mu.Unlock()
			for _, r := range rs {
				r.err = fmt.Errorf("task %s left the swarm: %w", st.id, context.Canceled)
				close(r.done)
			}
			return
		case <-st.kick:
			// Background wants wait a moment for the wants of the other
			// workers, so that they share the round trip; a waiting reader
			// (foreground) does not.
			st.mu.Lock()
			fg := st.fgUnsentLocked()
			if fg {
				st.startRoundsLocked(true)
			}
			st.mu.Unlock()
			if !fg {
				select {
				case <-time.After(coalesceDelay):
				case <-st.ctx.Done():
				}
			}
		case <-t.C:
		}
		st.mu.Lock()
		st.startRoundsLocked(false)
		st.mu.Unlock()
	}
}

// fgUnsentLocked reports whether a foreground caller waits for a block no
// Sync in flight carries.
func (st *swarmTask) fgUnsentLocked() bool {
	for b, n := range st.fgAwait {
		if n > 0 && st.sent[b] == nil {
			return true
		}
	}
	return false
}

// startRoundsLocked starts the Syncs that are due: one for the foreground
// wants no Sync in flight carries (never held back: a reader waits), and,
// unless fgOnly, one for the other pending wants, haves and results when
// fewer than maxRounds background Syncs are in flight.
func (st *swarmTask) startRoundsLocked(fgOnly bool) {
	if st.ctx.Err() != nil {
		return
	}
	if st.fgUnsentLocked() {
		r := st.nextFg
		st.nextFg = newRound()
		st.launchLocked(r, st.wantsLocked(true, r), true)
	}
	if fgOnly || st.bgRounds >= maxRounds || len(st.fgAwait) > 0 {
		// While a reader waits for parents, background wants stay home:
		// each one the supernode sees moves its block up the seed's
		// fetch queue, ahead of the reader's.
		return
	}
	want := st.wantsLocked(false, nil)
	if len(want) == 0 && len(st.have) == 0 && len(st.results) == 0 && st.registered {
		return
	}
	r := st.next
	st.next = newRound()
	for _, b := range want {
		st.sent[int(b)] = r
	}
	st.launchLocked(r, want, false)
}

// launchLocked runs one Sync round in its own goroutine (owned by the loop,
// which waits for it) and wakes r's waiters when it is answered.
func (st *swarmTask) launchLocked(r *round, want []int32, fg bool) {
	if !fg {
		st.bgRounds++
	}
	have, results := st.have, st.results
	st.have, st.results = nil, nil
	st.rounds.Add(1)
	go func() {
		defer st.rounds.Done()
		r.err = st.syncRound(want, have, results)
		st.mu.Lock()
		for _, b := range want {
			if st.sent[int(b)] == r {
				delete(st.sent, int(b))
			}
		}
		if !fg {
			st.bgRounds--
		}
		st.mu.Unlock()
		close(r.done)
	}()
}

// syncRound sends one Sync and records its answer. What it could not
// deliver (haves, results) is kept for the next round.
func (st *swarmTask) syncRound(want, have []int32, results []*api.BlockResult) error {
	s := st.s
	keep := func() {
		st.mu.Lock()
		st.have = append(have, st.have...)
		st.results = append(results, st.results...)
		st.mu.Unlock()
	}
	if s.isDown() {
		keep()
		return fmt.Errorf("supernode %s is unreachable: %w", s.cfg.Supernode, ErrSwarmUnavailable)
	}
	st.mu.Lock()
	registered := st.registered
	st.mu.Unlock()
	if !registered {
		if _, err := st.register(st.ctx); err != nil {
			keep()
			return err
		}
	}
	meta, err := s.store.Task(st.id)
	if err != nil {
		keep()
		return fmt.Errorf("task %s: %w", st.id, err)
	}
	req := &api.SyncRequest{HostId: s.cfg.HostID, TaskId: st.id, Have: have, Results: results, Want: want}
	resp, err := st.syncRPC(st.ctx, req)
	if err != nil {
		keep()
		if s.forgotten(err) {
			st.markUnregistered()
		}
		return fmt.Errorf("sync task %s with supernode %s: %v: %w", st.id, s.cfg.Supernode, err, ErrSwarmUnavailable)
	}
	st.absorb(meta, want, resp)
	return nil
}

func (st *swarmTask) syncRPC(ctx context.Context, req *api.SyncRequest) (*api.SyncResponse, error) {
	rctx, cancel := st.s.rpcCtx(ctx)
	defer cancel()
	st.s.syncs.Add(1)
	resp, err := st.s.client.Sync(rctx, req)
	if err != nil {
		st.s.markDown(err)
	} else {
		st.s.markUp()
	}
	return resp, err
}

// wantsLocked lists up to maxWant awaited blocks that no Sync in flight
// carries, in arrival order: with fg the blocks a foreground caller waits
// for (marked as sent in r), else the others (the caller marks them). Only
// blocks a caller is about to fetch are wanted: the supernode charges each
// assignment to the parent's upload slots until its result is reported.
func (st *swarmTask) wantsLocked(fg bool, r *round) []int32 {
	want := make([]int32, 0, min(len(st.awaitOrder), maxWant))
	seen := map[int]bool{}
	kept := st.awaitOrder[:0]
	for _, b := range st.awaitOrder {
		if st.awaited[b] <= 0 || seen[b] {
			continue
		}
		seen[b] = true
		kept = append(kept, b)
		if len(want) < maxWant && st.sent[b] == nil && (st.fgAwait[b] > 0) == fg {
			want = append(want, int32(b))
			if r != nil {
				st.sent[b] = r
			}
		}
	}
	st.awaitOrder = kept
	return want
}

// absorb records digests (in the store) and assignments from a Sync answer.
func (st *swarmTask) absorb(meta blockstore.Task, want []int32, resp *api.SyncResponse) {
	for _, d := range resp.GetDigests() {
		if err := st.s.store.SetBlockDigest(st.id, int(d.GetBlock()), d.GetSha256()); err != nil {
			st.s.log.Warn("supernode sent an unusable block digest", "task", st.id, "block", d.GetBlock(), "err", err)
		}
	}
	now := time.Now()
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, a := range resp.GetAssignments() {
		b := int(a.GetBlock())
		st.holders[b] = int(a.GetHolders())
		if len(a.GetParents()) > 0 {
			st.assign[b] = assignment{parents: a.GetParents(), at: now}
		}
	}
	st.seedError = resp.GetSeedError()
	for _, b := range want {
		delete(st.pending, int(b))
	}
	for _, b := range resp.GetPending() {
		st.pending[int(b)] = true
	}
	// Forget stale assignments so the map stays small.
	if len(st.assign) > 4*maxWant {
		for b, a := range st.assign {
			if now.Sub(a.at) > assignTTL {
				delete(st.assign, b)
			}
		}
	}
}

// parents returns the usable parents the last round assigned for block idx
// (consuming the assignment), best first.
func (st *swarmTask) parents(idx int) []*api.Parent {
	st.mu.Lock()
	defer st.mu.Unlock()
	a, ok := st.assign[idx]
	if !ok || time.Since(a.at) > assignTTL {
		return nil
	}
	delete(st.assign, idx) // an assignment is used once
	var ps []*api.Parent
	for _, p := range a.parents {
		// Three failures in a row skip a peer for the task, but never the
		// seed: its failures mean the supernode went away (transfers cut by
		// a restart), and the supernode assigns it only once it is back —
		// skipping it then left blocks only it held waiting BlockTimeout.
		failed := st.fails[p.GetHostId()] >= 3 && !p.GetIsSeed()
		if !st.excluded[p.GetHostId()] && !failed && p.GetHostId() != st.s.cfg.HostID && p.GetUploadAddr() != "" {
			ps = append(ps, p)
		}
	}
	return ps
}

// await registers a caller waiting for block idx's parents and returns the
// round whose answer will include it: the Sync in flight that carries it,
// else the next foreground or background round.
func (st *swarmTask) await(idx int, prio Priority) *round {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.awaited[idx] == 0 {
		st.awaitOrder = append(st.awaitOrder, idx)
	}
	st.awaited[idx]++
	if prio == Foreground {
		st.fgAwait[idx]++
	}
	if r := st.sent[idx]; r != nil {
		return r
	}
	if st.fgAwait[idx] > 0 {
		return st.nextFg
	}
	return st.next
}

// waitParents waits for a Sync round that includes idx in its wants and
// returns the parents it got (nil when nobody holds the block yet).
func (st *swarmTask) waitParents(ctx context.Context, idx int, urgent bool) ([]*api.Parent, error) {
	prio := priorityOf(ctx)
	r := st.await(idx, prio)
	defer func() {
		st.mu.Lock()
		if st.awaited[idx]--; st.awaited[idx] <= 0 {
			delete(st.awaited, idx)
		}
		if prio == Foreground {
			if st.fgAwait[idx]--; st.fgAwait[idx] <= 0 {
				delete(st.fgAwait, idx)
			}
		}
		st.mu.Unlock()
	}()
	if urgent || prio == Foreground {
		st.poke()
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-r.done:
	}
	if r.err != nil {
		return nil, r.err
	}
	st.mu.Lock()
	serr := st.seedError
	st.mu.Unlock()
	if serr != "" {
		return nil, fmt.Errorf("task %s: the supernode's seed failed: %s: %w", st.id, serr, ErrSwarmUnavailable)
	}
	return st.parents(idx), nil
}

// fetch gets block idx from the swarm: parents from the cache or a Sync
// round, then each parent in rank order until one delivers verified bytes.
func (st *swarmTask) fetch(ctx context.Context, meta blockstore.Task, idx int, pace pacer) ([]byte, From, error) {
	if err := st.ensureRegistered(ctx); err != nil {
		return nil, 0, err
	}
	deadline := time.Now().Add(st.s.cfg.BlockTimeout)
	var lastErr error
	urgent := true // ask at once; after a round without parents, ride the next periodic round
	for {
		if time.Now().After(deadline) {
			if lastErr == nil {
				lastErr = errors.New("nobody holds it yet")
			}
			return nil, 0, fmt.Errorf("block %d of task %s: no parent delivered it within %s (last: %v): %w", idx, st.id, st.s.cfg.BlockTimeout, lastErr, ErrSwarmUnavailable)
		}
		ps := st.parents(idx)
		if _, ok := st.s.store.BlockDigest(st.id, idx); !ok {
			ps = nil // never fetch a block we cannot verify
		}
		if len(ps) == 0 {
			var err error
			began := time.Now()
			ps, err = st.waitParents(ctx, idx, urgent)
			st.s.waitNanos.Add(int64(time.Since(began)))
			if err != nil && st.s.transient(err) && ctx.Err() == nil {
				// The supernode is restarting (within SupernodeGrace): wait
				// for it, using the parents already known meanwhile.
				lastErr = err
				if err := sleepCtx(ctx, graceRetry); err != nil {
					return nil, 0, err
				}
				continue
			}
			if err != nil {
				return nil, 0, err
			}
			if _, ok := st.s.store.BlockDigest(st.id, idx); !ok {
				ps = nil
			}
		}
		if len(ps) == 0 {
			// Nobody holds it yet, or every holder is busy. A reader asks
			// again after a short pause (the supernode holds a Sync for a
			// block its seed is fetching, so this does not spin); background
			// work waits for the next periodic round (at most syncInterval
			// away) together with the other waiters.
			st.s.emptyRounds.Add(1)
			st.mu.Lock()
			if st.pending[idx] {
				st.s.seedPending.Add(1)
			}
			st.mu.Unlock()
			if priorityOf(ctx) == Foreground {
				if err := sleepCtx(ctx, fgRetry); err != nil {
					return nil, 0, err
				}
				continue
			}
			urgent = false
			continue
		}
		urgent = true
		began := time.Now()
		data, from, err := st.fetchFrom(ctx, meta, idx, ps, pace)
		st.s.xferNanos.Add(int64(time.Since(began)))
		if err == nil {
			return data, from, nil
		}
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		if errors.Is(err, errLocalStore) {
			// This host cannot store it (disk full): no parent helps, and
			// asking again would download it again for BlockTimeout.
			return nil, 0, err
		}
		lastErr = err
		st.mu.Lock()
		delete(st.assign, idx) // ask again
		st.mu.Unlock()
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return nil, 0, err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// fetchFrom tries the parents in order; in the end game a slow transfer is
// duplicated to the next parent and the first verified copy wins.
func (st *swarmTask) fetchFrom(ctx context.Context, meta blockstore.Task, idx int, ps []*api.Parent, pace pacer) ([]byte, From, error) {
	size := meta.BlockLen(idx)
	type res struct {
		data []byte
		p    *api.Parent
		err  error
	}
	fctx, cancel := context.WithCancel(ctx)
	results := make(chan res, len(ps))
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }() // losers of a steal are cancelled, then awaited
	start := func(p *api.Parent) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data, err := st.getBlock(fctx, p, idx, size, pace)
			results <- res{data, p, err}
		}()
	}
	next, running := 1, 1
	start(ps[0])
	stealTick := time.NewTicker(250 * time.Millisecond)
	defer stealTick.Stop()
	began := time.Now()
	var errs []error
	var laggard *api.Parent // the parent a laggard steal duplicated
	for running > 0 {
		select {
		case r := <-results:
			running--
			if r.err == nil {
				cancel()
				if laggard != nil && r.p != laggard && running > 0 {
					st.slow(laggard, idx)
				}
				return r.data, fromOf(r.p), nil
			}
			errs = append(errs, fmt.Errorf("parent %s: %w", r.p.GetHostId(), r.err))
			if ctx.Err() != nil {
				return nil, 0, ctx.Err()
			}
			if errors.Is(r.err, errLocalStore) {
				return nil, 0, r.err
			}
			if running == 0 && next < len(ps) {
				start(ps[next])
				next, running = next+1, running+1
				began = time.Now()
			}
		case <-stealTick.C:
			st.mu.Lock()
			typical := st.typical
			st.mu.Unlock()
			missing, _ := st.s.store.Missing(st.id)
			if running == 1 && shouldSteal(len(missing), endgameLeft, time.Since(began), typical, 500*time.Millisecond, len(ps)-next) {
				st.s.steals.Add(1)
				st.s.log.Debug("end game: duplicating slow block request", "task", st.id, "block", idx, "to", ps[next].GetHostId())
				start(ps[next])
				next, running = next+1, running+1
			} else if running == 1 && laggard == nil && next < len(ps) && isLaggard(time.Since(began), typical) {
				// Far slower than usual before the end game too: a laggard
				// parent would hold this fetch slot for as long as it likes.
				laggard = ps[next-1]
				st.s.steals.Add(1)
				st.s.log.Debug("duplicating a laggard's block request", "task", st.id, "block", idx, "from", laggard.GetHostId(), "to", ps[next].GetHostId())
				start(ps[next])
				next, running = next+1, running+1
			}
		}
	}
	return nil, 0, fmt.Errorf("block %d of task %s: every parent failed: %w", idx, st.id, errors.Join(errs...))
}

// Laggards: a transfer taking laggardFactor times the typical block time
// (and at least laggardMin) is duplicated to the next parent even before
// the end game; when the copy wins, the laggard's transfer counts as a
// failure (reported to the supernode, which deprioritises a parent failing
// repeatedly, and skipped here after three), so a parent whose link
// delivers a fraction of what it declares cannot hold the swarm's fetch
// slots.
const (
	laggardFactor = 8
	laggardMin    = 2 * time.Second
)

// isLaggard reports whether a transfer running for elapsed is a laggard's.
func isLaggard(elapsed, typical time.Duration) bool {
	return typical > 0 && elapsed >= max(laggardFactor*typical, laggardMin)
}

// slow records that parent p lost block idx to a duplicate of its transfer.
func (st *swarmTask) slow(p *api.Parent, idx int) {
	st.mu.Lock()
	st.fails[p.GetHostId()]++
	st.mu.Unlock()
	st.report(&api.BlockResult{Block: int32(idx), ParentId: p.GetHostId(), Error: "too slow: a duplicate from another parent delivered the block first"}, false)
	st.s.log.Debug("laggard parent lost a block to a duplicate", "task", st.id, "block", idx, "parent", p.GetHostId())
}

func fromOf(p *api.Parent) From {
	if p.GetIsSeed() {
		return FromSeed
	}
	return FromPeer
}

// errNotHeld marks a parent that answered 404 for a block it was assigned
// for: it does not hold it (evicted, found corrupt, or it lied).
var errNotHeld = errors.New("the parent does not hold the block")

// errBadDigest marks a block whose bytes did not match the seed's digest.
var errBadDigest = errors.New("block failed its sha256 check")

// errLocalStore marks a block this host received but could not store (disk
// full, task deleted): not the parent's fault, and no other parent helps.
var errLocalStore = errors.New("could not store the block here")

// errBusy marks a parent that refused with 429.
var errBusy = errors.New("parent busy")

// getBlock fetches one block from one parent, stores it (the store checks it
// against the seed's digest: each block is hashed once) and reports the result.
func (st *swarmTask) getBlock(ctx context.Context, p *api.Parent, idx int, size int64, pace pacer) ([]byte, error) {
	s := st.s
	began := time.Now()
	data, err := st.download(ctx, p, idx, size, pace)
	var storeErr error
	if err == nil {
		if perr := s.store.PutBlock(ctx, st.id, idx, data); errors.Is(perr, blockstore.ErrDigestMismatch) {
			err = fmt.Errorf("%w: %v", errBadDigest, perr)
		} else if perr != nil && ctx.Err() != nil {
			err = perr // we gave up meanwhile (a steal won, the caller left)
		} else if perr != nil {
			storeErr = perr
		}
	}
	dur := time.Since(began)
	r := &api.BlockResult{Block: int32(idx), ParentId: p.GetHostId(), Bytes: int64(len(data)), DurationUs: dur.Microseconds()}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil, err // we gave up (a steal won or the caller left): not the parent's fault
	}
	st.mu.Lock()
	switch {
	case err == nil && storeErr != nil:
		r.Error = "receiver could not store the block: " + storeErr.Error()
	case err == nil:
		r.Ok = true
		st.fails[p.GetHostId()] = 0
		if st.typical == 0 {
			st.typical = dur
		} else {
			st.typical = (st.typical*7 + dur) / 8
		}
	case errors.Is(err, errBadDigest):
		r.BadDigest, r.Error = true, err.Error()
		st.excluded[p.GetHostId()] = true
	case errors.Is(err, errBusy):
		r.Error = err.Error()
	case errors.Is(err, errNotHeld):
		r.Missing, r.Error = true, err.Error()
		st.fails[p.GetHostId()]++
	default:
		r.Error = err.Error()
		st.fails[p.GetHostId()]++
	}
	st.mu.Unlock()
	st.report(r, r.BadDigest || r.Missing)
	if storeErr != nil {
		return nil, fmt.Errorf("block %d of task %s: %w: %w", idx, st.id, errLocalStore, storeErr)
	}
	switch {
	case err == nil:
		s.mu.Lock()
		s.byParent[p.GetHostId()] += int64(len(data))
		s.mu.Unlock()
		if p.GetIsSeed() {
			s.blocksSeed.Add(1)
			s.bytesSeed.Add(int64(len(data)))
		} else {
			s.blocksPeers.Add(1)
			s.bytesPeers.Add(int64(len(data)))
		}
	case errors.Is(err, errBadDigest):
		s.bad.Add(1)
		s.log.Warn("parent served a corrupt block; excluding it for this task", "task", st.id, "block", idx, "parent", p.GetHostId())
	default:
		s.parentErrs.Add(1)
		if errors.Is(err, errBusy) {
			s.parentBusy.Add(1)
		}
		s.log.Debug("block fetch failed", "task", st.id, "block", idx, "parent", p.GetHostId(), "err", err)
	}
	return data, err
}

// download GETs one block; a transfer that stalls for StallTimeout is aborted.
// pacer applies the host's download rate limit to n bytes (Engine.wait).
type pacer func(ctx context.Context, n int64) error

func (st *swarmTask) download(ctx context.Context, p *api.Parent, idx int, size int64, pace pacer) ([]byte, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	url := fmt.Sprintf("%s://%s/blocks/%s/%d", st.s.cfg.TLS.Scheme(), p.GetUploadAddr(), st.id, idx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set(api.TokenHeader, st.tokenFor())
	resp, err := st.s.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusTooManyRequests:
		return nil, fmt.Errorf("%w: HTTP 429", errBusy)
	case http.StatusNotFound:
		return nil, fmt.Errorf("%w: GET %s: HTTP 404", errNotHeld, url)
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return nil, fmt.Errorf("GET %s: HTTP %d: %s", url, resp.StatusCode, msg)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != size {
		return nil, fmt.Errorf("%w: GET %s: %d bytes, want %d", errBadDigest, url, resp.ContentLength, size)
	}
	stall := time.AfterFunc(st.s.cfg.StallTimeout, func() { cancel(errors.New("transfer stalled")) })
	defer stall.Stop()
	buf := st.s.buffer(size)
	n := 0
	for n < len(buf) {
		m, err := resp.Body.Read(buf[n:])
		n += m
		if m > 0 {
			stall.Stop()                                  // waiting for our own rate limit is not the parent stalling
			if perr := pace(ctx, int64(m)); perr != nil { // the host's --download-rate
				return nil, fmt.Errorf("GET %s: download rate limiter: %w", url, perr)
			}
			stall.Reset(st.s.cfg.StallTimeout)
		}
		if err != nil {
			if err == io.EOF && n == len(buf) {
				break
			}
			if c := context.Cause(ctx); c != nil && ctx.Err() != nil {
				err = c
			}
			return nil, fmt.Errorf("GET %s: after %d of %d bytes: %w", url, n, size, err)
		}
	}
	return buf, nil
}

// ReportPreheat tells the supernode (with the next heartbeat) why this host
// failed a preheat order.
func (s *SupernodeSwarm) ReportPreheat(jobID, taskID string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.preheatReports = append(s.preheatReports, &api.PreheatReport{JobId: jobID, TaskId: taskID, Error: err.Error()})
	if len(s.preheatReports) > 256 { // a supernode that never answers: keep the newest
		s.preheatReports = s.preheatReports[len(s.preheatReports)-256:]
	}
}

// preheatOrders converts the wire form.
func preheatOrders(in []*api.PreheatOrder) []PreheatOrder {
	out := make([]PreheatOrder, 0, len(in))
	for _, o := range in {
		po := PreheatOrder{JobID: o.GetJobId(), TaskID: o.GetTaskId(), URL: o.GetUrl(), Digest: o.GetDigest(), Tag: o.GetTag()}
		for _, h := range o.GetHeaders() {
			if po.Header == nil {
				po.Header = http.Header{}
			}
			po.Header.Add(h.GetName(), h.GetValue())
		}
		out = append(out, po)
	}
	return out
}
