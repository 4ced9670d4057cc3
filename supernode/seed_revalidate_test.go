package supernode

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
)

// TestSeedRevalidatesChangedOrigin: the origin's content and ETag change
// between two registrations of the same task with the same seed. The second
// registration revalidates the complete copy, gets 200 with a new ETag,
// retires the old blocks and digests (OnReset), and returns the new
// metadata; the blocks stored afterwards are the new content's. A 304 in
// between costs one HEAD and no bytes; any other status fails the task
// with that status in the error.
func TestSeedRevalidatesChangedOrigin(t *testing.T) {
	const size = 3<<20 + 5
	v1, v2, v3 := randomContent(size, 1), randomContent(size, 2), randomContent(2<<20, 3)
	o := newSeedOrigin(t, v1, `"v1"`)
	store := openStore(t, t.TempDir())
	defer store.Close()
	ev := &seedEvents{}
	cfg := ev.config(store)
	cfg.RevalidateAfter = time.Nanosecond // every registration revalidates
	cfg.RetryAfter = time.Nanosecond
	seed := NewSeed(cfg)
	defer seed.Close()
	req := SeedRequest{TaskID: "t", URL: o.url()}
	register := func() (blockstore.Task, error) {
		t.Helper()
		meta, err := seed.Ensure(context.Background(), req)
		if err == nil {
			waitSeed(t, seed, req.TaskID)
			err = seed.Err(req.TaskID)
		}
		return meta, err
	}

	meta, err := register()
	if err != nil {
		t.Fatal(err)
	}
	if meta.ETag != `"v1"` {
		t.Fatalf("first registration: meta %+v", meta)
	}
	checkBlocks(t, store, "t", v1)
	oldDigest, _ := store.BlockDigest("t", 0)

	// Unchanged: one conditional HEAD answered 304, nothing fetched.
	o.counts()
	if meta, err = register(); err != nil || meta.ETag != `"v1"` {
		t.Fatalf("unchanged origin: meta %+v, err %v", meta, err)
	}
	if reqs, heads, n := o.counts(); reqs != 1 || heads != 1 || n != 0 {
		t.Fatalf("revalidating an unchanged copy took %d requests (%d HEADs) and %d bytes, want one HEAD", reqs, heads, n)
	}

	// Same length, new content and ETag.
	o.set(func(o *seedOrigin) { o.content, o.etag = v2, `"v2"` })
	before := seed.BytesFromOrigin()
	meta, err = register()
	if err != nil {
		t.Fatal(err)
	}
	if meta.ETag != `"v2"` || meta.Length != size {
		t.Fatalf("second registration after the change: meta %+v, want the new content's (ETag \"v2\")", meta)
	}
	if ev.resets != 1 {
		t.Fatalf("OnReset called %d times, want once", ev.resets)
	}
	if d, ok := store.BlockDigest("t", 0); ok && bytes.Equal(d, oldDigest) {
		t.Fatal("the old content's digest of block 0 survived the change")
	}
	checkBlocks(t, store, "t", v2)
	if got := seed.BytesFromOrigin() - before; got != size {
		t.Fatalf("fetched %d bytes of the new content, want %d", got, size)
	}
	if tk, _ := store.Task("t"); tk.ETag != `"v2"` || tk.State != blockstore.StateComplete {
		t.Fatalf("stored task %+v, want the new content complete", tk)
	}
	// The scheduler learns the new content's shape (and the seed's empty
	// holding of it) before any block of it.
	ev.mu.Lock()
	last := ev.metas[len(ev.metas)-1]
	ev.mu.Unlock()
	if last.ETag != `"v2"` {
		t.Fatalf("OnMeta last saw %+v, want the new content", last)
	}

	// Another length (another shape).
	o.set(func(o *seedOrigin) { o.content, o.etag = v3, `"v3"` })
	if meta, err = register(); err != nil || meta.Length != int64(len(v3)) || meta.ETag != `"v3"` {
		t.Fatalf("after a change of length: meta %+v, err %v", meta, err)
	}
	checkBlocks(t, store, "t", v3)

	// Anything but 304 or 200 fails the task with the status, and keeps the copy.
	for _, status := range []int{http.StatusNotFound, http.StatusUnauthorized, http.StatusInternalServerError} {
		o.set(func(o *seedOrigin) { o.status = status })
		_, err := register()
		var he *source.HTTPError
		if !errors.As(err, &he) || he.Status != status || !strings.Contains(err.Error(), "revalidate") {
			t.Fatalf("revalidation answered %d: err %v, want the status in a revalidation error", status, err)
		}
		if st, _, _ := seed.TaskState("t"); st != SeedFailed {
			t.Fatalf("revalidation answered %d: state %s, want failed", status, st)
		}
		if _, err := store.Task("t"); err != nil {
			t.Fatalf("revalidation answered %d: the stored copy was dropped: %v", status, err)
		}
	}
	o.set(func(o *seedOrigin) { o.status = 0 })
	if meta, err = register(); err != nil || meta.ETag != `"v3"` {
		t.Fatalf("origin back: meta %+v, err %v", meta, err)
	}
}

