package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/peer"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startDaemon runs a real daemon (origin mode) in this process on a socket
// in a fresh directory.
func startDaemon(t *testing.T, cfg peer.DaemonConfig) *peer.Daemon {
	t.Helper()
	dir := t.TempDir()
	if cfg.Sock == "" {
		cfg.Sock = filepath.Join(dir, "d.sock")
	}
	if cfg.StoreDir == "" {
		cfg.StoreDir = filepath.Join(dir, "store")
	}
	cfg.Listen = "127.0.0.1:0"
	cfg.Logger = quietLogger()
	d, err := peer.StartDaemon(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// setSocketBacklog re-listens on this process's listening unix socket at
// path with another backlog (found through /proc: the daemon keeps its
// listener to itself).
func setSocketBacklog(t *testing.T, path string, n int) {
	t.Helper()
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Skipf("no /proc/net/unix: %v", err)
	}
	inode := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 8 && f[7] == path && f[5] == "01" {
			inode = f[6]
		}
	}
	if inode == "" {
		t.Fatalf("no listening socket %s in /proc/net/unix", path)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if link, _ := os.Readlink("/proc/self/fd/" + fd.Name()); link == "socket:["+inode+"]" {
			n2, _ := strconv.Atoi(fd.Name())
			if err := syscall.Listen(n2, n); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("socket %s (inode %s) is not this process's", path, inode)
}

// TestManyConcurrentDfgetsThroughOneDaemon: 200 dfget processes started at
// once, each downloading a small file through the same daemon, whose accept
// queue holds only 4 connections (as with a small net.core.somaxconn).
// Every one must find the daemon (issue #20: 18% failed with "no dfdaemon
// running" while it ran) and write exactly its content.
func TestManyConcurrentDfgetsThroughOneDaemon(t *testing.T) {
	o := startOrigin(t)
	const n, files = 200, 20
	urls := make([]string, files)
	sums := make([]string, files)
	for i := range files {
		c := origin.Content{Size: 64<<10 + int64(i)*1000, Seed: uint64(i + 1)}
		urls[i] = o.Add(fmt.Sprintf("s%d.bin", i), c)
		sums[i] = c.Digest("sha256")
	}
	d := startDaemon(t, peer.DaemonConfig{})
	setSocketBacklog(t, d.SockPath(), 4)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	fails := make([]string, n)
	start := make(chan struct{})
	for i := range n {
		cmd := exec.CommandContext(ctx, dfgetBin, urls[i%files], "-O", filepath.Join(dir, fmt.Sprintf("o%d", i)), "--daemon-sock", d.SockPath(), "-q")
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if b, err := cmd.CombinedOutput(); err != nil {
				fails[i] = fmt.Sprintf("%v: %s", err, strings.TrimSpace(string(b)))
			}
		}()
	}
	close(start)
	wg.Wait()
	failed := 0
	for i, f := range fails {
		if f != "" {
			if failed++; failed <= 5 {
				t.Errorf("dfget %d: %s", i, f)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d concurrent dfgets failed", failed, n)
	}
	for i := range n {
		if got := fileSHA(t, filepath.Join(dir, fmt.Sprintf("o%d", i))); got != sums[i%files] {
			t.Fatalf("output %d: %s, want %s", i, got, sums[i%files])
		}
	}
	if st := d.Stats(); st.Downloads != n {
		t.Fatalf("the daemon served %d downloads, want %d", st.Downloads, n)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// authOrigin is a real origin (httptest) serving one file that needs a
// bearer token, and whose content and ETag a test changes; it records the
// Authorization header of every request.
type authOrigin struct {
	srv *httptest.Server
	url string

	mu      sync.Mutex
	content []byte
	etag    string
	token   string
	seen    []string // "METHOD AUTHORIZATION STATUS"
}

func newAuthOrigin(t *testing.T, content []byte, etag, token string) *authOrigin {
	a := &authOrigin{content: content, etag: etag, token: token}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		content, etag, token := a.content, a.etag, a.token
		a.mu.Unlock()
		status := http.StatusOK
		defer func() {
			a.mu.Lock()
			a.seen = append(a.seen, fmt.Sprintf("%s %q %d", r.Method, r.Header.Get("Authorization"), status))
			a.mu.Unlock()
		}()
		if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
			status = http.StatusUnauthorized
			http.Error(w, "who are you?", status)
			return
		}
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			status = http.StatusNotModified
		}
		http.ServeContent(w, r, "f", time.Time{}, bytes.NewReader(content))
	}))
	t.Cleanup(a.srv.Close)
	a.url = a.srv.URL + "/f.bin"
	return a
}

