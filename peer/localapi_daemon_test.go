package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
)

// TestTasksListRestricted: /v1/tasks shows a task's source URL (which may
// carry a signed query) and other details only to root and the daemon's
// user; others get IDs, sizes and states.
func TestTasksListRestricted(t *testing.T) {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	u := o.Add("f.bin", origin.Content{Size: 1<<20 + 1, Seed: 3}) + "?X-Amz-Signature=secret"
	d := startTestDaemon(t, "")
	c, err := DialDaemon(ctx, d.SockPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Download(ctx, DownloadRequest{URL: u}, nil); err != nil {
		t.Fatal(err)
	}
	// Over the real socket this test (root or the daemon's user) sees everything.
	ts, err := c.Tasks(ctx)
	if err != nil || len(ts) != 1 || ts[0].Source != u || ts[0].Length != 1<<20+1 {
		t.Fatalf("owner's task list %+v, %v", ts, err)
	}
	api := (&localAPI{d: d, log: quietLogger()}).handler()
	list := func(cred *syscall.Ucred) string {
		r := httptest.NewRequest(http.MethodGet, "/v1/tasks", nil)
		if cred != nil {
			r = r.WithContext(context.WithValue(r.Context(), credKey{}, cred))
		}
		w := httptest.NewRecorder()
		api.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			t.Fatalf("GET /v1/tasks as %+v: HTTP %d", cred, w.Code)
		}
		return w.Body.String()
	}
	for _, cred := range []*syscall.Ucred{{Uid: 0}, {Uid: uint32(os.Geteuid())}} {
		if body := list(cred); !strings.Contains(body, "secret") {
			t.Fatalf("uid %d does not see the source URL: %s", cred.Uid, body)
		}
	}
	for _, cred := range []*syscall.Ucred{{Uid: 4242, Gid: 4242}, nil} {
		body := list(cred)
		if strings.Contains(body, "secret") || strings.Contains(body, o.URL) || strings.Contains(body, "digest") || strings.Contains(body, "etag") {
			t.Fatalf("another user (%+v) sees the task's details: %s", cred, body)
		}
		var got []blockstore.Task
		if err := json.Unmarshal([]byte(body), &got); err != nil || len(got) != 1 || got[0].ID != ts[0].ID ||
			got[0].Length != ts[0].Length || got[0].State != blockstore.StateComplete {
			t.Fatalf("another user's task list %s (%v): want the IDs, sizes and states", body, err)
		}
	}
}

