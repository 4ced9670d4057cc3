package peer

import (
	"context"
	"crypto/ed25519"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func TestRarestFirst(t *testing.T) {
	tests := []struct {
		name       string
		missing    []int
		holders    map[int]int
		window     int
		wantHeld   []int // blocks expected first, in holder order classes
		wantUnheld []int // the rest, as a set per window
	}{
		{name: "nothing known keeps index order with window 1", missing: []int{3, 1, 2, 0}, window: 1, wantUnheld: []int{0, 1, 2, 3}},
		{name: "rarest first", missing: []int{0, 1, 2, 3}, holders: map[int]int{0: 5, 1: 1, 2: 3, 3: 2}, window: 1, wantHeld: []int{1, 3, 2, 0}},
		{name: "held before unheld", missing: []int{0, 1, 2, 3, 4}, holders: map[int]int{4: 7, 2: 1}, window: 1, wantHeld: []int{2, 4}, wantUnheld: []int{0, 1, 3}},
		{name: "zero holders counts as unheld", missing: []int{0, 1}, holders: map[int]int{0: 0, 1: 2}, window: 1, wantHeld: []int{1}, wantUnheld: []int{0}},
		{name: "empty", missing: nil, window: 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := rarestFirst(slices.Clone(tc.missing), tc.holders, rand.New(rand.NewPCG(1, 2)), tc.window)
			want := append(slices.Clone(tc.wantHeld), tc.wantUnheld...)
			if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
				t.Fatalf("rarestFirst = %v, want %v", got, want)
			}
		})
	}
}

func TestRarestFirstTiesAndWindows(t *testing.T) {
	// 64 unheld blocks, windows of 16: every window keeps its own blocks
	// (the seed's order is kept coarsely) but is shuffled, and two hosts
	// (different random sources) get different orders.
	missing := make([]int, 64)
	for i := range missing {
		missing[i] = i
	}
	a := rarestFirst(slices.Clone(missing), nil, rand.New(rand.NewPCG(1, 1)), 16)
	b := rarestFirst(slices.Clone(missing), nil, rand.New(rand.NewPCG(2, 2)), 16)
	if slices.Equal(a, b) {
		t.Fatal("two hosts got the same order: no spreading")
	}
	for w := 0; w < 4; w++ {
		win := slices.Clone(a[w*16 : (w+1)*16])
		slices.Sort(win)
		for i, v := range win {
			if v != w*16+i {
				t.Fatalf("window %d holds %v: blocks left their window", w, win)
			}
		}
	}
	// Window 0: one shuffle over every unheld block; a permutation of them.
	full := rarestFirst(slices.Clone(missing), nil, rand.New(rand.NewPCG(4, 4)), 0)
	if slices.Equal(full, missing) {
		t.Fatal("window 0 kept the index order")
	}
	sorted := slices.Clone(full)
	slices.Sort(sorted)
	if !slices.Equal(sorted, missing) {
		t.Fatalf("window 0 order %v is not a permutation of the missing blocks", full)
	}
	// Equal holder counts are shuffled, but never placed after a more common block.
	holders := map[int]int{}
	for i := range 32 {
		holders[i] = 1 + i%3
	}
	got := rarestFirst(slices.Clone(missing[:32]), holders, rand.New(rand.NewPCG(3, 3)), 1)
	for i := 1; i < len(got); i++ {
		if holders[got[i-1]] > holders[got[i]] {
			t.Fatalf("order %v: block %d (%d holders) before block %d (%d holders)", got, got[i-1], holders[got[i-1]], got[i], holders[got[i]])
		}
	}
}