func (a *authOrigin) set(content []byte, etag string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.content, a.etag = content, etag
}

func (a *authOrigin) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.seen
	a.seen = nil
	return s
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13) ^ seed
	}
	return b
}

// TestPrivateContentThroughDaemon: content downloaded with credentials is
// handed out by the daemon only to callers the origin accepts: without or
// with wrong credentials dfget exits 4 with the origin's 401, writes
// nothing, and the origin saw the check.
func TestPrivateContentThroughDaemon(t *testing.T) {
	content := pattern(3<<20+17, 1)
	a := newAuthOrigin(t, content, `"v1"`, "sesame")
	d := startDaemon(t, peer.DaemonConfig{})
	dir := t.TempDir()
	out := filepath.Join(dir, "secret.bin")
	if code, msg := dfget(a.url, "-O", out, "--daemon-sock", d.SockPath(), "-H", "Authorization: Bearer sesame"); code != 0 {
		t.Fatalf("download with credentials: exit %d: %s", code, msg)
	}
	b, _ := os.ReadFile(out)
	if !bytes.Equal(b, content) {
		t.Fatal("output differs from the content")
	}
	for _, tc := range []struct {
		name string
		args []string
		auth string
	}{
		{"no credentials", nil, ""},
		{"wrong credentials", []string{"-H", "Authorization: Bearer guess"}, "Bearer guess"},
	} {
		a.requests()
		out2 := filepath.Join(dir, "stolen-"+strings.ReplaceAll(tc.name, " ", "-"))
		code, msg := dfget(append([]string{a.url, "-O", out2, "--daemon-sock", d.SockPath()}, tc.args...)...)
		if code != exitHTTP4xx || !strings.Contains(msg, "401") {
			t.Fatalf("%s: exit %d, %q; want %d with the origin's 401", tc.name, code, msg, exitHTTP4xx)
		}
		if _, err := os.Stat(out2); !os.IsNotExist(err) {
			t.Fatalf("%s: an output was written: %v", tc.name, err)
		}
		seen := a.requests()
		if len(seen) == 0 || !strings.HasPrefix(seen[0], fmt.Sprintf("HEAD %q 401", tc.auth)) {
			t.Fatalf("%s: the origin saw %v, want the caller's own check (HEAD with its Authorization, answered 401)", tc.name, seen)
		}
		for _, s := range seen {
			if strings.HasPrefix(s, "GET") {
				t.Fatalf("%s: the origin sent content: %v", tc.name, seen)
			}
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	// The right credentials still work, from the store.
	a.requests()
	if code, msg := dfget(a.url, "-O", filepath.Join(dir, "again"), "--daemon-sock", d.SockPath(), "-H", "Authorization: Bearer sesame"); code != 0 {
		t.Fatalf("download with credentials again: exit %d: %s", code, msg)
	}
	for _, s := range a.requests() {
		if strings.HasPrefix(s, "GET") {
			t.Fatalf("the stored content was fetched again: %s", s)
		}
	}
}

// TestChangedOriginContent: the same URL after the origin changed its
// content and ETag gives the new content, through the daemon and without
// it (issue #20: exit 0 with the old content).
func TestChangedOriginContent(t *testing.T) {
	v1, v2 := pattern(2<<20+3, 2), pattern(2<<20+3, 3)
	a := newAuthOrigin(t, v1, `"v1"`, "")
	d := startDaemon(t, peer.DaemonConfig{})
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	for _, mode := range []struct {
		name string
		args []string
	}{{"daemon", []string{"--daemon-sock", d.SockPath()}}, {"embedded", []string{"--store", store}}} {
		a.set(v1, `"v1"`)
		out := filepath.Join(dir, mode.name+"-1")
		if code, msg := dfget(append([]string{a.url, "-O", out}, mode.args...)...); code != 0 {
			t.Fatalf("%s: first download: exit %d: %s", mode.name, code, msg)
		}
		a.set(v2, `"v2"`)
		out = filepath.Join(dir, mode.name+"-2")
		if code, msg := dfget(append([]string{a.url, "-O", out}, mode.args...)...); code != 0 {
			t.Fatalf("%s: download after the change: exit %d: %s", mode.name, code, msg)
		}
		if b, _ := os.ReadFile(out); !bytes.Equal(b, v2) {
			t.Fatalf("%s: after the origin changed, the output is the old content: %v", mode.name, bytes.Equal(b, v1))
		}
	}
}

// tempFiles lists the temporary outputs in dir.
func tempFiles(dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, ".*.dfly-*"))
	return m
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKilledDfgetCancelsItsDaemonDownload: dfget killed with -9 while the
// daemon downloads for it: the daemon cancels the download and removes its
// temporary output.
func TestKilledDfgetCancelsItsDaemonDownload(t *testing.T) {
	o := startOrigin(t)
	u := o.Add("big.bin", origin.Content{Size: 128 << 20, Seed: 7})
	d := startDaemon(t, peer.DaemonConfig{DownloadRate: 16 << 20})
	dir := t.TempDir()
	out := filepath.Join(dir, "big.bin")
	cmd := exec.Command(dfgetBin, u, "-O", out, "--daemon-sock", d.SockPath(), "-q")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "the daemon's temporary output", func() bool { return len(tempFiles(dir)) == 1 && o.BytesSent() > 4<<20 })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitUntil(t, 10*time.Second, "the temporary output to be removed", func() bool { return len(tempFiles(dir)) == 0 })
	sent := o.BytesSent()
	time.Sleep(time.Second)
	if now := o.BytesSent(); now > sent+4<<20 {
		t.Fatalf("the origin sent %d bytes more after dfget was killed: the download went on", now-sent)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("output of a killed download: %v", err)
	}
}

