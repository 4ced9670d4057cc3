package blockhttp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/dfly-p2p/dfly/supernode/api"
)

// blockFile writes pre + block + post into a file and returns the file
// positioned at the block, as blockstore.OpenBlock does.
func blockFile(t *testing.T, block []byte) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "task.blocks")
	all := append(append(bytes.Repeat([]byte{'x'}, 1000), block...), bytes.Repeat([]byte{'y'}, 1000)...)
	if err := os.WriteFile(path, all, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(1000, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestSend(t *testing.T) {
	block := make([]byte, 300<<10+17)
	r := rand.New(rand.NewChaCha8([32]byte{1}))
	for i := range block {
		block[i] = byte(r.Uint32())
	}
	sum := sha256.Sum256(block)
	for _, tc := range []struct {
		name    string
		file    bool
		limiter *rate.Limiter
		rng     string
		method  string
		status  int
		want    []byte
	}{
		{name: "file, unlimited", file: true, method: "GET", status: 200, want: block},
		{name: "file, paced", file: true, limiter: rate.NewLimiter(rate.Limit(8<<20), 64<<10), method: "GET", status: 200, want: block},
		{name: "memory", method: "GET", status: 200, want: block},
		{name: "range", file: true, rng: "bytes=10-19", method: "GET", status: 206, want: block[10:20]},
		{name: "head", file: true, method: "HEAD", status: 200, want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var served, sent, waits atomic.Int64
			p := Pacer{Limiter: tc.limiter, Served: &served,
				Sent: func(n int64) { sent.Add(n) }, Waited: func(time.Duration) { waits.Add(1) }}
			errc := make(chan error, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var body io.Reader = bytes.NewReader(block)
				if tc.file {
					body = blockFile(t, block)
				}
				errc <- Send(r.Context(), w, r, body, int64(len(block)), sum[:], p)
			}))
			defer srv.Close()
			req, _ := http.NewRequest(tc.method, srv.URL+"/blocks/t/0", nil)
			if tc.rng != "" {
				req.Header.Set("Range", tc.rng)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("Send: %v", err)
			}
			if resp.StatusCode != tc.status || !bytes.Equal(got, tc.want) {
				t.Fatalf("status %d, %d bytes; want %d, %d bytes (equal: %v)", resp.StatusCode, len(got), tc.status, len(tc.want), bytes.Equal(got, tc.want))
			}
			if d := resp.Header.Get(api.DigestHeader); d != hex.EncodeToString(sum[:]) {
				t.Fatalf("digest header %q", d)
			}
			if served.Load() != int64(len(tc.want)) {
				t.Fatalf("served counter %d, want %d", served.Load(), len(tc.want))
			}
			if sent.Load() != int64(len(tc.want)) {
				t.Fatalf("Sent reported %d bytes, want %d", sent.Load(), len(tc.want))
			}
			if paced, n := tc.limiter != nil && tc.want != nil, waits.Load(); paced != (n > 0) {
				t.Fatalf("Waited called %d times (limiter: %v)", n, tc.limiter != nil)
			}
		})
	}
}

// TestSendStopsWhenClientLeaves: a paced answer to a client that went away
// ends with an error instead of waiting out the limiter.
func TestSendStopsWhenClientLeaves(t *testing.T) {
	block := make([]byte, 1<<20)
	lim := rate.NewLimiter(rate.Limit(64<<10), 64<<10) // 16 s for the block
	errc := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		errc <- Send(r.Context(), w, r, blockFile(t, block), int64(len(block)), make([]byte, 32), Pacer{Limiter: lim})
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 1000))
	cancel()
	resp.Body.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Send reported success to a client that left")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Send kept pacing after the client left")
	}
}
