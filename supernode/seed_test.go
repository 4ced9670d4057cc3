package supernode

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/source"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openStore(t *testing.T, dir string) *blockstore.Store {
	t.Helper()
	st, err := blockstore.Open(dir, blockstore.Options{GCInterval: -1, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func startOrigin(t *testing.T) *origin.Server {
	t.Helper()
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

func testSource() *source.Client {
	return source.New(source.Options{Retries: 1, Backoff: 10 * time.Millisecond, Timeout: 5 * time.Second, Logger: quietLogger()})
}

// seedEvents records the seed's callbacks.
type seedEvents struct {
	mu     sync.Mutex
	metas  []blockstore.Task
	have   []int // blocks present at OnMeta
	blocks []int // OnBlock order
	resets int
	gate   chan struct{} // when non-nil, the first OnBlock waits on it
}

func (e *seedEvents) config(store *blockstore.Store) SeedConfig {
	return SeedConfig{
		Store: store, Source: testSource(), Logger: quietLogger(),
		OnMeta: func(t blockstore.Task, have blockstore.Bitmap) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.metas = append(e.metas, t)
			for b := range t.NumBlocks() {
				if have.Has(b) {
					e.have = append(e.have, b)
				}
			}
		},
		OnBlock: func(_ string, idx int) {
			e.mu.Lock()
			first := len(e.blocks) == 0
			e.blocks = append(e.blocks, idx)
			gate := e.gate
			e.mu.Unlock()
			if first && gate != nil {
				<-gate
			}
		},
		OnReset: func(string) { e.mu.Lock(); e.resets++; e.mu.Unlock() },
	}
}

func (e *seedEvents) blockOrder() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.blocks)
}

// waitSeed waits for a task's seed run to end.
func waitSeed(t *testing.T, s *Seed, id string) {
	t.Helper()
	st := s.lookup(id)
	if st == nil {
		t.Fatalf("seed does not know task %s", id)
	}
	select {
	case <-st.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("seed of %s did not finish", id)
	}
}

func TestSeedStreamsBlocksWithDigests(t *testing.T) {
	o := startOrigin(t)
	content := origin.Content{Size: 5<<20 + 12345, Seed: 7}
	url := o.Add("f.bin", content)
	store := openStore(t, t.TempDir())
	defer store.Close()
	ev := &seedEvents{}
	cfg := ev.config(store)
	cfg.RevalidateAfter = time.Hour // the second Ensure below must not revalidate, however slow the machine
	seed := NewSeed(cfg)
	defer seed.Close()

	meta, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "task-a", URL: url, Digest: content.Digest("sha256")})
	if err != nil {
		t.Fatal(err)
	}
	if meta.Length != content.Size || meta.BlockSize != 1<<20 || meta.ETag == "" {
		t.Fatalf("meta %+v", meta)
	}
	waitSeed(t, seed, "task-a")
	if err := seed.Err("task-a"); err != nil {
		t.Fatal(err)
	}
	got := ev.blockOrder()
	slices.Sort(got)
	if !slices.Equal(got, seq(0, 6)) {
		t.Fatalf("OnBlock saw %v, want every block once", got)
	}
	for b := range 6 {
		want := make([]byte, meta.BlockLen(b))
		if _, err := content.ReadAt(want, int64(b)<<20); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		sum := sha256.Sum256(want)
		d, ok := store.BlockDigest("task-a", b)
		if !ok || string(d) != string(sum[:]) {
			t.Fatalf("block %d digest %x, want %x", b, d, sum)
		}
	}
	tk, _ := store.Task("task-a")
	if tk.State != blockstore.StateComplete || !tk.Verified {
		t.Fatalf("task %+v: want complete and verified against the declared digest", tk)
	}
	if seed.BytesFromOrigin() != content.Size {
		t.Fatalf("bytes from origin %d, want %d (one copy)", seed.BytesFromOrigin(), content.Size)
	}
	state, stored, total := seed.TaskState("task-a")
	if state != SeedComplete || stored != 6 || total != 6 {
		t.Fatalf("TaskState = %s %d/%d", state, stored, total)
	}
	// A second request is served from the running/complete seed, not the origin.
	before := o.Requests()
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "task-a", URL: url}); err != nil {
		t.Fatal(err)
	}
	if o.Requests() != before {
		t.Fatal("second Ensure went to the origin")
	}
}

