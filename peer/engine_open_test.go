package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
)

// mutableOrigin is a real HTTP origin (httptest) serving one file whose
// content and validators a test changes. It can require a bearer token,
// delay its answers to HEAD, and records every request.
type mutableOrigin struct {
	srv *httptest.Server
	url string

	mu        sync.Mutex
	content   []byte
	etag      string
	token     string // "" = no authorization needed
	headDelay time.Duration
	seen      []seenRequest
	gets      atomic.Int64 // GETs answered 2xx (content sent)
}

type seenRequest struct {
	Method, Authorization, IfNoneMatch string
	Status                             int
}

func newMutableOrigin(t *testing.T, content []byte, etag string) *mutableOrigin {
	t.Helper()
	m := &mutableOrigin{content: content, etag: etag}
	m.srv = httptest.NewServer(m)
	t.Cleanup(m.srv.Close)
	m.url = m.srv.URL + "/file.bin"
	return m
}

func (m *mutableOrigin) set(content []byte, etag string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.content, m.etag = content, etag
}

func (m *mutableOrigin) requireToken(tok string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.token = tok
}

func (m *mutableOrigin) setHeadDelay(d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.headDelay = d
}

// requests returns (and forgets) the requests seen so far.
func (m *mutableOrigin) requests() []seenRequest {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.seen
	m.seen = nil
	return s
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (m *mutableOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	content, etag, token, delay := m.content, m.etag, m.token, m.headDelay
	m.mu.Unlock()
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	defer func() {
		m.mu.Lock()
		m.seen = append(m.seen, seenRequest{Method: r.Method, Authorization: r.Header.Get("Authorization"),
			IfNoneMatch: r.Header.Get("If-None-Match"), Status: rec.status})
		m.mu.Unlock()
		if r.Method == http.MethodGet && rec.status < 300 {
			m.gets.Add(1)
		}
	}()
	if r.Method == http.MethodHead && delay > 0 {
		time.Sleep(delay)
	}
	if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
		http.Error(rec, "who are you?", http.StatusUnauthorized)
		return
	}
	rec.Header().Set("ETag", etag)
	http.ServeContent(rec, r, "file.bin", time.Time{}, bytes.NewReader(content))
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

func newTestStore(t *testing.T) *blockstore.Store {
	t.Helper()
	s, err := blockstore.Open(t.TempDir(), blockstore.Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newTestEngine(t *testing.T, s *blockstore.Store) *Engine {
	t.Helper()
	eng, err := New(Config{Store: s, Logger: quietLogger(),
		Source:            source.New(source.Options{Timeout: 2 * time.Second, Backoff: time.Millisecond, Retries: 1}),
		RevalidateTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

// download downloads req to a file and returns the file's bytes.
func download(t *testing.T, eng *Engine, req Request) ([]byte, Result, error) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := eng.Download(ctx, req, DownloadOptions{Output: f})
	if err != nil {
		return nil, res, err
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b, res, nil
}

// TestOpenRevalidatesStoredContent: a stored task whose ID derives from its
// URL is checked with the origin on every Open (issue #20: the same URL
// after the origin changed its content and ETag gave the old content).
func TestOpenRevalidatesStoredContent(t *testing.T) {
	a, b, c := pattern(3<<20+5, 1), pattern(3<<20+5, 2), pattern(2<<20+9, 3)
	o := newMutableOrigin(t, a, `"a"`)
	st := newTestStore(t)
	eng := newTestEngine(t, st)
	got, _, err := download(t, eng, Request{URL: o.url})
	if err != nil || !bytes.Equal(got, a) {
		t.Fatalf("first download: %v (right content: %v)", err, bytes.Equal(got, a))
	}

	// Unchanged: one conditional HEAD, answered 304; the stored blocks are used.
	o.requests()
	gets := o.gets.Load()
	got, _, err = download(t, eng, Request{URL: o.url})
	if err != nil || !bytes.Equal(got, a) || o.gets.Load() != gets {
		t.Fatalf("unchanged origin: %v, %d content GETs", err, o.gets.Load()-gets)
	}
	if rs := o.requests(); len(rs) != 1 || rs[0].Method != http.MethodHead || rs[0].IfNoneMatch != `"a"` || rs[0].Status != http.StatusNotModified {
		t.Fatalf("unchanged origin: requests %+v, want one conditional HEAD answered 304", rs)
	}

	// Same length, new content and ETag: fetched again.
	o.set(b, `"b"`)
	got, res, err := download(t, eng, Request{URL: o.url})
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("changed content, same length: %v, got the new content: %v (the old: %v)", err, bytes.Equal(got, b), bytes.Equal(got, a))
	}
	if res.Stats.BytesOrigin != int64(len(b)) || res.Stats.BytesLocal != 0 {
		t.Fatalf("changed content: %+v, want all %d bytes from the origin", res.Stats, len(b))
	}
	// Another length.
	o.set(c, `"c"`)
	if got, _, err = download(t, eng, Request{URL: o.url}); err != nil || !bytes.Equal(got, c) {
		t.Fatalf("changed length: %v, got the new content: %v", err, bytes.Equal(got, c))
	}

	// A fresh engine over the same store (a restarted dfget or daemon) revalidates too.
	o.set(a, `"a2"`)
	if got, _, err = download(t, newTestEngine(t, st), Request{URL: o.url}); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("fresh engine, changed origin: %v, got the new content: %v", err, bytes.Equal(got, a))
	}

	// Origin unreachable: the stored (public) content is used.
	o.srv.Close()
	if got, _, err = download(t, eng, Request{URL: o.url}); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("unreachable origin: %v, got the stored content: %v", err, bytes.Equal(got, a))
	}
}

// TestOpenStoredContentOriginRefuses: a stored public task whose origin now
// answers 404 is not served: the Open fails with the origin's error.
func TestOpenStoredContentOriginRefuses(t *testing.T) {
	a := pattern(1<<20+1, 4)
	o := newMutableOrigin(t, a, `"a"`)
	eng := newTestEngine(t, newTestStore(t))
	if _, _, err := download(t, eng, Request{URL: o.url}); err != nil {
		t.Fatal(err)
	}
	o.srv.Config.Handler = http.NotFoundHandler()
	var he *source.HTTPError
	if _, err := eng.Open(ctx, Request{URL: o.url}); !errors.As(err, &he) || he.Status != http.StatusNotFound {
		t.Fatalf("Open after the origin dropped the content: %v, want its 404", err)
	}
}

// TestOpenPinnedOrDigestTaskNoRevalidation: content named by a digest it was
// verified against is used without asking the origin.
func TestOpenPinnedOrDigestTaskNoRevalidation(t *testing.T) {
	e := newEnv(t, 2<<20+7)
	eng := e.engine(t, Config{})
	digest := e.c.Digest("sha256")
	if _, err := eng.Download(ctx, Request{URL: e.url, Digest: digest}, DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	e.origin.ResetCounters()
	if _, err := eng.Open(ctx, Request{URL: e.url, Digest: digest}); err != nil || e.origin.Requests() != 0 {
		t.Fatalf("pinned Open: %v, %d origin requests, want none", err, e.origin.Requests())
	}
	id, _ := blockstore.TaskIDForDigest(digest)
	if _, err := eng.Download(ctx, Request{URL: e.url, Digest: digest, TaskID: id}, DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	e.origin.ResetCounters()
	if _, err := eng.Open(ctx, Request{URL: e.url, Digest: digest, TaskID: id}); err != nil || e.origin.Requests() != 0 {
		t.Fatalf("Open of a digest-named task: %v, %d origin requests, want none", err, e.origin.Requests())
	}
}

// TestConcurrentOpensShareOneRevalidation: concurrent Opens of a stored
// task make one conditional request between them.
func TestConcurrentOpensShareOneRevalidation(t *testing.T) {
	a := pattern(1<<20+3, 5)
	o := newMutableOrigin(t, a, `"a"`)
	eng := newTestEngine(t, newTestStore(t))
	if _, _, err := download(t, eng, Request{URL: o.url}); err != nil {
		t.Fatal(err)
	}
	o.requests()
	o.setHeadDelay(time.Second)
	var wg sync.WaitGroup
	tasks := make([]*Task, 20)
	errs := make([]error, 20)
	for i := range tasks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tasks[i], errs[i] = eng.Open(ctx, Request{URL: o.url})
		}()
	}
	wg.Wait()
	for i := range tasks {
		if errs[i] != nil || tasks[i] != tasks[0] {
			t.Fatalf("Open %d: %v (same handle: %v)", i, errs[i], tasks[i] == tasks[0])
		}
	}
	if rs := o.requests(); len(rs) != 1 {
		t.Fatalf("20 concurrent Opens made %d origin requests, want 1: %+v", len(rs), rs)
	}
}

// TestOpenSingleFlight: concurrent first Opens of a task wait for the one
// creating it and share its result (one Stat at the origin, the task in the
// store when any of them returns) or its error; a failed creation does not
// stick.
func TestOpenSingleFlight(t *testing.T) {
	a := pattern(4<<20+1, 6)
	o := newMutableOrigin(t, a, `"a"`)
	o.setHeadDelay(time.Second)
	st := newTestStore(t)
	eng := newTestEngine(t, st)
	o.requireToken("sesame") // first: every Open fails with the origin's 401
	run := func() ([]*Task, []error) {
		var wg sync.WaitGroup
		ts := make([]*Task, 30)
		errs := make([]error, 30)
		for i := range ts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ts[i], errs[i] = eng.Open(ctx, Request{URL: o.url})
				if errs[i] == nil {
					if _, err := st.Task(ts[i].ID()); err != nil {
						errs[i] = fmt.Errorf("Open returned a task the store does not have: %w", err)
					}
				}
			}()
		}
		wg.Wait()
		return ts, errs
	}
	_, errs := run()
	for i, err := range errs {
		if !source.IsClientError(err) {
			t.Fatalf("Open %d against a refusing origin: %v, want its 401", i, err)
		}
	}
	if rs := o.requests(); len(rs) != 1 {
		t.Fatalf("30 concurrent failing Opens made %d origin requests, want 1", len(rs))
	}
	o.requireToken("")
	ts, errs := run()
	for i := range ts {
		if errs[i] != nil || ts[i] != ts[0] {
			t.Fatalf("Open %d: %v (same handle: %v)", i, errs[i], ts[i] == ts[0])
		}
	}
	if rs := o.requests(); len(rs) != 1 {
		t.Fatalf("30 concurrent first Opens made %d origin requests, want 1", len(rs))
	}
	// A cancelled caller does not fail the others.
	o.requests()
	st2 := newTestStore(t)
	eng2 := newTestEngine(t, st2)
	cctx, cancel := context.WithCancel(ctx)
	first := make(chan error, 1)
	go func() {
		_, err := eng2.Open(cctx, Request{URL: o.url})
		first <- err
	}()
	time.Sleep(50 * time.Millisecond) // the first Open is waiting for the origin
	second := make(chan error, 1)
	go func() {
		_, err := eng2.Open(ctx, Request{URL: o.url})
		second <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Open: %v", err)
	}
	if err := <-second; err != nil {
		t.Fatalf("an Open sharing the work of a cancelled one: %v", err)
	}
}

// TestPrivateContentNeedsTheCallersCredentials: content fetched with
// credentials is handed to a caller only after the origin accepted that
// caller's own headers — on every Open, including the one that finds the
// task open already.
func TestPrivateContentNeedsTheCallersCredentials(t *testing.T) {
	a := pattern(2<<20+11, 7)
	o := newMutableOrigin(t, a, `"a"`)
	o.requireToken("sesame")
	st := newTestStore(t)
	eng := newTestEngine(t, st)
	good := http.Header{"Authorization": {"Bearer sesame"}}
	got, _, err := download(t, eng, Request{URL: o.url, Header: good})
	if err != nil || !bytes.Equal(got, a) {
		t.Fatalf("download with credentials: %v", err)
	}
	id, _ := blockstore.TaskIDForURL(o.url, "", "")
	if meta, _ := st.Task(id); !meta.Private {
		t.Fatalf("task fetched with credentials is not private: %+v", meta)
	}
	for _, tc := range []struct {
		name string
		h    http.Header
	}{
		{"no credentials", nil},
		{"wrong credentials", http.Header{"Authorization": {"Bearer guess"}}},
	} {
		o.requests()
		_, err := eng.Open(ctx, Request{URL: o.url, Header: tc.h})
		var he *source.HTTPError
		if !errors.As(err, &he) || he.Status != http.StatusUnauthorized {
			t.Fatalf("%s: Open of private content: %v, want the origin's 401", tc.name, err)
		}
		rs := o.requests()
		if len(rs) == 0 || rs[0].Authorization != tc.h.Get("Authorization") || rs[0].Status != http.StatusUnauthorized {
			t.Fatalf("%s: the origin saw %+v, want the caller's own check", tc.name, rs)
		}
		if o.gets.Load() != 3 { // the first download's blocks only
			t.Fatalf("%s: %d content GETs", tc.name, o.gets.Load())
		}
	}
	// The right credentials again, from a fresh engine (a restarted daemon).
	if got, _, err := download(t, newTestEngine(t, st), Request{URL: o.url, Header: good}); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("download with credentials again: %v", err)
	}
	// Unreachable origin: private content is not handed out.
	o.srv.Close()
	if _, err := eng.Open(ctx, Request{URL: o.url, Header: good}); !errors.Is(err, source.ErrUnreachable) {
		t.Fatalf("private content, origin down: %v, want ErrUnreachable", err)
	}
}

