package supernode

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func startSupernode(t *testing.T, dir string, sc SchedulerConfig) *Supernode {
	t.Helper()
	sn, err := Start(Config{
		StoreDir: dir, GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0",
		Source: testSource(), Logger: testLogger(), Scheduler: sc, SyncWait: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

// dial connects as a process whose host secret is random: every host id
// used through the connection is bound to it.
func dial(t *testing.T, sn *Supernode) api.SchedulerClient {
	t.Helper()
	return dialAs(t, sn, rand.Text())
}

// dialAs connects with a given host secret ("" sends none).
func dialAs(t *testing.T, sn *Supernode, secret string) api.SchedulerClient {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if secret != "" {
		opts = append(opts, grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, api.HostSecretMetadata, secret), method, req, reply, cc, o...)
		}))
	}
	cc, err := grpc.NewClient(sn.GRPCAddr(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return api.NewSchedulerClient(cc)
}

// fakePeer is a gRPC client that plays a peer's control-plane part.
type fakePeer struct {
	t      *testing.T
	c      api.SchedulerClient
	host   *api.Host
	held   map[string]blockstore.Bitmap
	urls   map[string]string
	tokens map[string]string
}

func newPeer(t *testing.T, c api.SchedulerClient, id, idc string) *fakePeer {
	return &fakePeer{t: t, c: c, host: &api.Host{Id: id, UploadAddr: id + ".invalid:8001", Idc: idc},
		held: map[string]blockstore.Bitmap{}, urls: map[string]string{}, tokens: map[string]string{}}
}

func (p *fakePeer) announce(full bool) *api.AnnounceResponse {
	p.t.Helper()
	req := &api.AnnounceRequest{Host: p.host}
	if full {
		for id, bm := range p.held {
			req.Held = append(req.Held, &api.HeldTask{TaskId: id, Bitmap: bm, Url: p.urls[id], Length: 5<<20 + 1000, BlockSize: 1 << 20})
		}
	}
	resp, err := p.c.Announce(context.Background(), req)
	if err != nil {
		p.t.Fatal(err)
	}
	return resp
}

func (p *fakePeer) register(id, url string) *api.RegisterTaskResponse {
	p.t.Helper()
	resp, err := p.c.RegisterTask(context.Background(), &api.RegisterTaskRequest{HostId: p.host.Id, TaskId: id, Url: url,
		Headers: []*api.Header{{Name: "User-Agent", Value: "dfly-test"}}})
	if err != nil {
		p.t.Fatal(err)
	}
	p.tokens[id] = resp.Token
	p.urls[id] = url
	return resp
}

func (p *fakePeer) sync(req *api.SyncRequest) *api.SyncResponse {
	p.t.Helper()
	req.HostId = p.host.Id
	resp, err := p.c.Sync(context.Background(), req)
	if err != nil {
		p.t.Fatal(err)
	}
	return resp
}

// syncUntil repeats a Sync of wants until every wanted block is assigned.
func (p *fakePeer) syncUntil(id string, wants []int32) (map[int32][]byte, map[int32]*api.Assignment) {
	p.t.Helper()
	digests := map[int32][]byte{}
	assigned := map[int32]*api.Assignment{}
	// The seed streams the blocks from the origin meanwhile: ask again until
	// every want is assigned, with a generous bound for a loaded machine.
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		resp := p.sync(&api.SyncRequest{TaskId: id, Want: wants})
		if resp.SeedError != "" {
			p.t.Fatalf("seed error: %s", resp.SeedError)
		}
		for _, d := range resp.Digests {
			digests[d.Block] = d.Sha256
		}
		for _, a := range resp.Assignments {
			assigned[a.Block] = a
			// Release the parent's load so the next round is not saturated.
			p.sync(&api.SyncRequest{TaskId: id, Results: []*api.BlockResult{{Block: a.Block, ParentId: a.Parents[0].HostId, Ok: true, Bytes: 1 << 20, DurationUs: 10_000}}})
		}
		if len(assigned) == len(wants) {
			return digests, assigned
		}
	}
	p.t.Fatalf("wants %v: only %d assigned", wants, len(assigned))
	return nil, nil
}