// startDaemonProcess runs the dfdaemon binary (origin mode) and waits for
// its ready line.
func startDaemonProcess(t *testing.T, sock, store string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(dfdaemonBin, append([]string{"--sock", sock, "--store", store, "--log-level", "error"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := sc.Scan() && strings.HasPrefix(sc.Text(), "dfdaemon ready")
		ready <- ok
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("dfdaemon did not start")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dfdaemon not ready after 30s")
	}
	return cmd
}

// TestKilledDaemonLeavesNoStaleTemp: a daemon killed with -9 in the middle
// of a download leaves its temporary output; the next download of the same
// output removes it, through a new daemon or by dfget itself.
func TestKilledDaemonLeavesNoStaleTemp(t *testing.T) {
	o := startOrigin(t)
	c := origin.Content{Size: 64 << 20, Seed: 8}
	u := o.Add("big.bin", c)
	dir := t.TempDir()
	sock, store := filepath.Join(dir, "d.sock"), filepath.Join(dir, "store")
	outDir := filepath.Join(dir, "out")
	if err := os.Mkdir(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(outDir, "big.bin")
	killDuringDownload := func() string {
		d := startDaemonProcess(t, sock, store, "--download-rate", "16M")
		get := exec.Command(dfgetBin, u, "-O", out, "--daemon-sock", sock, "-q")
		if err := get.Start(); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 20*time.Second, "the daemon's temporary output", func() bool { return len(tempFiles(outDir)) == 1 && o.BytesSent() > 2<<20 })
		if err := d.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = d.Wait()
		_ = get.Wait()
		left := tempFiles(outDir)
		if len(left) != 1 {
			t.Fatalf("after kill -9 of the daemon: temporary files %v, want its one", left)
		}
		return left[0]
	}

	stale := killDuringDownload()
	d2 := startDaemonProcess(t, sock, store)
	if code, msg := dfget(u, "-O", out, "--daemon-sock", sock); code != 0 {
		t.Fatalf("download through a new daemon: exit %d: %s", code, msg)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("the killed daemon's temporary output %s is still there (%v)", stale, err)
	}
	if fileSHA(t, out) != c.Digest("sha256") {
		t.Fatal("wrong output")
	}

	if err := d2.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = d2.Wait()
	os.Remove(out)
	if err := os.RemoveAll(store); err != nil { // a fresh download, not one from the store
		t.Fatal(err)
	}
	stale = killDuringDownload()
	if code, msg := dfget(u, "-O", out, "--store", filepath.Join(dir, "store2")); code != 0 {
		t.Fatalf("dfget without the daemon: exit %d: %s", code, msg)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("dfget did not remove the killed daemon's temporary output %s (%v)", stale, err)
	}
	if left := tempFiles(outDir); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