func TestShouldSteal(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name             string
		missing, endgame int
		elapsed, typical time.Duration
		minWait          time.Duration
		spare            int
		want             bool
	}{
		{"not end game", 50, 8, 10 * time.Second, 100 * ms, 500 * ms, 3, false},
		{"end game but fast", 4, 8, 150 * ms, 100 * ms, 500 * ms, 3, false},
		{"end game and slow", 4, 8, 900 * ms, 100 * ms, 500 * ms, 3, true},
		{"slow relative to typical", 4, 8, 3 * time.Second, time.Second, 500 * ms, 1, true},
		{"not slow relative to typical", 4, 8, 1500 * ms, time.Second, 500 * ms, 1, false},
		{"no spare parent", 1, 8, 10 * time.Second, 100 * ms, 500 * ms, 0, false},
		{"no history yet waits minWait", 2, 8, 400 * ms, 0, 500 * ms, 2, false},
		{"exactly at the bound", 8, 8, 500 * ms, 0, 500 * ms, 2, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := shouldSteal(tc.missing, tc.endgame, tc.elapsed, tc.typical, tc.minWait, tc.spare); got != tc.want {
				t.Fatalf("shouldSteal = %v, want %v", got, tc.want)
			}
		})
	}
}

// testPeer is an in-process peer: store, upload server, swarm and engine.
type testPeer struct {
	store  *blockstore.Store
	swarm  *SupernodeSwarm
	engine *Engine
	upload *UploadServer
}

func newTestPeer(t testing.TB, fx *seedFixture, id string, supernode string, corrupt bool, opts ...func(*UploadConfig)) *testPeer {
	t.Helper()
	return newRateLimitedPeer(t, fx, id, supernode, corrupt, 0, opts...)
}

func newRateLimitedPeer(t testing.TB, fx *seedFixture, id string, supernode string, corrupt bool, downloadRate int64, opts ...func(*UploadConfig)) *testPeer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &testPeer{store: st}
	ucfg := UploadConfig{Store: st, CorruptUploads: corrupt, Logger: quietLogger()}
	for _, o := range opts {
		o(&ucfg)
	}
	p.upload = NewUploadServer(ucfg)
	p.swarm, err = NewSwarm(ctx, SwarmConfig{Supernode: supernode, Store: st, HostID: id, UploadAddr: ln.Addr().String(),
		BlockTimeout: 10 * time.Second, RPCTimeout: 2 * time.Second, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	p.upload.cfg.Tokens = p.swarm
	p.engine, err = New(Config{Store: st, Source: source.New(source.Options{Logger: quietLogger(), Retries: -1}), Swarm: p.swarm,
		Logger: quietLogger(), DownloadRate: downloadRate})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = p.upload.Serve(ctx, ln) }()
	t.Cleanup(func() {
		p.swarm.Close()
		cancel()
		wg.Wait()
		st.Close()
	})
	return p
}