func TestSeedPrioritizesWantedBlocks(t *testing.T) {
	o := startOrigin(t)
	url := o.Add("f.bin", origin.Content{Size: 8 << 20, Seed: 1})
	store := openStore(t, t.TempDir())
	defer store.Close()
	ev := &seedEvents{gate: make(chan struct{})}
	cfg := ev.config(store)
	cfg.Concurrency = 1
	seed := NewSeed(cfg)
	defer seed.Close()
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "t", URL: url}); err != nil {
		t.Fatal(err)
	}
	// The single worker is held inside OnBlock of block 0.
	deadline := time.Now().Add(10 * time.Second)
	for len(ev.blockOrder()) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	pending := seed.Prioritize("t", []int{6, 4, 0, 99})
	if !slices.Equal(pending, []int{6, 4}) {
		t.Fatalf("pending = %v, want [6 4] (0 is stored, 99 out of range)", pending)
	}
	close(ev.gate)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seed.WaitBlocks(ctx, "t", []int{4})
	if !store.HasBlock("t", 4) {
		t.Fatal("WaitBlocks returned before block 4 was stored")
	}
	waitSeed(t, seed, "t")
	if got := ev.blockOrder(); !slices.Equal(got, []int{0, 6, 4, 1, 2, 3, 5, 7}) {
		t.Fatalf("fetch order %v, want wanted blocks first: [0 6 4 1 2 3 5 7]", got)
	}
}

func TestSeedRevalidation(t *testing.T) {
	o := startOrigin(t)
	url := o.Add("f.bin", origin.Content{Size: 2 << 20, Seed: 1})
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	run := func(req SeedRequest) (*seedEvents, *Seed, blockstore.Task, error) {
		ev := &seedEvents{}
		seed := NewSeed(ev.config(store))
		t.Cleanup(seed.Close)
		meta, err := seed.Ensure(context.Background(), req)
		if err == nil {
			waitSeed(t, seed, req.TaskID)
			err = seed.Err(req.TaskID)
		}
		return ev, seed, meta, err
	}
	req := SeedRequest{TaskID: "t", URL: url}
	if _, _, _, err := run(req); err != nil {
		t.Fatal(err)
	}

	// A new seed (as after a restart) revalidates: 304 keeps the copy.
	o.ResetCounters()
	ev, seed, meta, err := run(req)
	if err != nil {
		t.Fatal(err)
	}
	if o.BytesSent() != 0 || seed.BytesFromOrigin() != 0 || o.Requests() != 1 {
		t.Fatalf("revalidation hit: origin sent %d bytes in %d requests, want 0 bytes in 1 HEAD", o.BytesSent(), o.Requests())
	}
	if state, stored, _ := seed.TaskState("t"); len(ev.have) != 2 || meta.Length != 2<<20 || state != SeedComplete || stored != 2 {
		t.Fatalf("cached task: have %v, meta %+v, state %s, stored %d", ev.have, meta, state, stored)
	}

	// The origin's content changed (new ETag): 200 → refetch, old copies reset.
	o.Add("f.bin", origin.Content{Size: 3 << 20, Seed: 2})
	ev, seed, meta, err = run(req)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Length != 3<<20 || ev.resets != 1 || seed.BytesFromOrigin() != 3<<20 || len(ev.blockOrder()) != 3 {
		t.Fatalf("refetch: meta %+v, resets %d, from origin %d, blocks %v", meta, ev.resets, seed.BytesFromOrigin(), ev.blockOrder())
	}

	// Revalidation failing is a seed error, not a silent hit.
	o.SetDown(true)
	_, _, _, err = run(req)
	o.SetDown(false)
	if err == nil || !errors.Is(err, source.ErrUnreachable) || !strings.Contains(err.Error(), "revalidate") {
		t.Fatalf("revalidation against a dead origin: err %v", err)
	}

	// A verified content-addressed task needs no revalidation.
	o.ResetCounters()
	c := origin.Content{Size: 1 << 20, Seed: 3}
	url2 := o.Add("blob", c)
	dreq := SeedRequest{TaskID: "sha256-x", URL: url2, Digest: c.Digest("sha256")}
	if _, _, _, err := run(dreq); err != nil {
		t.Fatal(err)
	}
	o.ResetCounters()
	if _, _, _, err := run(dreq); err != nil {
		t.Fatal(err)
	}
	if o.Requests() != 0 {
		t.Fatalf("verified digest task: %d origin requests, want 0", o.Requests())
	}
}