// TestCommitChecksOutputSize: an output whose size is not the content's
// length is never renamed into place, whatever the task says.
func TestCommitChecksOutputSize(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.bin")
	o, err := createOutput(out, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.w.WriteAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	meta := blockstore.Task{ID: "x", Length: 64 << 20, BlockSize: 1 << 20, State: blockstore.StateComplete, Verified: true,
		Digest: "sha256:" + strings.Repeat("ab", 32)}
	if _, err := o.commit(meta, nil); !errors.Is(err, blockstore.ErrIncomplete) {
		t.Fatalf("commit of a 1 MiB output of 64 MiB content: %v, want ErrIncomplete", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a refused commit left %d entries", len(entries))
	}
}

// TestStaleTemporaryOutputsRemoved: the next download of an output removes
// the temporary files of that output left by killed processes, and never
// one of a live download.
func TestStaleTemporaryOutputsRemoved(t *testing.T) {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	u := o.Add("f.bin", origin.Content{Size: 2<<20 + 5, Seed: 9})
	d := startTestDaemon(t, "")
	c, err := DialDaemon(ctx, d.SockPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dir := t.TempDir()
	out := filepath.Join(dir, "out.bin")
	dead := deadPid(t)
	mk := func(name string, age time.Duration) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
		if age > 0 {
			old := time.Now().Add(-age)
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	staleDead := mk(fmt.Sprintf(".out.bin.dfly-tmp-%d-123", dead), 0)     // its owner died
	staleOld := mk(fmt.Sprintf(".out.bin.dfly-tmp-%d-456", 1), time.Hour) // pid 1 lives, but nobody holds the lock for an hour
	young := mk(fmt.Sprintf(".out.bin.dfly-tmp-%d-789", os.Getpid()), 0)  // maybe being created right now
	otherOutput := mk(fmt.Sprintf(".other.bin.dfly-tmp-%d-1", dead), 0)   // another output's
	live, err := CreateOutputTemp(out, quietLogger())                     // a live download's: locked
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(live.Name(), old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Download(ctx, DownloadRequest{URL: u, Output: out}, nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{staleDead, staleOld} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stale temporary output %s not removed (%v)", filepath.Base(p), err)
		}
	}
	for _, p := range []string{young, otherOutput, live.Name()} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v", filepath.Base(p), err)
		}
	}
}

// deadPid returns the pid of a process that has exited.
func deadPid(t *testing.T) int {
	t.Helper()
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	return p.Pid
}

// TestDaemonBurstWithFullAcceptQueue: 200 clients at once against a daemon
// whose accept queue holds only 2 connections (a small net.core.somaxconn,
// or a daemon busy for a moment). Connecting then fails with EAGAIN, which
// is not "no daemon": every client waits its turn and downloads (issue
// #20: 18% failed with "no dfdaemon running" while it ran).
func TestDaemonBurstWithFullAcceptQueue(t *testing.T) {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	d := startTestDaemon(t, "")
	setBacklog(t, d.sockLn, 2)
	const n = 200
	urls := make([]string, 10)
	for i := range urls {
		urls[i] = o.Add(fmt.Sprintf("s%d", i), origin.Content{Size: 32<<10 + int64(i), Seed: uint64(i)})
	}
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, err := DialDaemon(ctx, d.SockPath())
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			_, errs[i] = c.Download(ctx, DownloadRequest{URL: urls[i%len(urls)], Output: filepath.Join(dir, fmt.Sprint(i))}, nil)
		}()
	}
	close(start)
	wg.Wait()
	failed := 0
	for i, err := range errs {
		if err != nil {
			if failed++; failed <= 5 {
				t.Errorf("client %d: %v", i, err)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d clients failed", failed, n)
	}
	// Nothing listening is still "no daemon", at once.
	sock := filepath.Join(t.TempDir(), "gone.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the socket file stays: connections are refused
	began := time.Now()
	if _, err := DialDaemon(ctx, sock); !errors.Is(err, ErrNoDaemon) || time.Since(began) > 2*time.Second {
		t.Fatalf("refused socket: %v after %v, want ErrNoDaemon at once", err, time.Since(began))
	}
}

// setBacklog re-listens on a listening unix socket with another backlog.
func setBacklog(t *testing.T, ln net.Listener, n int) {
	t.Helper()
	rc, err := ln.(*net.UnixListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) { lerr = syscall.Listen(int(fd), n) }); err != nil || lerr != nil {
		t.Fatalf("listen backlog %d: %v %v", n, err, lerr)
	}
}

// TestSilentDaemonIsNotNoDaemon: a socket that accepts connections but
// does not answer (a daemon overloaded or hung) is reported as such, not as
// "no daemon" (which makes dfget download without it); one that answers
// late is waited for.
func TestSilentDaemonIsNotNoDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "slow.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var delay atomic.Int64
	delay.Store(int64(time.Hour))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(time.Duration(delay.Load())):
		case <-r.Context().Done():
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln) // stopped by Close below
	defer srv.Close()
	pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := DialDaemon(pctx, sock); err == nil || errors.Is(err, ErrNoDaemon) {
		t.Fatalf("a daemon that does not answer: %v, want an error other than ErrNoDaemon", err)
	}
	delay.Store(int64(300 * time.Millisecond))
	c, err := DialDaemon(ctx, sock)
	if err != nil {
		t.Fatalf("a daemon answering after 300ms: %v", err)
	}
	c.Close()
}
