package peer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// startSlowDaemon starts a daemon in origin mode whose downloads are capped
// at rate bytes/s.
func startSlowDaemon(t *testing.T, rate int64) *Daemon {
	t.Helper()
	dir := t.TempDir()
	d, err := StartDaemon(context.Background(), DaemonConfig{
		Listen: "127.0.0.1:0", Sock: filepath.Join(dir, "d.sock"), StoreDir: filepath.Join(dir, "store"),
		DownloadRate: rate, Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// waitFor polls cond every 10ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func tempOutputs(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, ".*dfly-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDaemonCancelsDownloadWhenClientLeaves: a client that goes away (dfget
// killed) cancels its download in the daemon: the temporary output is
// removed at once and no output ever appears.
func TestDaemonCancelsDownloadWhenClientLeaves(t *testing.T) {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	u := o.Add("big.bin", origin.Content{Size: 64 << 20, Seed: 5})
	d := startSlowDaemon(t, 8<<20) // 8 s for the whole file
	c, err := DialDaemon(context.Background(), d.SockPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dir := t.TempDir()
	out := filepath.Join(dir, "big.bin")
	cctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Download(cctx, DownloadRequest{URL: u, Output: out}, nil)
		errc <- err
	}()
	waitFor(t, 10*time.Second, "the daemon's temporary output", func() bool { return len(tempOutputs(t, dir)) == 1 })
	waitFor(t, 10*time.Second, "the first bytes", func() bool { return o.BytesSent() > 1<<20 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled download: %v", err)
	}
	waitFor(t, 5*time.Second, "the temporary output to be removed", func() bool { return len(tempOutputs(t, dir)) == 0 })
	sent := o.BytesSent()
	time.Sleep(500 * time.Millisecond)
	if now := o.BytesSent(); now > sent+2<<20 {
		t.Fatalf("the origin sent %d more bytes after the client left: the download goes on", now-sent)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("output of a cancelled download: %v", err)
	}
}
