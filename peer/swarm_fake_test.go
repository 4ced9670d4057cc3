package peer

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// fakeScheduler is a minimal in-process implementation of the supernode's
// wire protocol for unit tests of the peer side (the real supernode is
// exercised by integration/swarm). Its "seed" is a real UploadServer over a
// store that already holds the content; parents are ranked non-seed first.
type fakeScheduler struct {
	api.UnimplementedSchedulerServer

	mu       sync.Mutex
	key      ed25519.PrivateKey
	hosts    map[string]*api.Host
	tasks    map[string]*fakeTask
	announce []*api.AnnounceRequest
	results  []*api.BlockResult
	blocked  map[string]bool // host IDs reported for a bad digest
	syncs    int
	wants    int
	hold     map[int32]chan struct{} // a Sync that wants one of these blocks waits until the channel is closed
	holding  int                     // Syncs waiting on hold now
}

type fakeTask struct {
	meta    *api.TaskMeta
	digests [][]byte
	holders map[string]blockstore.Bitmap
}

func newFakeScheduler() *fakeScheduler {
	f := &fakeScheduler{hosts: map[string]*api.Host{}, tasks: map[string]*fakeTask{}, blocked: map[string]bool{}}
	_, f.key, _ = ed25519.GenerateKey(rand.Reader)
	return f
}

// restart forgets every host and holding and changes the token key, as a
// supernode process restart would (task metadata is kept for simplicity).
func (f *fakeScheduler) restart() {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, f.key, _ = ed25519.GenerateKey(rand.Reader)
	f.hosts = map[string]*api.Host{"seed": f.hosts["seed"]}
	for _, t := range f.tasks {
		for h := range t.holders {
			if h != "seed" {
				delete(t.holders, h)
			}
		}
	}
}

func (f *fakeScheduler) Announce(_ context.Context, r *api.AnnounceRequest) (*api.AnnounceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hosts[r.GetHost().GetId()] = r.GetHost()
	f.announce = append(f.announce, r)
	for _, h := range r.GetHeld() {
		if t, ok := f.tasks[h.GetTaskId()]; ok {
			t.holders[r.GetHost().GetId()] = blockstore.Bitmap(h.GetBitmap()).Clone()
		}
	}
	return &api.AnnounceResponse{HeartbeatIntervalMs: 100, TokenPublicKeys: [][]byte{f.key.Public().(ed25519.PublicKey)}}, nil
}

func (f *fakeScheduler) RegisterTask(_ context.Context, r *api.RegisterTaskRequest) (*api.RegisterTaskResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.hosts[r.GetHostId()]; !ok {
		return nil, status.Error(codes.NotFound, "host not announced")
	}
	t, ok := f.tasks[r.GetTaskId()]
	if !ok {
		return nil, status.Error(codes.FailedPrecondition, "fake scheduler: unknown task")
	}
	if len(r.GetBitmap()) > 0 {
		t.holders[r.GetHostId()] = blockstore.Bitmap(r.GetBitmap()).Clone()
	}
	tok := f.token(r.GetTaskId(), r.GetHostId(), time.Now().Add(time.Hour))
	return &api.RegisterTaskResponse{Meta: t.meta, Token: tok, TokenExpiresUnix: time.Now().Add(time.Hour).Unix()}, nil
}

// token signs a task token with the fake supernode's key (caller holds f.mu).
func (f *fakeScheduler) token(task, host string, exp time.Time) string {
	return api.SignToken(f.key, api.TokenClaims{Task: task, Host: host, Expires: exp})
}

