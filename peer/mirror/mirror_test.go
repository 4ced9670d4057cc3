package mirror

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/peer"
)

// fakeRegistry is go-containerregistry's in-process registry behind a
// counting (and optionally authenticating or lying) front.
type fakeRegistry struct {
	srv       *httptest.Server
	host      string
	blobBytes atomic.Int64 // blob GET body bytes sent
	blobGets  atomic.Int64
	user      string // basic auth required when set
	pass      string
	corrupt   atomic.Bool // flip a byte of every blob body
	down      atomic.Bool
}

func startRegistry(t *testing.T, user, pass string) *fakeRegistry {
	t.Helper()
	fr := &fakeRegistry{user: user, pass: pass}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	fr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fr.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if fr.user != "" && r.Method != http.MethodPut && r.Method != http.MethodPost && r.Method != http.MethodPatch {
			if u, p, ok := r.BasicAuth(); !ok || u != fr.user || p != fr.pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
		}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			fr.blobGets.Add(1)
			w = &countingWriter{ResponseWriter: w, n: &fr.blobBytes, corrupt: fr.corrupt.Load()}
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(fr.srv.Close)
	fr.host = strings.TrimPrefix(fr.srv.URL, "http://")
	return fr
}

type countingWriter struct {
	http.ResponseWriter
	n       *atomic.Int64
	corrupt bool
	flipped bool
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.corrupt && !c.flipped && len(p) > 0 {
		p = bytes.Clone(p)
		p[0] ^= 0xff
		c.flipped = true
	}
	c.n.Add(int64(len(p)))
	return c.ResponseWriter.Write(p)
}

// push writes a random image of layers×size bytes and returns it.
func (fr *fakeRegistry) push(t *testing.T, repo string, size int64, layers int) v1.Image {
	t.Helper()
	img, err := random.Image(size, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(fr.host + "/" + repo + ":v1")
	if err != nil {
		t.Fatal(err)
	}
	user, pass := fr.user, fr.pass
	fr.user = "" // pushes are not authenticated by the fake
	defer func() { fr.user, fr.pass = user, pass }()
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return img
}

type fixture struct {
	reg    *fakeRegistry
	mirror *Mirror
	srv    *httptest.Server
	engine *peer.Engine
	logs   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newFixture(t *testing.T, reg *fakeRegistry) *fixture {
	t.Helper()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{Logger: log, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	eng, err := peer.New(peer.Config{Store: st, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Engine: eng, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m)
	t.Cleanup(func() { srv.Close(); m.Close() })
	return &fixture{reg: reg, mirror: m, srv: srv, engine: eng, logs: logs}
}

// get sends a request to the mirror as containerd does (?ns=registry).
func (f *fixture) get(t *testing.T, method, path string, hdr http.Header) (*http.Response, []byte, error) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path+"?ns="+f.reg.host, nil)
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func layerOf(t *testing.T, img v1.Image, i int) (v1.Hash, []byte) {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := ls[i].Digest()
	rc, err := ls[i].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return d, b
}

func TestBlobThroughMirror(t *testing.T) {
	reg := startRegistry(t, "", "")
	img := reg.push(t, "app", 5<<20+123, 2)
	f := newFixture(t, reg)
	d, want := layerOf(t, img, 0)
	path := "/v2/app/blobs/" + d.String()

	// Manifests pass through.
	resp, body, err := f.get(t, http.MethodGet, "/v2/app/manifests/v1", http.Header{"Accept": {"application/vnd.docker.distribution.manifest.v2+json"}})
	if err != nil || resp.StatusCode != 200 || !bytes.Contains(body, []byte(d.String())) {
		t.Fatalf("manifest: HTTP %d %v %.200s", resp.StatusCode, err, body)
	}
	resp, body, err = f.get(t, http.MethodGet, path, nil)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, want) || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("blob: HTTP %d, %d bytes (want %d), err %v", resp.StatusCode, len(body), len(want), err)
	}
	got := reg.blobBytes.Load()
	// Once more, with a range, and a HEAD: from the store, nothing from the registry.
	resp, body, _ = f.get(t, http.MethodGet, path, http.Header{"Range": {"bytes=1000-2999"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, want[1000:3000]) ||
		resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 1000-2999/%d", len(want)) {
		t.Fatalf("range: HTTP %d %q", resp.StatusCode, resp.Header.Get("Content-Range"))
	}
	resp, body, _ = f.get(t, http.MethodGet, path, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("second GET: HTTP %d", resp.StatusCode)
	}
	resp, _, _ = f.get(t, http.MethodHead, path, nil)
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(want)) {
		t.Fatalf("HEAD: HTTP %d length %d", resp.StatusCode, resp.ContentLength)
	}
	if reg.blobBytes.Load() != got || got != int64(len(want)) {
		t.Fatalf("registry sent %d then %d blob bytes; want one copy (%d) in all", got, reg.blobBytes.Load(), len(want))
	}
	st := f.mirror.Stats()
	if st.BlobsP2P != 3 || st.HeadsLocal != 1 || st.BlobFallbacks != 0 {
		t.Fatalf("stats %+v", st)
	}
	id, _ := blockstore.TaskIDForDigest(d.String())
	if task, err := f.engine.Store().Task(id); err != nil || task.State != blockstore.StateComplete || !task.Verified {
		t.Fatalf("store task %+v, %v: want complete and verified", task, err)
	}
	// The same layer from another repository is the same task: served from
	// the store, no registry bytes.
	if resp, body, _ := f.get(t, http.MethodGet, "/v2/other/app/blobs/"+d.String(), nil); resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("another repository's GET of the same digest: HTTP %d", resp.StatusCode)
	}
	if reg.blobBytes.Load() != got {
		t.Fatal("the same layer under another repository was fetched from the registry again")
	}
}

