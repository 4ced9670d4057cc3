package peer

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// TestDaemonConcurrentFirstDownloads: 50 first downloads of 5 URLs, all at
// once through one real daemon. Every download succeeds and every output is
// exactly its content (issue #20: a concurrent Open used to get a task
// whose store entry did not exist yet: "not found" errors, and an output of
// one block reported verified).
func TestDaemonConcurrentFirstDownloads(t *testing.T) {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	const urls, per = 5, 10
	type file struct {
		url, sha string
		size     int64
	}
	files := make([]file, urls)
	// Small tasks (2-3 blocks) make the race windows wide; larger ones make
	// many blocks in flight per task.
	sizes := [urls]int64{2<<20 + 1, 3<<20 + 777, 8<<20 + 5, 16 << 20, 24<<20 + 9}
	for i := range files {
		c := origin.Content{Size: sizes[i], Seed: uint64(100 + i)}
		files[i] = file{url: o.Add(fmt.Sprintf("f%d.bin", i), c), sha: strings.TrimPrefix(c.Digest("sha256"), "sha256:"), size: c.Size}
	}
	d := startTestDaemon(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := DialDaemon(ctx, d.SockPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	outDir := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, urls*per)
	start := make(chan struct{})
	for i := range urls * per {
		f := files[i%urls]
		out := filepath.Join(outDir, fmt.Sprintf("out-%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := c.Download(ctx, DownloadRequest{URL: f.url, Output: out}, nil)
			if err != nil {
				errs[i] = err
				return
			}
			if res.Length != f.size || res.SHA256 != f.sha {
				errs[i] = fmt.Errorf("result %+v: want %d bytes, sha256 %s", res, f.size, f.sha)
				return
			}
			if res.Verified { // the origin declares no digest: nothing to be verified against
				errs[i] = fmt.Errorf("result %+v says verified against a digest nobody declared", res)
				return
			}
			fi, err := os.Stat(out)
			if err != nil {
				errs[i] = err
				return
			}
			if fi.Size() != f.size {
				errs[i] = fmt.Errorf("output %s is %d bytes, want %d (reported sha256 %s)", out, fi.Size(), f.size, res.SHA256)
			}
		}()
	}
	close(start)
	wg.Wait()
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			if failed <= 5 {
				t.Errorf("download %d of %s: %v", i, files[i%urls].url, err)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d concurrent downloads failed", failed, urls*per)
	}
	for i := range urls * per {
		out := filepath.Join(outDir, fmt.Sprintf("out-%d", i))
		if got := fileSHA256(t, out); got != files[i%urls].sha {
			t.Fatalf("output %d has sha256 %s, want %s", i, got, files[i%urls].sha)
		}
	}
	if entries, _ := os.ReadDir(outDir); len(entries) != urls*per {
		t.Fatalf("output directory holds %d entries, want %d (temporary files left behind?)", len(entries), urls*per)
	}
}