// TestPublicTaskFetchedWithCredentialsBecomesPrivate: a stored public task
// opened again with credentials is private from then on.
func TestPublicTaskFetchedWithCredentialsBecomesPrivate(t *testing.T) {
	a := pattern(1<<20+5, 8)
	o := newMutableOrigin(t, a, `"a"`)
	st := newTestStore(t)
	eng := newTestEngine(t, st)
	if _, _, err := download(t, eng, Request{URL: o.url}); err != nil {
		t.Fatal(err)
	}
	task, err := eng.Open(ctx, Request{URL: o.url, Header: http.Header{"Authorization": {"Bearer sesame"}}})
	if err != nil {
		t.Fatal(err)
	}
	if !task.Info().Private {
		t.Fatal("a task opened with credentials is not private")
	}
	o.requireToken("sesame")
	if _, err := eng.Open(ctx, Request{URL: o.url}); !source.IsClientError(err) {
		t.Fatalf("Open without credentials of a task now private: %v, want the origin's 401", err)
	}
}

// TestRequestIDBoundToContent: a request may name its task only by the ID
// derived from its own digest or URL.
func TestRequestIDBoundToContent(t *testing.T) {
	u := "https://example.com/a/file.bin?x=1"
	digest := "sha256:" + string(bytes.Repeat([]byte("ab"), 32))
	other := "sha256:" + string(bytes.Repeat([]byte("cd"), 32))
	urlID, _ := blockstore.TaskIDForURL(u, "", "")
	taggedID, _ := blockstore.TaskIDForURL(u, "v2", "")
	digestID, _ := blockstore.TaskIDForDigest(digest)
	otherID, _ := blockstore.TaskIDForDigest(other)
	otherURLID, _ := blockstore.TaskIDForURL("https://example.com/b", "", "")
	for _, tc := range []struct {
		name string
		req  Request
		want string // "" = rejected with ErrInvalid
	}{
		{"URL only", Request{URL: u}, urlID},
		{"URL and tag", Request{URL: u, Tag: "v2"}, taggedID},
		{"the URL's own ID", Request{URL: u, TaskID: urlID}, urlID},
		{"the digest's own ID", Request{URL: u, Digest: digest, TaskID: digestID}, digestID},
		{"digest ID without URL", Request{Digest: digest, TaskID: digestID}, digestID},
		{"URL ID with a digest", Request{URL: u, Digest: digest, TaskID: urlID}, urlID},
		{"arbitrary ID", Request{URL: u, TaskID: "u0123456789abcdef"}, ""},
		{"another URL's ID", Request{URL: u, TaskID: otherURLID}, ""},
		{"another digest's ID", Request{URL: u, Digest: digest, TaskID: otherID}, ""},
		{"digest ID without the digest", Request{URL: u, TaskID: digestID}, ""},
		{"ID of the URL without its tag", Request{URL: u, Tag: "v2", TaskID: urlID}, ""},
		{"ID alone", Request{TaskID: urlID}, ""},
		{"nothing", Request{}, ""},
		{"bad digest", Request{Digest: "sha256:zz", TaskID: "sha256-zz"}, ""},
	} {
		got, err := tc.req.ID()
		if tc.want == "" {
			if !errors.Is(err, blockstore.ErrInvalid) {
				t.Errorf("%s: ID() = %q, %v; want ErrInvalid", tc.name, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: ID() = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	// Open refuses such a request before asking anyone anything.
	e := newEnv(t, 1<<20)
	eng := e.engine(t, Config{})
	e.origin.ResetCounters()
	if _, err := eng.Open(ctx, Request{URL: e.url, TaskID: otherURLID}); !errors.Is(err, blockstore.ErrInvalid) || e.origin.Requests() != 0 {
		t.Fatalf("Open with another content's task ID: %v, %d origin requests", err, e.origin.Requests())
	}
}