func (f *fakeScheduler) Sync(ctx context.Context, r *api.SyncRequest) (*api.SyncResponse, error) {
	f.mu.Lock()
	var held []chan struct{}
	for _, w := range r.GetWant() {
		if c, ok := f.hold[w]; ok {
			held = append(held, c)
		}
	}
	if len(held) > 0 {
		f.holding++
		f.mu.Unlock()
		for _, c := range held { // like a supernode waiting for its seed
			select {
			case <-c:
			case <-ctx.Done():
			}
		}
		f.mu.Lock()
		f.holding--
		if err := ctx.Err(); err != nil {
			f.mu.Unlock()
			return nil, status.FromContextError(err).Err()
		}
	}
	defer f.mu.Unlock()
	f.syncs++
	f.wants += len(r.GetWant())
	t, ok := f.tasks[r.GetTaskId()]
	if _, hok := f.hosts[r.GetHostId()]; !ok || !hok {
		return nil, status.Error(codes.NotFound, "unknown task or host")
	}
	n := len(t.digests)
	bm, ok := t.holders[r.GetHostId()]
	if !ok {
		bm = blockstore.NewBitmap(n)
		t.holders[r.GetHostId()] = bm
	}
	for _, b := range r.GetHave() {
		bm.Set(int(b))
	}
	for _, res := range r.GetResults() {
		f.results = append(f.results, res)
		if res.GetBadDigest() {
			f.blocked[res.GetParentId()] = true
		}
	}
	resp := &api.SyncResponse{TotalBlocks: int32(n), SeedBlocks: int32(n)}
	for _, w := range r.GetWant() {
		b := int(w)
		resp.Digests = append(resp.Digests, &api.BlockDigest{Block: w, Sha256: t.digests[b]})
		var peers, seeds []*api.Parent
		for id, hb := range t.holders {
			if id == r.GetHostId() || f.blocked[id] || !hb.Has(b) {
				continue
			}
			h := f.hosts[id]
			if h == nil {
				continue
			}
			p := &api.Parent{HostId: id, UploadAddr: h.GetUploadAddr(), IsSeed: id == "seed"}
			if p.IsSeed {
				seeds = append(seeds, p)
			} else {
				peers = append(peers, p)
			}
		}
		ps := append(peers, seeds...)
		if len(ps) > 0 {
			resp.Assignments = append(resp.Assignments, &api.Assignment{Block: w, Parents: ps, Holders: int32(len(ps))})
		}
	}
	return resp, nil
}

func (f *fakeScheduler) Leave(_ context.Context, r *api.LeaveRequest) (*api.LeaveResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.GetTaskId() == "" {
		delete(f.hosts, r.GetHostId())
	}
	return &api.LeaveResponse{}, nil
}

// seedFixture is a fake supernode plus a seed holding one generated file.
type seedFixture struct {
	sched   *fakeScheduler
	addr    string // gRPC address
	origin  *origin.Server
	url     string
	content origin.Content
	taskID  string
	seed    *blockstore.Store
	stop    func()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newSeedFixture starts an origin with a file of size bytes, a seed store
// holding all of it behind a real upload server, and the fake scheduler.
func newSeedFixture(t testing.TB, size int64) *seedFixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	org, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := origin.Content{Size: size, Seed: 7}
	url := org.Add("file.bin", c)
	id, err := blockstore.TaskIDForURL(url, "", "")
	if err != nil {
		t.Fatal(err)
	}
	seed, err := blockstore.Open(t.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	meta, err := seed.CreateTask(ctx, blockstore.Task{ID: id, Source: url, Length: size, BlockSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	digests := make([][]byte, meta.NumBlocks())
	for i := range digests {
		buf := make([]byte, meta.BlockLen(i))
		if _, err := c.ReadAt(buf, int64(i)*meta.BlockSize); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		sum := sha256.Sum256(buf)
		digests[i] = sum[:]
		if err := seed.PutBlock(ctx, id, i, buf); err != nil {
			t.Fatal(err)
		}
	}
	f := newFakeScheduler()
	up := NewUploadServer(UploadConfig{Store: seed, Tokens: fakeTokens{f}, Logger: quietLogger()})
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	all := blockstore.NewBitmap(meta.NumBlocks())
	for i := range digests {
		all.Set(i)
	}
	f.hosts["seed"] = &api.Host{Id: "seed", UploadAddr: upLn.Addr().String()}
	f.tasks[id] = &fakeTask{
		meta:    &api.TaskMeta{TaskId: id, Length: size, BlockSize: meta.BlockSize, Url: url, Digest: c.Digest("sha256")},
		digests: digests, holders: map[string]blockstore.Bitmap{"seed": all},
	}
	gs := grpc.NewServer()
	api.RegisterSchedulerServer(gs, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = gs.Serve(ln) }()
	go func() { defer wg.Done(); _ = up.Serve(ctx, upLn) }()
	fx := &seedFixture{sched: f, addr: ln.Addr().String(), origin: org, url: url, content: c, taskID: id, seed: seed}
	fx.stop = func() {
		gs.Stop()
		cancel()
		wg.Wait()
		seed.Close()
		org.Close()
	}
	t.Cleanup(fx.stop)
	return fx
}

// fakeTokens checks tokens with the fake scheduler's current key.
type fakeTokens struct{ f *fakeScheduler }

func (ft fakeTokens) CheckToken(task, token string) error {
	ft.f.mu.Lock()
	defer ft.f.mu.Unlock()
	_, err := api.VerifyToken([]ed25519.PublicKey{ft.f.key.Public().(ed25519.PublicKey)}, token, task, time.Now())
	return err
}