func TestSeedFailures(t *testing.T) {
	o := startOrigin(t)
	c := origin.Content{Size: 2<<20 + 1, Seed: 4}
	url := o.Add("f.bin", c)
	tests := []struct {
		name    string
		req     SeedRequest
		prepare func()
		is      error
		msg     string
	}{
		{name: "not found", req: SeedRequest{TaskID: "a", URL: o.URL + "/missing"}, msg: "HTTP 404"},
		{name: "unreachable", req: SeedRequest{TaskID: "b", URL: url}, prepare: func() { o.SetDown(true) }, is: source.ErrUnreachable},
		{name: "declared digest mismatch", req: SeedRequest{TaskID: "c", URL: url, Digest: "sha256:" + strings.Repeat("0", 64)}, is: blockstore.ErrDigestMismatch},
		{name: "corrupting origin vs declared digest", req: SeedRequest{TaskID: "d", URL: url, Digest: c.Digest("sha256")}, prepare: func() { o.CorruptFrom(1 << 20) }, is: blockstore.ErrDigestMismatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer o.SetDown(false)
			defer o.CorruptFrom(-1)
			if tc.prepare != nil {
				tc.prepare()
			}
			store := openStore(t, t.TempDir())
			defer store.Close()
			ev := &seedEvents{}
			seed := NewSeed(ev.config(store))
			defer seed.Close()
			_, err := seed.Ensure(context.Background(), tc.req)
			if err == nil {
				waitSeed(t, seed, tc.req.TaskID)
				err = seed.Err(tc.req.TaskID)
			}
			if err == nil || (tc.is != nil && !errors.Is(err, tc.is)) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v / %q", err, tc.is, tc.msg)
			}
			if st, _, _ := seed.TaskState(tc.req.TaskID); st != SeedFailed {
				t.Fatalf("state %s, want failed", st)
			}
		})
	}
}

func TestSeedRangeIgnoredAndHeaders(t *testing.T) {
	o := startOrigin(t)
	c := origin.Content{Size: 3<<20 + 7, Seed: 5}
	o.Add("f.bin", c)
	var mu sync.Mutex
	var auth []string
	// A front that records the Authorization header and forwards to the origin.
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		o.ServeHTTP(w, r)
	}))
	defer front.Close()
	o.IgnoreRange(true)
	store := openStore(t, t.TempDir())
	defer store.Close()
	ev := &seedEvents{}
	seed := NewSeed(ev.config(store))
	defer seed.Close()
	h := http.Header{"Authorization": {"Bearer xyz"}}
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "t", URL: front.URL + "/f.bin", Header: h, Digest: c.Digest("sha256")}); err != nil {
		t.Fatal(err)
	}
	waitSeed(t, seed, "t")
	if err := seed.Err("t"); err != nil {
		t.Fatal(err)
	}
	tk, _ := store.Task("t")
	if tk.State != blockstore.StateComplete || !tk.Verified {
		t.Fatalf("task %+v not complete and verified after stream fallback", tk)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(auth) < 2 {
		t.Fatalf("origin saw %d requests", len(auth))
	}
	for i, a := range auth {
		if a != "Bearer xyz" {
			t.Fatalf("request %d carried Authorization %q, want the forwarded header", i, a)
		}
	}
}

func TestSeedResumeRetriesAfterFailure(t *testing.T) {
	o := startOrigin(t)
	c := origin.Content{Size: 2 << 20, Seed: 6}
	url := o.Add("f.bin", c)
	store := openStore(t, t.TempDir())
	defer store.Close()
	ev := &seedEvents{}
	cfg := ev.config(store)
	cfg.RetryAfter = 50 * time.Millisecond
	seed := NewSeed(cfg)
	defer seed.Close()

	seed.Resume("nothing", "") // unknown task, no URL: nothing to do
	if seed.Known("nothing") {
		t.Fatal("Resume without a URL started a task")
	}
	o.SetDown(true)
	h := http.Header{"Authorization": {"Bearer t"}}
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "t", URL: url, Header: h}); err == nil {
		t.Fatal("seed of a dead origin succeeded")
	}
	o.SetDown(false)
	seed.Resume("t", "") // too early: still failed
	if st, _, _ := seed.TaskState("t"); st != SeedFailed {
		t.Fatalf("state %s right after the failure, want failed (RetryAfter not reached)", st)
	}
	time.Sleep(60 * time.Millisecond)
	seed.Resume("t", "")
	waitSeed(t, seed, "t")
	if st, stored, _ := seed.TaskState("t"); st != SeedComplete || stored != 2 {
		t.Fatalf("after resume: state %s, stored %d", st, stored)
	}
	// The credentials of the failed request were dropped when its run
	// ended: the retry went without them (this origin needs none).
	if got := seed.lookup("t").request().Header; got != nil {
		t.Fatalf("the credentials outlived the failed run: %v", got)
	}
	if tk, _ := store.Task("t"); tk.Private {
		t.Fatal("fetched without credentials, yet marked private")
	}
}