// fetch GETs a block from an upload server with the peer's token.
func (p *fakePeer) fetch(addr, id string, idx int32, token string) (int, []byte, string) {
	p.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/blocks/%s/%d", addr, id, idx), nil)
	req.Header.Set(api.TokenHeader, token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	return resp.StatusCode, body, resp.Header.Get(api.DigestHeader)
}

func parentsOf(a *api.Assignment) (ids []string) {
	for _, p := range a.Parents {
		ids = append(ids, p.HostId)
	}
	return ids
}

func debugState(t *testing.T, sn *Supernode) State {
	t.Helper()
	resp, err := http.Get("http://" + sn.UploadAddr() + "/debug/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestSupernodeControlPlane(t *testing.T) {
	o := startOrigin(t)
	content := origin.Content{Size: 5<<20 + 1000, Seed: 11}
	url := o.Add("big.bin", content)
	id, _ := blockstore.TaskIDForURL(url, "", "")
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	defer sn.Close()
	c := dial(t, sn)

	a := newPeer(t, c, "peer-a", "idc1")
	ann := a.announce(true)
	//lint:ignore SA1019 the deprecated key must stay empty: nobody may mint tokens
	if len(ann.TokenKey) != 0 || len(ann.TokenPublicKeys) != 1 || !sn.TokenPublicKey().Equal(ed25519.PublicKey(ann.TokenPublicKeys[0])) || ann.HeartbeatIntervalMs != 2000 {
		t.Fatalf("announce response %+v: want the token public key and no secret key", ann)
	}
	reg := a.register(id, url)
	if m := reg.Meta; m.Length != content.Size || m.BlockSize != 1<<20 || m.TaskId != id || m.SeedError != "" || m.Etag == "" {
		t.Fatalf("meta %+v", m)
	}
	claims, err := api.VerifyToken([]ed25519.PublicKey{sn.TokenPublicKey()}, reg.Token, id, time.Now())
	if err != nil || claims.Host != "peer-a" || time.Until(claims.Expires) < 50*time.Minute || reg.TokenExpiresUnix != claims.Expires.Unix() {
		t.Fatalf("token %+v, %v: want one signed for peer-a and this task, valid for about an hour", claims, err)
	}

	// Want every block: the seed streams them; digests and the seed as parent come back.
	wants := []int32{5, 4, 3, 2, 1, 0}
	digests, assigned := a.syncUntil(id, wants)
	for _, b := range wants {
		as := assigned[b]
		if got := parentsOf(as); !slices.Equal(got, []string{"seed"}) || !as.Parents[0].IsSeed || as.Parents[0].UploadAddr != sn.Advertise() {
			t.Fatalf("block %d: parents %+v, want only the seed at %s", b, as.Parents, sn.Advertise())
		}
		status, body, hdr := a.fetch(as.Parents[0].UploadAddr, id, b, reg.Token)
		if status != 200 {
			t.Fatalf("fetch block %d from the seed: HTTP %d %s", b, status, body)
		}
		sum := sha256.Sum256(body)
		want := make([]byte, blockstore.BlockLen(content.Size, 1<<20, int(b)))
		content.ReadAt(want, int64(b)<<20)
		if string(sum[:]) != string(digests[b]) || string(body) != string(want) || hdr != fmt.Sprintf("%x", sum) {
			t.Fatalf("block %d: body/digest mismatch", b)
		}
	}
	_, forger, _ := ed25519.GenerateKey(nil)
	if status, _, _ := a.fetch(sn.Advertise(), id, 0, api.SignToken(forger, api.TokenClaims{Task: id, Host: "peer-a", Expires: time.Now().Add(time.Hour)})); status != http.StatusForbidden {
		t.Fatalf("fetch with a forged token: HTTP %d, want 403", status)
	}
	// A announces what it stored; B now gets A before the seed.
	a.sync(&api.SyncRequest{TaskId: id, Have: []int32{0, 1, 2, 3, 4, 5}, Done: true})
	b := newPeer(t, c, "peer-b", "idc1")
	b.announce(true)
	b.register(id, url)
	resp := b.sync(&api.SyncRequest{TaskId: id, Want: []int32{3}})
	if len(resp.Assignments) != 1 || !slices.Equal(parentsOf(resp.Assignments[0]), []string{"peer-a", "seed"}) || resp.Assignments[0].Holders != 2 {
		t.Fatalf("B's parents for block 3: %+v, want [peer-a seed]", resp.Assignments)
	}
	if resp.SeedBlocks != 6 || resp.TotalBlocks != 6 || len(resp.Digests) != 1 {
		t.Fatalf("sync response %+v", resp)
	}

	// B reports A for a bad block: B never gets A again for the task. A is
	// not blocked for everyone on B's word: the supernode checks the block
	// itself, and A's upload address does not answer (TestBadBlockReports).
	b.sync(&api.SyncRequest{TaskId: id, Results: []*api.BlockResult{{Block: 3, ParentId: "peer-a", BadDigest: true, Error: "sha256 mismatch"}}})
	resp = b.sync(&api.SyncRequest{TaskId: id, Want: []int32{3}})
	if got := parentsOf(resp.Assignments[0]); !slices.Equal(got, []string{"seed"}) {
		t.Fatalf("after a bad digest report parents are %v, want [seed]", got)
	}
	waitSeedComplete(t, sn, id)
	st := debugState(t, sn)
	var ts *TaskState
	for i := range st.Scheduler.Tasks {
		if st.Scheduler.Tasks[i].ID == id {
			ts = &st.Scheduler.Tasks[i]
		}
	}
	if ts == nil || len(ts.Blocked) != 0 || ts.Holders["seed"] != 6 || ts.Holders["peer-a"] != 6 {
		t.Fatalf("debug state task: %+v", ts)
	}
	if st.Seed.BytesFromOrigin != content.Size || st.Seed.Tasks[0].BytesFromOrigin != content.Size || st.Upload.BytesServed != content.Size || len(st.Seed.Tasks) != 1 || st.Seed.Tasks[0].State != SeedComplete {
		t.Fatalf("debug state seed %+v upload %+v", st.Seed, st.Upload)
	}
	for _, h := range st.Scheduler.Hosts {
		if h.ID == "seed" && h.BytesServed != content.Size {
			t.Fatalf("seed bytes served %d, want %d", h.BytesServed, content.Size)
		}
	}

	// Errors that tell the peer what to do.
	_, err = c.Sync(context.Background(), &api.SyncRequest{HostId: "peer-b", TaskId: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("sync of an unknown task: %v, want NotFound", err)
	}
	_, err = c.Announce(context.Background(), &api.AnnounceRequest{Host: &api.Host{Id: "seed"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("announce as the seed: %v, want InvalidArgument", err)
	}
	_, err = c.Sync(context.Background(), &api.SyncRequest{HostId: "seed", TaskId: id, Have: []int32{0}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("sync as the seed: %v, want InvalidArgument", err)
	}
	_, err = c.RegisterTask(context.Background(), &api.RegisterTaskRequest{HostId: "peer-b", TaskId: id})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("register without a URL: %v, want InvalidArgument", err)
	}
	if _, err := c.Leave(context.Background(), &api.LeaveRequest{HostId: "peer-b"}); err != nil {
		t.Fatal(err)
	}
	if sn.Scheduler().HasHost("peer-b") {
		t.Fatal("peer-b still known after Leave")
	}
}

func TestSupernodeSeedErrorAndExpiry(t *testing.T) {
	o := startOrigin(t)
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{HeartbeatInterval: 50 * time.Millisecond})
	defer sn.Close()
	c := dial(t, sn)
	p := newPeer(t, c, "p", "")
	p.announce(false)
	id404, _ := blockstore.TaskIDForURL(o.URL+"/missing", "", "")
	reg := p.register(id404, o.URL+"/missing")
	if reg.Meta.SeedError == "" || reg.Meta.Length != 0 {
		t.Fatalf("seed of a missing URL: meta %+v, want seed_error", reg.Meta)
	}
	// p stops announcing: the janitor expires it after 3 missed heartbeats.
	deadline := time.Now().Add(10 * time.Second)
	for sn.Scheduler().HasHost("p") {
		if time.Now().After(deadline) {
			t.Fatal("silent host never expired")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !sn.Scheduler().HasHost("seed") {
		t.Fatal("the seed expired")
	}
}

// waitSeedComplete waits until the seed has the whole task verified.
func waitSeedComplete(t *testing.T, sn *Supernode, id string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for st, _, _ := sn.seed.TaskState(id); st != SeedComplete; st, _, _ = sn.seed.TaskState(id) {
		if time.Now().After(deadline) {
			t.Fatalf("seed state %s after 20s", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testLogger logs to stderr when SN_DEBUG is set (for debugging a test).
func testLogger() *slog.Logger {
	if os.Getenv("SN_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return quietLogger()
}

// TestConcurrentPeers drives the service with many peers at once (run it
// with -race): each Syncs its missing blocks with a few free slots, fetches
// what the seed is assigned for from the real upload server (verifying the
// digest), takes blocks assigned to other peers as delivered, and reports.
// Every peer must complete, and most blocks must come from peers.
func TestConcurrentPeers(t *testing.T) {
	const peers = 12
	o := startOrigin(t)
	content := origin.Content{Size: 8 << 20, Seed: 15}
	url := o.Add("f.bin", content)
	id, _ := blockstore.TaskIDForURL(url, "", "")
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	defer sn.Close()
	c := dial(t, sn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	type tally struct{ seed, peers int }
	results := make(chan tally, peers)
	errs := make(chan error, peers)
	for i := range peers {
		go func() {
			p := newPeer(t, c, fmt.Sprintf("peer-%02d", i), []string{"a", "b"}[i%2])
			if _, err := c.Announce(ctx, &api.AnnounceRequest{Host: p.host}); err != nil {
				errs <- err
				return
			}
			reg, err := c.RegisterTask(ctx, &api.RegisterTaskRequest{HostId: p.host.Id, TaskId: id, Url: url})
			if err != nil {
				errs <- err
				return
			}
			have := map[int32]bool{}
			var newHave []int32
			var res []*api.BlockResult
			var n tally
			for len(have) < 8 {
				if ctx.Err() != nil {
					errs <- fmt.Errorf("%s: %d of 8 blocks when time ran out", p.host.Id, len(have))
					return
				}
				var want []int32
				for k := range int32(8) {
					if b := (k + int32(i)) % 8; !have[b] {
						want = append(want, b)
					}
				}
				resp, err := c.Sync(ctx, &api.SyncRequest{HostId: p.host.Id, TaskId: id, Have: newHave, Results: res, Want: want, MaxAssignments: 3})
				if err != nil {
					errs <- err
					return
				}
				newHave, res = nil, nil
				digests := map[int32][]byte{}
				for _, d := range resp.Digests {
					digests[d.Block] = d.Sha256
				}
				for _, a := range resp.Assignments {
					par := a.Parents[0]
					if par.IsSeed {
						body, err := fetchBlock(par.UploadAddr, id, a.Block, reg.Token)
						if err != nil {
							errs <- err
							return
						}
						if sum := sha256.Sum256(body); !bytes.Equal(sum[:], digests[a.Block]) {
							errs <- fmt.Errorf("block %d from the seed does not match its digest", a.Block)
							return
						}
						n.seed++
					} else {
						n.peers++
					}
					have[a.Block] = true
					newHave = append(newHave, a.Block)
					res = append(res, &api.BlockResult{Block: a.Block, ParentId: par.HostId, Ok: true, Bytes: 1 << 20, DurationUs: 5000})
				}
			}
			if _, err := c.Sync(ctx, &api.SyncRequest{HostId: p.host.Id, TaskId: id, Have: newHave, Results: res, Done: true}); err != nil {
				errs <- err
				return
			}
			results <- n
		}()
	}
	var total tally
	for range peers {
		select {
		case err := <-errs:
			t.Fatal(err)
		case n := <-results:
			total.seed += n.seed
			total.peers += n.peers
		}
	}
	t.Logf("blocks from the seed %d, from peers %d", total.seed, total.peers)
	if total.seed+total.peers != 8*peers || total.peers < total.seed {
		t.Fatalf("seed %d, peers %d: want %d transfers, most from peers", total.seed, total.peers, 8*peers)
	}
	st := sn.State()
	for _, ts := range st.Scheduler.Tasks {
		for h, n := range ts.Holders {
			if n != 8 {
				t.Errorf("holder %s has %d of 8 blocks in the scheduler", h, n)
			}
		}
		if len(ts.Holders) != peers+1 {
			t.Errorf("%d holders, want %d", len(ts.Holders), peers+1)
		}
	}
}

func fetchBlock(addr, id string, idx int32, token string) ([]byte, error) {
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/blocks/%s/%d", addr, id, idx), nil)
	req.Header.Set(api.TokenHeader, token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("block %d from %s: HTTP %d", idx, addr, resp.StatusCode)
	}
	return io.ReadAll(resp.Body)
}