// TestSeedRevalidateAfter: registrations within RevalidateAfter of the last
// confirmation do not ask the origin again; Sync's Resume never does.
func TestSeedRevalidateAfter(t *testing.T) {
	o := newSeedOrigin(t, randomContent(1<<20, 4), `"a"`)
	store := openStore(t, t.TempDir())
	defer store.Close()
	ev := &seedEvents{}
	cfg := ev.config(store)
	cfg.RevalidateAfter = time.Hour
	seed := NewSeed(cfg)
	defer seed.Close()
	req := SeedRequest{TaskID: "t", URL: o.url()}
	if _, err := seed.Ensure(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	waitSeed(t, seed, "t")
	o.counts()
	for range 3 {
		if _, err := seed.Ensure(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		seed.Resume("t", o.url())
	}
	if reqs, _, _ := o.counts(); reqs != 0 {
		t.Fatalf("%d origin requests within RevalidateAfter, want none", reqs)
	}
}

// TestSeedResumesAfterRestart: a seed that died mid-fetch left a partial
// copy in its store; the next seed (a supernode restart) resumes it,
// fetching only the missing blocks — unless the origin cannot tell that the
// content is the same and no digest would catch a mix of two versions.
// Content-addressed tasks are never revalidated.
func TestSeedResumesAfterRestart(t *testing.T) {
	const size = 8 << 20 // 8 blocks of 1 MiB
	content := randomContent(size, 5)
	digest := sha256Digest(content)
	addressed, _ := blockstore.TaskIDForDigest(digest)
	lm := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name   string
		id     string
		meta   blockstore.Task // validators and digest recorded by the first seed
		origin func(o *seedOrigin)
		stored []int // blocks the first seed stored (default 0-4)
		// want: bytes fetched from the origin (the missing blocks, or all 8).
		want      int64
		wantHeads int
		// rangeIgnored: the origin's aborted answers to Range requests make
		// its byte count meaningless; only what the seed read is checked.
		rangeIgnored bool
	}{
		{name: "ETag, 304", id: "u1", meta: blockstore.Task{ETag: `"e"`},
			origin: func(o *seedOrigin) { o.etag = `"e"` }, want: 3 << 20, wantHeads: 1},
		{name: "ETag, conditions ignored", id: "u2", meta: blockstore.Task{ETag: `"e"`},
			origin: func(o *seedOrigin) { o.etag, o.ignoreConditional = `"e"`, true }, want: 3 << 20, wantHeads: 1},
		{name: "Last-Modified only, conditions ignored", id: "u3", meta: blockstore.Task{LastModified: lm.Format(http.TimeFormat)},
			origin: func(o *seedOrigin) { o.lastModified, o.ignoreConditional = lm, true }, want: 3 << 20, wantHeads: 1},
		{name: "no validators, declared digest", id: "u4", meta: blockstore.Task{Digest: digest},
			origin: func(*seedOrigin) {}, want: 3 << 20, wantHeads: 1},
		{name: "no validators, no digest: fetched again", id: "u5",
			origin: func(*seedOrigin) {}, want: size, wantHeads: 1},
		{name: "ETag, 304, origin ignores Range: a whole re-sync", id: "u6", meta: blockstore.Task{ETag: `"e"`},
			origin: func(o *seedOrigin) { o.etag, o.ignoreRange = `"e"`, true }, want: size, wantHeads: 1, rangeIgnored: true},
		{name: "content-addressed, no validators", id: addressed, meta: blockstore.Task{Digest: digest},
			origin: func(*seedOrigin) {}, want: 3 << 20},
		{name: "content-addressed, ignores Range: the stream stops after the last missing block", id: addressed, meta: blockstore.Task{Digest: digest},
			origin: func(o *seedOrigin) { o.ignoreRange = true }, stored: []int{3, 4, 5, 6, 7}, want: 3 << 20, rangeIgnored: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := newSeedOrigin(t, content, "")
			o.set(tc.origin)
			store := openStore(t, t.TempDir())
			defer store.Close()
			meta := tc.meta
			meta.ID, meta.Source = tc.id, o.url()
			stored := tc.stored
			if stored == nil {
				stored = []int{0, 1, 2, 3, 4}
			}
			storePartial(t, store, meta, content, stored)
			ev := &seedEvents{}
			seed := NewSeed(ev.config(store))
			defer seed.Close()
			seed.Resume(tc.id, o.url()) // as Sync does for a task peers announced after the restart
			waitSeed(t, seed, tc.id)
			if err := seed.Err(tc.id); err != nil {
				t.Fatal(err)
			}
			checkBlocks(t, store, tc.id, content)
			_, heads, n := o.counts()
			if tc.rangeIgnored {
				n = tc.want
			}
			if seed.BytesFromOrigin() != tc.want || n != tc.want || heads != tc.wantHeads {
				t.Fatalf("the resumed seed fetched %d bytes (origin sent %d, %d HEADs), want %d bytes and %d HEADs",
					seed.BytesFromOrigin(), n, heads, tc.want, tc.wantHeads)
			}
		})
	}
}

