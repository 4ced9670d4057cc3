package supernode

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
)

// seedOrigin is a test origin whose content, validators and manners can be
// changed between requests, and which counts what it served.
type seedOrigin struct {
	srv *httptest.Server

	mu sync.Mutex
	// content and its validators (empty: not sent).
	content      []byte
	etag         string
	lastModified time.Time
	// auth, when set, is the Authorization value required: none gives 401,
	// another gives 403.
	auth string
	// status, when set, answers every request with it.
	status int
	// headRefused answers HEAD with 405; ignoreConditional ignores
	// If-None-Match and If-Modified-Since; ignoreRange answers a Range
	// request with the whole body.
	headRefused, ignoreConditional, ignoreRange bool

	requests, heads int
	bytes           int64
}

func newSeedOrigin(t *testing.T, content []byte, etag string) *seedOrigin {
	t.Helper()
	o := &seedOrigin{content: content, etag: etag}
	o.srv = httptest.NewServer(o)
	t.Cleanup(o.srv.Close)
	return o
}

func (o *seedOrigin) url() string { return o.srv.URL + "/f.bin" }

// set changes the origin under its lock.
func (o *seedOrigin) set(fn func(o *seedOrigin)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	fn(o)
}

// counts returns (requests, HEADs, body bytes) and zeroes them.
func (o *seedOrigin) counts() (requests, heads int, n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	requests, heads, n = o.requests, o.heads, o.bytes
	o.requests, o.heads, o.bytes = 0, 0, 0
	return requests, heads, n
}

func (o *seedOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	o.requests++
	if r.Method == http.MethodHead {
		o.heads++
	}
	content, etag, lm, auth, status := o.content, o.etag, o.lastModified, o.auth, o.status
	headRefused, ignoreCond, ignoreRange := o.headRefused, o.ignoreConditional, o.ignoreRange
	o.mu.Unlock()
	switch got := r.Header.Get("Authorization"); {
	case status != 0:
		http.Error(w, http.StatusText(status), status)
		return
	case auth != "" && got == "":
		http.Error(w, "credentials required", http.StatusUnauthorized)
		return
	case auth != "" && got != auth:
		http.Error(w, "not for you", http.StatusForbidden)
		return
	case headRefused && r.Method == http.MethodHead:
		http.Error(w, "HEAD not allowed", http.StatusMethodNotAllowed)
		return
	}
	if ignoreCond {
		r.Header.Del("If-None-Match")
		r.Header.Del("If-Modified-Since")
	}
	if ignoreRange {
		r.Header.Del("Range")
	}
	if etag != "" {
		w.Header().Set("ETag", etag)
	}
	http.ServeContent(&seedOriginWriter{ResponseWriter: w, o: o}, r, "", lm, bytes.NewReader(content))
}

type seedOriginWriter struct {
	http.ResponseWriter
	o *seedOrigin
}

func (w *seedOriginWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.o.mu.Lock()
	w.o.bytes += int64(n)
	w.o.mu.Unlock()
	return n, err
}

// randomContent returns n deterministic pseudo-random bytes.
func randomContent(n int, seed uint64) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	b := make([]byte, n)
	_, _ = r.Read(b)
	return b
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// storePartial puts a pending task with the given blocks of content into
// store, as a seed that died mid-fetch leaves it.
func storePartial(t *testing.T, store *blockstore.Store, meta blockstore.Task, content []byte, blocks []int) blockstore.Task {
	t.Helper()
	meta.Length = int64(len(content))
	tk, err := store.CreateTask(context.Background(), meta)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		off := int64(b) * tk.BlockSize
		if err := store.PutBlock(context.Background(), tk.ID, b, content[off:off+tk.BlockLen(b)]); err != nil {
			t.Fatal(err)
		}
	}
	return tk
}

// checkBlocks asserts that every block of the task is stored, has the
// digest of content's block, and reads back as content's block.
func checkBlocks(t *testing.T, store *blockstore.Store, id string, content []byte) {
	t.Helper()
	tk, err := store.Task(id)
	if err != nil {
		t.Fatal(err)
	}
	if tk.Length != int64(len(content)) {
		t.Fatalf("task %s: length %d, want %d", id, tk.Length, len(content))
	}
	for b := range tk.NumBlocks() {
		off := int64(b) * tk.BlockSize
		want := content[off : off+tk.BlockLen(b)]
		sum := sha256.Sum256(want)
		if d, ok := store.BlockDigest(id, b); !ok || !bytes.Equal(d, sum[:]) {
			t.Fatalf("block %d: digest %x, want the new content's %x", b, d, sum)
		}
		got, err := store.ReadBlock(id, b)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("block %d: read %d bytes (%v), not the content's", b, len(got), err)
		}
	}
}
