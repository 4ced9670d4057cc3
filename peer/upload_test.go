package peer

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func TestParseBlockPath(t *testing.T) {
	tests := []struct {
		path string
		task string
		idx  int
		ok   bool
	}{
		{"/blocks/abc/0", "abc", 0, true},
		{"/blocks/u123/42", "u123", 42, true},
		{"/blocks/abc/-1", "", 0, false},
		{"/blocks/abc/x", "", 0, false},
		{"/blocks/abc", "", 0, false},
		{"/blocks//1", "", 0, false},
		{"/blocks/a/1/2", "", 0, false},
		{"/other/a/1", "", 0, false},
	}
	for _, tc := range tests {
		task, idx, ok := parseBlockPath(tc.path)
		if ok != tc.ok || task != tc.task || idx != tc.idx {
			t.Errorf("parseBlockPath(%q) = %q, %d, %v; want %q, %d, %v", tc.path, task, idx, ok, tc.task, tc.idx, tc.ok)
		}
	}
}

// keyTokens signs and checks task tokens as a supernode and a swarm would.
type keyTokens struct{ key ed25519.PrivateKey }

func newKeyTokens() keyTokens {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	return keyTokens{k}
}

func (k keyTokens) token(task string, ttl time.Duration) string {
	return api.SignToken(k.key, api.TokenClaims{Task: task, Host: "requester", Expires: time.Now().Add(ttl)})
}

func (k keyTokens) CheckToken(task, token string) error {
	_, err := api.VerifyToken([]ed25519.PublicKey{k.key.Public().(ed25519.PublicKey)}, token, task, time.Now())
	return err
}