func storeSHA256(t *testing.T, st *blockstore.Store, id string) string {
	t.Helper()
	h := sha256.New()
	if _, err := st.WriteTo(context.Background(), id, h); err != nil {
		t.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func TestSwarmDownloadFromSeedThenPeer(t *testing.T) {
	const size = 5<<20 + 12345
	fx := newSeedFixture(t, size)
	ctx := context.Background()
	want := fx.content.Digest("sha256")

	a := newTestPeer(t, fx, "A", fx.addr, false)
	res, err := a.engine.Download(ctx, Request{URL: fx.url}, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stats.BytesSeed != size || res.Stats.BytesOrigin != 0 || res.Stats.BytesPeers != 0 {
		t.Fatalf("A's bytes: %+v, want all %d from the seed", res.Stats, size)
	}
	if got := storeSHA256(t, a.store, fx.taskID); got != want {
		t.Fatalf("A's content %s, want %s", got, want)
	}
	if fx.origin.BytesSent() != 0 {
		t.Fatalf("origin sent %d bytes; the seed should have served everything", fx.origin.BytesSent())
	}
	// Done flushed A's haves: the scheduler knows A holds every block.
	fx.sched.mu.Lock()
	held := fx.sched.tasks[fx.taskID].holders["A"].Count()
	syncs, wants := fx.sched.syncs, fx.sched.wants
	fx.sched.mu.Unlock()
	if held != 6 {
		t.Fatalf("scheduler thinks A holds %d blocks, want 6", held)
	}
	if wants < 6 || syncs > wants {
		t.Fatalf("%d syncs for %d wants: want at least one want per block and no more syncs than wants", syncs, wants)
	}

	b := newTestPeer(t, fx, "B", fx.addr, false)
	res, err = b.engine.Download(ctx, Request{URL: fx.url}, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stats.BytesPeers != size {
		t.Fatalf("B's bytes: %+v, want all %d from peer A (ranked first)", res.Stats, size)
	}
	if got := storeSHA256(t, b.store, fx.taskID); got != want {
		t.Fatalf("B's content %s, want %s", got, want)
	}
	if s := b.swarm.Stats(); s.BytesByParent["A"] != size || s.BytesFromPeers != size {
		t.Fatalf("B's swarm stats %+v: want %d bytes from A", s, size)
	}
	if a.upload.Stats().BytesServed != size {
		t.Fatalf("A served %d bytes, want %d", a.upload.Stats().BytesServed, size)
	}
}

func TestSwarmIsolatesLiar(t *testing.T) {
	const size = 12 << 20
	fx := newSeedFixture(t, size)
	ctx := context.Background()
	liar := newTestPeer(t, fx, "liar", fx.addr, true)
	if _, err := liar.engine.Download(ctx, Request{URL: fx.url}, DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	b := newTestPeer(t, fx, "B", fx.addr, false)
	res, err := b.engine.Download(ctx, Request{URL: fx.url}, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := storeSHA256(t, b.store, fx.taskID), fx.content.Digest("sha256"); got != want {
		t.Fatalf("B's content %s, want %s", got, want)
	}
	s := b.swarm.Stats()
	if s.BadBlocks < 1 || s.BadBlocks > 8 {
		t.Fatalf("B saw %d bad blocks; want at least 1 and at most one per parallel fetch (8)", s.BadBlocks)
	}
	if res.Stats.BytesPeers != 0 || res.Stats.BytesSeed != size {
		t.Fatalf("B's bytes %+v: want everything from the seed once the liar is excluded", res.Stats)
	}
	fx.sched.mu.Lock()
	blocked := fx.sched.blocked["liar"]
	fx.sched.mu.Unlock()
	if !blocked {
		t.Fatal("B did not report the liar's bad digest to the supernode")
	}
}

func TestSwarmSupernodeUnreachableFallsBackToOrigin(t *testing.T) {
	const size = 3 << 20
	fx := newSeedFixture(t, size)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there any more
	p := newTestPeer(t, fx, "P", dead, false)
	res, err := p.engine.Download(context.Background(), Request{URL: fx.url}, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stats.BytesOrigin != size || res.Fallback == 0 {
		t.Fatalf("bytes %+v, %d fallbacks: want everything from the origin, counted as fallback", res.Stats, res.Fallback)
	}
	if got, want := storeSHA256(t, p.store, fx.taskID), fx.content.Digest("sha256"); got != want {
		t.Fatalf("content %s, want %s", got, want)
	}
	if s := p.swarm.Stats(); s.SupernodeUp {
		t.Fatal("swarm reports the supernode up")
	}
}

func TestSwarmReannouncesAfterSupernodeRestart(t *testing.T) {
	const size = 2 << 20
	fx := newSeedFixture(t, size)
	a := newTestPeer(t, fx, "A", fx.addr, false)
	if _, err := a.engine.Download(context.Background(), Request{URL: fx.url}, DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	fx.sched.restart()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fx.sched.mu.Lock()
		bm, ok := fx.sched.tasks[fx.taskID].holders["A"]
		tok := fx.sched.token(fx.taskID, "B", time.Now().Add(time.Hour))
		fx.sched.mu.Unlock()
		if ok && bm.Count() == 2 {
			// The upload server accepts tokens under the new key too.
			if err := a.swarm.CheckToken(fx.taskID, tok); err != nil {
				t.Fatalf("upload server rejects tokens of the restarted supernode: %v", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("A did not re-announce its held blocks after the supernode restarted")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSwarmTokens(t *testing.T) {
	s := &SupernodeSwarm{}
	_, kNew, _ := ed25519.GenerateKey(crand.Reader)
	_, kOld, _ := ed25519.GenerateKey(crand.Reader)
	_, kOther, _ := ed25519.GenerateKey(crand.Reader)
	exp := time.Now().Add(time.Hour)
	sign := func(k ed25519.PrivateKey, task string, exp time.Time) string {
		return api.SignToken(k, api.TokenClaims{Task: task, Host: "h", Expires: exp})
	}
	if err := s.CheckToken("t", sign(kNew, "t", exp)); err == nil {
		t.Fatal("a swarm without keys accepted a token")
	}
	s.keys = []ed25519.PublicKey{kNew.Public().(ed25519.PublicKey), kOld.Public().(ed25519.PublicKey)}
	for _, tc := range []struct {
		name, token, check string
		want               error
	}{
		{"current key", sign(kNew, "t1", exp), "t1", nil},
		{"previous key", sign(kOld, "t1", exp), "t1", nil},
		{"unknown key", sign(kOther, "t1", exp), "t1", api.ErrTokenSignature},
		{"other task", sign(kNew, "t1", exp), "t2", api.ErrTokenTask},
		{"expired", sign(kNew, "t1", time.Now().Add(-time.Minute)), "t1", api.ErrTokenExpired},
		{"missing", "", "t1", api.ErrTokenMissing},
	} {
		if err := s.CheckToken(tc.check, tc.token); !errors.Is(err, tc.want) {
			t.Errorf("%s: CheckToken = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestTokenDue(t *testing.T) {
	at := time.Unix(1000, 0)
	for _, tc := range []struct {
		issued, expires, now time.Time
		want                 bool
	}{
		{at, at.Add(time.Hour), at.Add(30 * time.Minute), false},
		{at, at.Add(time.Hour), at.Add(46 * time.Minute), true},
		{at, time.Time{}, at.Add(99 * time.Hour), false}, // no expiry known
		{at, at, at.Add(time.Hour), false},
	} {
		if got := tokenDue(tc.issued, tc.expires, tc.now); got != tc.want {
			t.Errorf("tokenDue(%v, %v, %v) = %v, want %v", tc.issued, tc.expires, tc.now, got, tc.want)
		}
	}
}

func TestForegroundWantsGoFirst(t *testing.T) {
	if priorityOf(context.Background()) != Background || priorityOf(WithPriority(context.Background(), Foreground)) != Foreground {
		t.Fatal("priority does not travel in the context")
	}
	st := &swarmTask{awaited: map[int]int{}, fgAwait: map[int]int{}, sent: map[int]*round{}, next: newRound(), nextFg: newRound()}
	r := st.await(1, Background)
	st.await(2, Background)
	if fr := st.await(3, Foreground); fr != st.nextFg || fr == r {
		t.Fatal("a foreground caller must wait for its own round, not the background one")
	}
	st.await(2, Background) // a second caller of block 2: asked once
	if st.await(4, Background) != r {
		t.Fatal("callers registered before a round must share it")
	}
	st.awaited[4] = 0 // its caller left
	fr := st.nextFg
	if got := st.wantsLocked(true, fr); !slices.Equal(got, []int32{3}) {
		t.Fatalf("foreground wants %v, want [3]", got)
	}
	if st.sent[3] != fr {
		t.Fatal("the foreground block is not marked as carried by its round")
	}
	if st.await(3, Foreground) != fr {
		t.Fatal("a caller of a block a Sync in flight carries must wait for that Sync")
	}
	if got := st.wantsLocked(true, newRound()); len(got) != 0 {
		t.Fatalf("foreground wants %v while the block is in flight, want none", got)
	}
	if got := st.wantsLocked(false, nil); !slices.Equal(got, []int32{1, 2}) {
		t.Fatalf("background wants %v, want [1 2]: arrival order, no duplicates, no abandoned block, no foreground block", got)
	}
}

// A foreground read must not wait behind a Sync the supernode holds (as it
// does while its seed fetches a wanted block): it gets its own round at once.
func TestForegroundNotHeldBehindBackgroundSync(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fx := newSeedFixture(t, 4<<20)
	release := make(chan struct{})
	fx.sched.mu.Lock()
	fx.sched.hold = map[int32]chan struct{}{0: release}
	fx.sched.mu.Unlock()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	p := newTestPeer(t, fx, "A", fx.addr, false)
	task, err := p.engine.Open(ctx, Request{URL: fx.url})
	if err != nil {
		t.Fatal(err)
	}
	bg := make(chan error, 1)
	go func() { bg <- task.Fetch(ctx, 0, Background) }()
	for {
		fx.sched.mu.Lock()
		n := fx.sched.holding
		fx.sched.mu.Unlock()
		if n > 0 {
			break
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			t.Fatal("the background Sync never reached the scheduler")
		}
	}
	if err := task.Fetch(ctx, 1, Foreground); err != nil {
		t.Fatal(err)
	}
	fx.sched.mu.Lock()
	stillHeld := fx.sched.holding
	fx.sched.mu.Unlock()
	select {
	case err := <-bg:
		t.Fatalf("the background fetch ended (%v) before its Sync was released", err)
	default:
	}
	if stillHeld != 1 {
		t.Fatalf("%d Syncs held after the foreground read, want 1: the read waited for the held round", stillHeld)
	}
	if !p.store.HasBlock(fx.taskID, 1) || fx.origin.BytesSent() != 0 {
		t.Fatalf("block 1 stored=%v, origin sent %d bytes: want it from the seed", p.store.HasBlock(fx.taskID, 1), fx.origin.BytesSent())
	}
	close(release)
	if err := <-bg; err != nil {
		t.Fatalf("background fetch after release: %v", err)
	}
}

func TestSwarmEndGameStealsFromSlowParent(t *testing.T) {
	const size = 3 << 20
	fx := newSeedFixture(t, size)
	ctx := context.Background()
	// A holds everything but uploads at 32 KiB/s: a 1 MiB block would take
	// 32s. The fake scheduler ranks A before the seed, so B starts every
	// block on A; with 3 blocks B is in the end game at once and must
	// duplicate the slow requests to the seed.
	slow := newTestPeer(t, fx, "A", fx.addr, false, func(c *UploadConfig) { c.Rate = 32 << 10 })
	if _, err := slow.engine.Download(ctx, Request{URL: fx.url}, DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	b := newTestPeer(t, fx, "B", fx.addr, false)
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second) // below the 96s the slow parent alone would take
	defer cancel()
	res, err := b.engine.Download(dctx, Request{URL: fx.url}, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := storeSHA256(t, b.store, fx.taskID), fx.content.Digest("sha256"); got != want {
		t.Fatalf("content %s, want %s", got, want)
	}
	s := b.swarm.Stats()
	if s.Steals < 1 || res.Stats.BytesSeed == 0 {
		t.Fatalf("steals %d, bytes %+v: want the slow requests duplicated to the seed", s.Steals, res.Stats)
	}
}

func TestSwarmDownloadRateAppliesToPeers(t *testing.T) {
	const size = 3 << 20
	fx := newSeedFixture(t, size)
	// 1 MiB/s with a 1 MiB burst: 3 MiB cannot arrive in less than 2s. (A
	// lower bound holds on any machine, however loaded.)
	p := newRateLimitedPeer(t, fx, "P", fx.addr, false, 1<<20)
	began := time.Now()
	res, err := p.engine.Download(context.Background(), Request{URL: fx.url}, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < 1900*time.Millisecond {
		t.Fatalf("3 MiB from the seed in %v at a 1 MiB/s download limit: the swarm ignores --download-rate", took)
	}
	if res.Stats.BytesSeed != size {
		t.Fatalf("bytes %+v, want all from the seed", res.Stats)
	}
}

// BenchmarkSwarmDownload measures a whole download through the swarm path
// (Sync rounds with a supernode, HTTP block transfers from the seed, sha256
// checks, store writes) on loopback: go test -bench SwarmDownload ./peer
func BenchmarkSwarmDownload(b *testing.B) {
	const size = 32 << 20
	fx := newSeedFixture(b, size)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		p := newTestPeer(b, fx, "bench", fx.addr, false)
		b.StartTimer()
		if _, err := p.engine.Download(context.Background(), Request{URL: fx.url}, DownloadOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