func TestMirrorAuthPassesThrough(t *testing.T) {
	reg := startRegistry(t, "alice", "s3cret-MARKER")
	img := reg.push(t, "private/app", 3<<20, 1)
	f := newFixture(t, reg)
	d, want := layerOf(t, img, 0)
	path := "/v2/private/app/blobs/" + d.String()

	// No credentials: the registry's challenge reaches the client unchanged.
	for _, p := range []string{"/v2/", "/v2/private/app/manifests/v1", path} {
		resp, _, _ := f.get(t, http.MethodGet, p, nil)
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Basic realm="test"` {
			t.Fatalf("%s without credentials: HTTP %d %q, want the registry's 401 challenge", p, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	auth := http.Header{"Authorization": {"Basic " + basic("alice", "s3cret-MARKER")}}
	resp, body, err := f.get(t, http.MethodGet, path, auth)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("blob with credentials: HTTP %d, %v", resp.StatusCode, err)
	}
	// Held now, but private: without (or with wrong) credentials the client
	// gets the registry's answer, never the stored bytes.
	for _, h := range []http.Header{nil, {"Authorization": {"Basic " + basic("alice", "wrong")}}} {
		resp, body, _ := f.get(t, http.MethodGet, path, h)
		if resp.StatusCode != http.StatusUnauthorized || bytes.Contains(body, want[:64]) {
			t.Fatalf("held private blob with credentials %v: HTTP %d, want 401 from the registry", h, resp.StatusCode)
		}
		resp, _, _ = f.get(t, http.MethodHead, path, h)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("HEAD of a held private blob with credentials %v: HTTP %d, want 401", h, resp.StatusCode)
		}
	}
	t.Log(f.logs.String())
	if strings.Contains(f.logs.String(), "s3cret-MARKER") || strings.Contains(f.logs.String(), basic("alice", "s3cret-MARKER")) {
		t.Fatal("a credential appears in the logs")
	}
}

func basic(u, p string) string {
	return strings.TrimPrefix(func() string {
		r, _ := http.NewRequest(http.MethodGet, "http://x", nil)
		r.SetBasicAuth(u, p)
		return r.Header.Get("Authorization")
	}(), "Basic ")
}

// TestMirrorNeverHandsOutAWrongBlob: a registry (or seed) serving wrong
// bytes gets the answer cut short, never a complete wrong blob with 200.
func TestMirrorNeverHandsOutAWrongBlob(t *testing.T) {
	reg := startRegistry(t, "", "")
	img := reg.push(t, "app", 6<<20, 1)
	f := newFixture(t, reg)
	d, want := layerOf(t, img, 0)
	reg.corrupt.Store(true)
	resp, body, err := f.get(t, http.MethodGet, "/v2/app/blobs/"+d.String(), nil)
	sum := sha256.Sum256(body)
	if err == nil && resp.StatusCode == 200 && len(body) == len(want) {
		t.Fatalf("a wrong blob was answered whole with 200 (sha256 %s)", hex.EncodeToString(sum[:]))
	}
}

// TestMirrorFailsSafe: when dfly cannot serve a blob, the registry does;
// when the registry is unreachable the client gets a 502 and moves on.
func TestMirrorFailsSafe(t *testing.T) {
	reg := startRegistry(t, "", "")
	img := reg.push(t, "app", 1<<20, 1)
	f := newFixture(t, reg)
	d, _ := layerOf(t, img, 0)
	reg.down.Store(true)
	resp, _, _ := f.get(t, http.MethodGet, "/v2/app/blobs/"+d.String(), nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("registry failing: HTTP %d, want the registry's own 503", resp.StatusCode)
	}
	reg.srv.Close()
	resp, _, _ = f.get(t, http.MethodGet, "/v2/app/manifests/v1", nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("registry gone: HTTP %d, want 502", resp.StatusCode)
	}
	if st := f.mirror.Stats(); st.BlobFallbacks != 1 || st.UpstreamFail < 1 {
		t.Fatalf("stats %+v", st)
	}
	// Pushes are refused with a clear answer.
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPut, f.srv.URL+"/v2/app/manifests/v2", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("PUT: %v %v", resp, err)
	}
}

func TestParseRange(t *testing.T) {
	const n = 1000
	for _, tc := range []struct {
		h              string
		start, end     int64
		partial, isErr bool
	}{
		{"", 0, n, false, false},
		{"bytes=0-99", 0, 100, true, false},
		{"bytes=900-", 900, n, true, false},
		{"bytes=900-5000", 900, n, true, false},
		{"bytes=-100", 900, n, true, false},
		{"bytes=-5000", 0, n, true, false},
		{"bytes=0-0,5-9", 0, n, false, false},
		{"bytes=1000-", 0, 0, false, true},
		{"bytes=5-4", 0, 0, false, true},
		{"bytes=-0", 0, 0, false, true},
		{"items=0-1", 0, 0, false, true},
		{"bytes=x-1", 0, 0, false, true},
		{"bytes=1", 0, 0, false, true},
	} {
		s, e, p, err := parseRange(tc.h, n)
		if (err != nil) != tc.isErr || (!tc.isErr && (s != tc.start || e != tc.end || p != tc.partial)) {
			t.Errorf("parseRange(%q) = %d, %d, %v, %v; want %d, %d, %v, err=%v", tc.h, s, e, p, err, tc.start, tc.end, tc.partial, tc.isErr)
		}
	}
}

// FuzzParseRange: Range headers come from the network.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-1", "bytes=-5", "bytes=3-", "bytes=9-1", "bytes=,", ""} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, h string, n int64) {
		if n <= 0 {
			return
		}
		s, e, _, err := parseRange(h, n)
		if err == nil && (s < 0 || e > n || s >= e) {
			t.Fatalf("parseRange(%q, %d) = [%d, %d): outside the content", h, n, s, e)
		}
	})
}

func TestResolveRegistry(t *testing.T) {
	for _, tc := range []struct {
		host     string
		insecure []string
		base     string
		isErr    bool
	}{
		{"docker.io", nil, "https://registry-1.docker.io", false},
		{"ghcr.io", nil, "https://ghcr.io", false},
		{"reg.internal:5000", []string{"reg.internal:5000"}, "http://reg.internal:5000", false},
		{"reg.internal:5000", nil, "https://reg.internal:5000", false},
		{"127.0.0.1:5000", nil, "http://127.0.0.1:5000", false},
		{"localhost:5000", nil, "http://localhost:5000", false},
		{"[::1]:5000", nil, "http://[::1]:5000", false},
		{"evil.com/x", nil, "", true},
		{"a@b", nil, "", true},
	} {
		u, err := resolveRegistry(tc.host, tc.insecure)
		if (err != nil) != tc.isErr || u.base != tc.base {
			t.Errorf("resolveRegistry(%q) = %+v, %v; want %s", tc.host, u, err, tc.base)
		}
	}
}

func TestValidRegistryHost(t *testing.T) {
	for _, tc := range []struct {
		host string
		ok   bool
	}{
		{"docker.io", true}, {"reg.test:5000", true}, {"127.0.0.1:5000", true}, {"[::1]:5000", true}, {"[::1]", true}, {"localhost", true},
		{"", false}, {":", false}, {":5000", false}, {"reg:", false}, {"reg:0", false}, {"reg:70000", false}, {"reg:+5", false},
		{"::1", false}, {"[nope]:5000", false}, {"a/b", false}, {"a b", false}, {"a@b", false}, {"a%2fb", false},
	} {
		if got := validRegistryHost(tc.host); got != tc.ok {
			t.Errorf("validRegistryHost(%q) = %v, want %v", tc.host, got, tc.ok)
		}
	}
}