// uploadFixture is a store with one task of 3 blocks of 1 MiB where blocks 0 and 2 are present.
func uploadFixture(t *testing.T) (*blockstore.Store, [][]byte) {
	t.Helper()
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	if _, err := st.CreateTask(ctx, blockstore.Task{ID: "task", Length: 3 << 20, BlockSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	blocks := make([][]byte, 3)
	for i := range blocks {
		blocks[i] = bytes.Repeat([]byte{byte('a' + i)}, 1<<20)
		blocks[i][7] = byte(i)
	}
	for _, i := range []int{0, 2} {
		if err := st.PutBlock(ctx, "task", i, blocks[i]); err != nil {
			t.Fatal(err)
		}
	}
	return st, blocks
}

func get(t *testing.T, url, token, rng string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set(api.TokenHeader, token)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestUploadServer(t *testing.T) {
	st, blocks := uploadFixture(t)
	key := newKeyTokens()
	u := NewUploadServer(UploadConfig{Store: st, Tokens: key, Logger: quietLogger()})
	srv := httptest.NewServer(u)
	defer srv.Close()
	tok := key.token("task", time.Hour)

	resp, body := get(t, srv.URL+"/blocks/task/2", tok, "")
	sum := sha256.Sum256(blocks[2])
	if resp.StatusCode != 200 || !bytes.Equal(body, blocks[2]) || resp.Header.Get(api.DigestHeader) != hex.EncodeToString(sum[:]) {
		t.Fatalf("block 2: HTTP %d, %d bytes, digest %q", resp.StatusCode, len(body), resp.Header.Get(api.DigestHeader))
	}
	resp, body = get(t, srv.URL+"/blocks/task/0", tok, "bytes=5-9")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, blocks[0][5:10]) {
		t.Fatalf("range of block 0: HTTP %d, %q", resp.StatusCode, body)
	}
	for _, tc := range []struct {
		name, path, token string
		want              int
	}{
		{"missing block", "/blocks/task/1", tok, 404},
		{"unknown task", "/blocks/other/0", key.token("other", time.Hour), 404},
		{"no token", "/blocks/task/0", "", 403},
		{"token of another task", "/blocks/task/0", key.token("other", time.Hour), 403},
		{"expired token", "/blocks/task/0", key.token("task", -time.Second), 403},
		{"token of another supernode", "/blocks/task/0", newKeyTokens().token("task", time.Hour), 403},
		{"bad path", "/nope", tok, 404},
	} {
		if resp, _ := get(t, srv.URL+tc.path, tc.token, ""); resp.StatusCode != tc.want {
			t.Errorf("%s: HTTP %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
	s := u.Stats()
	if s.BytesServed != 1<<20+5 || s.Blocks != 2 || s.Forbidden != 4 || s.NotFound != 2 || s.InFlight != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestUploadServerWithoutSwarm: a host that is in no swarm has issued no
// tokens, so it serves nothing (before, a nil checker accepted anyone).
func TestUploadServerWithoutSwarm(t *testing.T) {
	st, _ := uploadFixture(t)
	srv := httptest.NewServer(NewUploadServer(UploadConfig{Store: st, Logger: quietLogger()}))
	defer srv.Close()
	resp, body := get(t, srv.URL+"/blocks/task/0", newKeyTokens().token("task", time.Hour), "")
	if resp.StatusCode != http.StatusForbidden || !bytes.Contains(body, []byte("not in a swarm")) {
		t.Fatalf("HTTP %d %q, want 403 saying the host is in no swarm", resp.StatusCode, body)
	}
}

func TestUploadServerRefusesCorruptStoredBlock(t *testing.T) {
	st, _ := uploadFixture(t)
	// The digest the seed announces contradicts the stored block: the store
	// drops it, and the upload server must not serve it.
	bad := sha256.Sum256([]byte("something else"))
	if err := st.SetBlockDigest("task", 0, bad[:]); err != nil {
		t.Fatal(err)
	}
	key := newKeyTokens()
	srv := httptest.NewServer(NewUploadServer(UploadConfig{Store: st, Tokens: key, Logger: quietLogger()}))
	defer srv.Close()
	if resp, _ := get(t, srv.URL+"/blocks/task/0", key.token("task", time.Hour), ""); resp.StatusCode != 404 {
		t.Fatalf("HTTP %d for a block that no longer verifies, want 404", resp.StatusCode)
	}
}

func TestUploadServerCorruptHook(t *testing.T) {
	st, blocks := uploadFixture(t)
	key := newKeyTokens()
	srv := httptest.NewServer(NewUploadServer(UploadConfig{Store: st, Tokens: key, CorruptUploads: true, Logger: quietLogger()}))
	defer srv.Close()
	resp, body := get(t, srv.URL+"/blocks/task/0", key.token("task", time.Hour), "")
	if resp.StatusCode != 200 || len(body) != len(blocks[0]) || bytes.Equal(body, blocks[0]) {
		t.Fatalf("corrupt hook: HTTP %d, %d bytes, equal=%v; want the right length with wrong bytes", resp.StatusCode, len(body), bytes.Equal(body, blocks[0]))
	}
}

func TestUploadServerConcurrencyCap(t *testing.T) {
	st, _ := uploadFixture(t)
	// 64 KiB/s: a 1 MiB block takes ~16s, so the first upload is still in
	// flight when the second request arrives.
	key := newKeyTokens()
	u := NewUploadServer(UploadConfig{Store: st, Tokens: key, MaxUploads: 1, Rate: 64 << 10, Logger: quietLogger()})
	srv := httptest.NewServer(u)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	started := make(chan struct{})
	go func() {
		defer wg.Done()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/blocks/task/0", nil)
		req.Header.Set(api.TokenHeader, key.token("task", time.Hour))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			close(started)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		} else {
			close(started)
		}
	}()
	<-started
	resp, _ := get(t, srv.URL+"/blocks/task/2", key.token("task", time.Hour), "")
	cancel()
	wg.Wait()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second concurrent upload: HTTP %d, want 429", resp.StatusCode)
	}
	if u.Stats().Busy != 1 {
		t.Fatalf("busy counter %d, want 1", u.Stats().Busy)
	}
}
