package supernode

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
)

const secret = "Bearer MARKER-SECRET"

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// capturingSeed returns a seed config whose seed and origin client log
// everything (debug included) into the returned buffer.
func capturingSeed(store *blockstore.Store, ev *seedEvents) (SeedConfig, *syncBuffer) {
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := ev.config(store)
	cfg.Logger = log
	cfg.Source = source.New(source.Options{Retries: 1, Backoff: 10 * time.Millisecond, Timeout: 5 * time.Second, Logger: log})
	return cfg, logs
}

// grepDir reports the files under dir that contain s.
func grepDir(t *testing.T, dir, s string) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(s)) {
			hits = append(hits, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// TestSeedPrivateTask: a task fetched with an Authorization header is
// marked Private in the seed's store (and stays so after a reopen); the
// header is in no file of the store, in no log line (failures included),
// and not in memory once the run ended.
func TestSeedPrivateTask(t *testing.T) {
	content := randomContent(3<<20+11, 7)
	o := newSeedOrigin(t, content, `"p1"`)
	o.set(func(o *seedOrigin) { o.auth = secret })
	dir := t.TempDir()
	store := openStore(t, dir)
	ev := &seedEvents{}
	cfg, logs := capturingSeed(store, ev)
	seed := NewSeed(cfg)
	h := http.Header{"Authorization": {secret}, "Accept": {"*/*"}}
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "p", URL: o.url(), Header: h}); err != nil {
		t.Fatal(err)
	}
	waitSeed(t, seed, "p")
	if err := seed.Err("p"); err != nil {
		t.Fatal(err)
	}
	checkBlocks(t, store, "p", content)
	if tk, _ := store.Task("p"); !tk.Private || tk.State != blockstore.StateComplete {
		t.Fatalf("task %+v: want complete and private", tk)
	}
	if got := seed.lookup("p").request().Header; got != nil {
		t.Fatalf("the credentials outlived the run: header %v", got)
	}

	// Failures (refused credentials, a missing file, a broken origin) log
	// errors; none carries the header.
	o.set(func(o *seedOrigin) { o.auth = "Bearer other" })
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "q", URL: o.url(), Header: h}); err == nil {
		t.Fatal("a refused credential did not fail the seed")
	}
	o.set(func(o *seedOrigin) { o.auth, o.status = "", http.StatusServiceUnavailable })
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "r", URL: o.srv.URL + "/gone", Header: h}); err == nil {
		t.Fatal("a failing origin did not fail the seed")
	}
	for _, x := range seed.State() {
		if strings.Contains(x.Error+x.URL, "MARKER-SECRET") {
			t.Fatalf("the debug state shows the credentials: %+v", x)
		}
	}
	seed.Close()
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	if hits := grepDir(t, dir, "MARKER-SECRET"); len(hits) > 0 {
		t.Fatalf("the credentials were written to the seed's store: %v", hits)
	}
	if l := logs.String(); strings.Contains(l, "MARKER-SECRET") || !strings.Contains(l, "seed failed") {
		t.Fatalf("logs carry the credentials (or no failure was logged):\n%s", l)
	}
	store = openStore(t, dir)
	defer store.Close()
	if tk, err := store.Task("p"); err != nil || !tk.Private {
		t.Fatalf("after reopening the store: task %+v (%v), want private", tk, err)
	}
}

// TestSeedPrivateTaskAfterRestart: after a supernode restart the seed has
// no credentials. A private partial copy is not fetched without them (a
// 401 would fail the task for the whole swarm): the seed serves what it
// holds, and a registration with credentials fetches the rest.
func TestSeedPrivateTaskAfterRestart(t *testing.T) {
	content := randomContent(6<<20, 8)
	o := newSeedOrigin(t, content, `"p"`)
	o.set(func(o *seedOrigin) { o.auth = secret })
	store := openStore(t, t.TempDir())
	defer store.Close()
	storePartial(t, store, blockstore.Task{ID: "p", Source: o.url(), ETag: `"p"`, Private: true}, content, []int{0, 1, 2})
	ev := &seedEvents{}
	seed := NewSeed(ev.config(store))
	defer seed.Close()

	seed.Resume("p", o.url()) // Sync, for a task a peer announced
	waitSeed(t, seed, "p")
	if st, stored, total := seed.TaskState("p"); st != SeedWaiting || stored != 3 || total != 6 || seed.Err("p") != nil {
		t.Fatalf("private partial copy without credentials: state %s %d/%d, err %v; want waiting 3/6, no error", st, stored, total, seed.Err("p"))
	}
	if len(ev.metas) != 1 || len(ev.have) != 3 {
		t.Fatalf("OnMeta: %d calls, have %v; want the 3 held blocks announced", len(ev.metas), ev.have)
	}
	if p := seed.Prioritize("p", []int{4}); p != nil {
		t.Fatalf("Prioritize = %v for a task the seed cannot fetch, want none", p)
	}
	if reqs, _, _ := o.counts(); reqs != 0 {
		t.Fatalf("%d origin requests without credentials, want none", reqs)
	}
	// A registration without credentials does not start it either.
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "p", URL: o.url()}); err != nil {
		t.Fatal(err)
	}
	if reqs, _, _ := o.counts(); reqs != 0 {
		t.Fatalf("%d origin requests for a registration without credentials, want none", reqs)
	}

	meta, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "p", URL: o.url(), Header: http.Header{"Authorization": {secret}}})
	if err != nil || meta.Length != int64(len(content)) {
		t.Fatalf("registration with credentials: meta %+v, err %v", meta, err)
	}
	waitSeed(t, seed, "p")
	if err := seed.Err("p"); err != nil {
		t.Fatal(err)
	}
	checkBlocks(t, store, "p", content)
	if _, _, n := o.counts(); n != 3<<20 || seed.BytesFromOrigin() != 3<<20 {
		t.Fatalf("fetched %d bytes (origin sent %d), want the 3 missing blocks", seed.BytesFromOrigin(), n)
	}
}