// TestSeedContentAddressedDigest: a content-addressed task takes its digest
// from its id; a request declaring another digest is refused.
func TestSeedContentAddressedDigest(t *testing.T) {
	content := randomContent(1<<20+3, 6)
	o := newSeedOrigin(t, content, "")
	id, _ := blockstore.TaskIDForDigest(sha256Digest(content))
	store := openStore(t, t.TempDir())
	defer store.Close()
	ev := &seedEvents{}
	seed := NewSeed(ev.config(store))
	defer seed.Close()
	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: id, URL: o.url()}); err != nil {
		t.Fatal(err)
	}
	waitSeed(t, seed, id)
	if tk, err := store.Task(id); err != nil || !tk.Verified || tk.Digest != sha256Digest(content) {
		t.Fatalf("task %+v (%v): want it verified against the digest its id names", tk, err)
	}
	other, _ := blockstore.TaskIDForDigest(sha256Digest(content[1:]))
	_, err := seed.Ensure(context.Background(), SeedRequest{TaskID: other, URL: o.url(), Digest: sha256Digest(content)})
	if !errors.Is(err, blockstore.ErrInvalid) {
		t.Fatalf("a digest other than the id's: err %v, want ErrInvalid", err)
	}
}

func TestCompareContent(t *testing.T) {
	task := func(etag, lm string) blockstore.Task {
		return blockstore.Task{Length: 10, ETag: etag, LastModified: lm}
	}
	info := func(length int64, etag, lm string) source.Info {
		return source.Info{Length: length, ETag: etag, LastModified: lm}
	}
	tests := []struct {
		name string
		t    blockstore.Task
		i    source.Info
		want contentMatch
	}{
		{"same ETag", task(`"a"`, ""), info(10, `"a"`, ""), contentSame},
		{"same ETag, unknown length", task(`"a"`, ""), info(-1, `"a"`, ""), contentSame},
		{"other ETag", task(`"a"`, ""), info(10, `"b"`, ""), contentChanged},
		{"ETag gone", task(`"a"`, ""), info(10, "", ""), contentChanged},
		{"ETag appeared", task("", ""), info(10, `"a"`, ""), contentChanged},
		{"same ETag, other length", task(`"a"`, ""), info(11, `"a"`, ""), contentChanged},
		{"ETag decides over Last-Modified", task(`"a"`, "x"), info(10, `"a"`, "y"), contentSame},
		{"same Last-Modified", task("", "x"), info(10, "", "x"), contentSame},
		{"other Last-Modified", task("", "x"), info(10, "", "y"), contentChanged},
		{"no validators", task("", ""), info(10, "", ""), contentUnknown},
		{"no validators, unknown length", task("", ""), info(-1, "", ""), contentChanged},
		{"no validators, other length", task("", ""), info(9, "", ""), contentChanged},
	}
	for _, tc := range tests {
		if got := compareContent(tc.t, tc.i); got != tc.want {
			t.Errorf("%s: compareContent = %d, want %d", tc.name, got, tc.want)
		}
	}
}