// TestSeedPrivateTaskRefusedRegistrant: a registration whose credentials the
// origin refuses does not fail a private task for everyone else: the stored
// copy stays (complete, or partial and served), and only that registrant is
// refused (by the service, through CheckAccess).
func TestSeedPrivateTaskRefusedRegistrant(t *testing.T) {
	content := randomContent(4<<20, 11)
	o := newSeedOrigin(t, content, `"r"`)
	o.set(func(o *seedOrigin) { o.auth = secret })
	store := openStore(t, t.TempDir())
	defer store.Close()
	storePartial(t, store, blockstore.Task{ID: "partial", Source: o.url(), ETag: `"r"`, Private: true}, content, []int{0, 1})
	ev := &seedEvents{}
	cfg := ev.config(store)
	cfg.RevalidateAfter = time.Nanosecond
	seed := NewSeed(cfg)
	defer seed.Close()
	good := http.Header{"Authorization": {secret}}
	bad := http.Header{"Authorization": {"Bearer guess"}}
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "full", URL: o.url(), Header: good}); err != nil {
		t.Fatal(err)
	}
	waitSeed(t, seed, "full")
	for _, tc := range []struct {
		id, state string
		stored    int
	}{{"full", SeedComplete, 4}, {"partial", SeedWaiting, 2}} {
		meta, err := seed.Ensure(context.Background(), SeedRequest{TaskID: tc.id, URL: o.url(), Header: bad})
		waitSeed(t, seed, tc.id)
		if err != nil || meta.Length != int64(len(content)) || seed.Err(tc.id) != nil {
			t.Fatalf("%s: refused credentials: meta %+v, err %v, seed err %v; want the stored copy kept", tc.id, meta, err, seed.Err(tc.id))
		}
		if st, stored, _ := seed.TaskState(tc.id); st != tc.state || stored != tc.stored {
			t.Fatalf("%s: state %s with %d blocks, want %s with %d", tc.id, st, stored, tc.state, tc.stored)
		}
		if err := seed.CheckAccess(context.Background(), o.url(), bad, meta); err == nil {
			t.Fatalf("%s: CheckAccess accepted refused credentials", tc.id)
		}
	}
}

// TestSeedRetriesAtOnceWithCredentials: a task that failed because the
// origin wanted credentials is retried at once (not after RetryAfter) by a
// registration that brings some.
func TestSeedRetriesAtOnceWithCredentials(t *testing.T) {
	o := newSeedOrigin(t, randomContent(1<<20, 9), `"c"`)
	o.set(func(o *seedOrigin) { o.auth = secret })
	store := openStore(t, t.TempDir())
	defer store.Close()
	ev := &seedEvents{}
	cfg := ev.config(store)
	cfg.RetryAfter = time.Hour
	seed := NewSeed(cfg)
	defer seed.Close()
	var he *source.HTTPError
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "c", URL: o.url()}); !errors.As(err, &he) || he.Status != http.StatusUnauthorized {
		t.Fatalf("without credentials: err %v, want HTTP 401", err)
	}
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "c", URL: o.url()}); err == nil {
		t.Fatal("a second request without credentials retried before RetryAfter")
	}
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: "c", URL: o.url(), Header: http.Header{"Authorization": {secret}}}); err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	waitSeed(t, seed, "c")
	if tk, err := store.Task("c"); err != nil || !tk.Private || tk.State != blockstore.StateComplete {
		t.Fatalf("task %+v (%v): want complete and private", tk, err)
	}
}

// TestSeedCheckAccess: CheckAccess accepts a caller only when the origin
// accepts the caller's own headers for the content the seed holds.
func TestSeedCheckAccess(t *testing.T) {
	content := randomContent(1<<20+7, 10)
	lm := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	meta := blockstore.Task{ID: "p", Length: int64(len(content)), ETag: `"v1"`, Private: true}
	good := http.Header{"Authorization": {secret}}
	tests := []struct {
		name   string
		origin func(o *seedOrigin)
		h      http.Header
		meta   blockstore.Task
		status int   // the origin's status wrapped in the error
		is     error // or this error
		down   bool  // the origin is gone
	}{
		{name: "accepted, 304", h: good},
		{name: "accepted, conditions ignored, same ETag", origin: func(o *seedOrigin) { o.ignoreConditional = true }, h: good},
		{name: "accepted, HEAD refused: ranged GET", origin: func(o *seedOrigin) { o.headRefused = true }, h: good},
		{name: "accepted, Last-Modified only", origin: func(o *seedOrigin) { o.etag, o.lastModified = "", lm },
			meta: blockstore.Task{ID: "p", Length: int64(len(content)), LastModified: lm.Format(http.TimeFormat)}, h: good},
		{name: "accepted, no validators, same length", origin: func(o *seedOrigin) { o.etag = "" },
			meta: blockstore.Task{ID: "p", Length: int64(len(content))}, h: good},
		{name: "no credentials", status: http.StatusUnauthorized},
		{name: "other credentials", h: http.Header{"Authorization": {"Bearer guess"}}, status: http.StatusForbidden},
		{name: "credentials in another header", h: http.Header{"Cookie": {"MARKER-SECRET"}}, status: http.StatusUnauthorized},
		{name: "content gone", origin: func(o *seedOrigin) { o.status = http.StatusNotFound }, h: good, status: http.StatusNotFound},
		{name: "origin failing", origin: func(o *seedOrigin) { o.status = http.StatusBadGateway }, h: good, status: http.StatusBadGateway},
		{name: "content changed: other ETag", origin: func(o *seedOrigin) { o.etag = `"v2"` }, h: good, is: ErrContentChanged},
		{name: "content changed: same ETag, other length", origin: func(o *seedOrigin) { o.content, o.ignoreConditional = content[1:], true }, h: good, is: ErrContentChanged},
		{name: "content changed: validators gone", origin: func(o *seedOrigin) { o.etag = "" }, h: good, is: ErrContentChanged},
		{name: "no validators, other length", origin: func(o *seedOrigin) { o.etag, o.content = "", content[1:] },
			meta: blockstore.Task{ID: "p", Length: int64(len(content))}, h: good, is: ErrContentChanged},
		{name: "unreachable", down: true, h: good, is: source.ErrUnreachable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := newSeedOrigin(t, content, `"v1"`)
			o.set(func(o *seedOrigin) { o.auth = secret })
			if tc.origin != nil {
				o.set(tc.origin)
			}
			if tc.down {
				o.srv.Close()
			}
			m := meta
			if tc.meta.ID != "" {
				m = tc.meta
			}
			store := openStore(t, t.TempDir())
			defer store.Close()
			seed := NewSeed((&seedEvents{}).config(store))
			defer seed.Close()
			err := seed.CheckAccess(context.Background(), o.url(), tc.h, m)
			var he *source.HTTPError
			switch {
			case tc.status == 0 && tc.is == nil:
				if err != nil {
					t.Fatalf("CheckAccess = %v, want access", err)
				}
			case tc.status != 0:
				if !errors.As(err, &he) || he.Status != tc.status {
					t.Fatalf("CheckAccess = %v, want the origin's HTTP %d", err, tc.status)
				}
			case !errors.Is(err, tc.is):
				t.Fatalf("CheckAccess = %v, want %v", err, tc.is)
			}
			if err != nil && strings.Contains(err.Error(), "MARKER-SECRET") {
				t.Fatalf("the error shows the credentials: %v", err)
			}
		})
	}
}

// TestSeedPrivateOnlyWhenFetchedWithCredentials: revalidating a complete
// public copy with credentials leaves it public; fetching blocks of a
// partial copy with credentials makes it private.
func TestSeedPrivateOnlyWhenFetchedWithCredentials(t *testing.T) {
	content := randomContent(2<<20, 12)
	o := newSeedOrigin(t, content, `"pub"`)
	store := openStore(t, t.TempDir())
	defer store.Close()
	storePartial(t, store, blockstore.Task{ID: "partial", Source: o.url(), ETag: `"pub"`}, content, []int{0})
	ev := &seedEvents{}
	cfg := ev.config(store)
	cfg.RevalidateAfter = time.Nanosecond
	seed := NewSeed(cfg)
	defer seed.Close()
	creds := http.Header{"Authorization": {secret}}
	for _, req := range []SeedRequest{{TaskID: "full", URL: o.url()}, {TaskID: "full", URL: o.url(), Header: creds}, {TaskID: "partial", URL: o.url(), Header: creds}} {
		if _, err := seed.Ensure(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		waitSeed(t, seed, req.TaskID)
	}
	if _, heads, _ := o.counts(); heads != 3 {
		t.Fatalf("%d HEADs, want 3 (stat, revalidation, revalidation)", heads)
	}
	if tk, _ := store.Task("full"); tk.Private {
		t.Fatal("a public copy revalidated with credentials became private")
	}
	if tk, _ := store.Task("partial"); !tk.Private || tk.State != blockstore.StateComplete {
		t.Fatalf("partial copy completed with credentials: %+v, want private", tk)
	}
}
