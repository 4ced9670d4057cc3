package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	dfs "github.com/dfly-p2p/dfly/fs"
	"github.com/dfly-p2p/dfly/fs/prefetch"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/supernode"
)

// binary is the dfmount built for the process tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dfmount-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755) // the no-permission test runs it as nobody
	binary = filepath.Join(dir, "dfmount")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build dfmount: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("skipping: /dev/fuse is not available (%v)", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: the dfmount process tests mount directly and need root")
	}
}

func TestParseRate(t *testing.T) {
	tests := map[string]int64{"0": 0, "1048576": 1 << 20, "512K": 512 << 10, "10M": 10 << 20, "1.5G": 3 << 29,
		"10MiB": 10 << 20, "4mb": 4 << 20, "2M/s": 2 << 20, " 7k ": 7 << 10}
	for in, want := range tests {
		got, err := parseRate(in)
		if err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "fast", "-1M", "1X"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) accepted", bad)
		}
	}
}

// runInProc runs dfmount's main in this process (for cases that never mount).
func runInProc(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String() + errb.String()
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no args", nil, "need at least one URL"},
		{"only a URL", []string{"http://h/f"}, "need at least one URL"},
		{"unknown flag", []string{"--bogus", "http://h/f", dir}, "unknown flag"},
		{"not a URL", []string{"ftp://h/f", dir}, "not an http(s) URL"},
		{"bad digest", []string{"--digest", "sha256:xyz", "http://h/f", dir}, "--digest"},
		{"too many names", []string{"--name", "a", "--name", "b", "http://h/f", dir}, "--name"},
		{"bad name", []string{"--name", "a/b", "http://h/f", dir}, "--name"},
		{"bad rate", []string{"--disk-rate", "fast", "http://h/f", dir}, "--disk-rate"},
		{"bad prefetch rate", []string{"--prefetch-rate", "-1", "http://h/f", dir}, "--prefetch-rate"},
		{"bad header", []string{"--header", "nocolon", "http://h/f", dir}, "--header"},
		{"bad timeout", []string{"--timeout", "0s", "http://h/f", dir}, "--timeout"},
		{"bad order", []string{"--prefetch-order", "random", "http://h/f", dir}, "--prefetch-order"},
		{"unmount needs DIR", []string{"-u"}, "exactly one argument"},
		{"status needs one DIR", []string{"--status", "a", "b"}, "exactly one argument"},
		{"store inside DIR", []string{"--store", filepath.Join(dir, "s"), "http://h/f", dir}, "inside the mount point"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out := runInProc(t, tc.args...)
			if code != exitUsage || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, output %q; want exit %d mentioning %q", code, out, exitUsage, tc.want)
			}
		})
	}
}

func TestHelpDocumentsExitCodes(t *testing.T) {
	code, out := runInProc(t, "--help")
	if code != exitOK {
		t.Fatalf("--help exit %d", code)
	}
	for _, want := range []string{"Exit codes", "3 DIR missing", "4 no /dev/fuse", "5 URL unreachable", "--disk-rate", "--supernode", "--status"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestMountErrors(t *testing.T) {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	u := o.Add("f.bin", origin.Content{Size: 1 << 20, Seed: 1})
	store := t.TempDir()

	full := t.TempDir()
	os.WriteFile(filepath.Join(full, "x"), nil, 0o644)
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)

	dead, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	deadURL := dead.Add("f", origin.Content{Size: 10})
	dead.Close()

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing dir", []string{u, filepath.Join(t.TempDir(), "nope")}, exitMountpoint, "does not exist"},
		{"dir not empty", []string{u, full}, exitMountpoint, "not empty"},
		{"not a directory", []string{u, file}, exitMountpoint, "not a directory"},
		{"unmount a non-mount", []string{"-u", t.TempDir()}, exitMountpoint, "not a FUSE mount"},
		{"status of a non-mount", []string{"--status", "--store", store, t.TempDir()}, exitNotRunning, "no dfmount"},
	}
	if _, err := os.Stat("/dev/fuse"); err == nil {
		tests = append(tests,
			struct {
				name string
				args []string
				code int
				want string
			}{"origin unreachable", []string{"--store", store, "--timeout", "5s", deadURL, t.TempDir()}, exitUnreachable, "unreachable"},
			struct {
				name string
				args []string
				code int
				want string
			}{"origin 404", []string{"--store", store, o.URL + "/missing", t.TempDir()}, exitUnreachable, "404"},
		)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out := runInProc(t, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, output %q; want exit %d mentioning %q", code, out, tc.code, tc.want)
			}
		})
	}

	t.Run("store in use", func(t *testing.T) {
		if _, err := os.Stat("/dev/fuse"); err != nil {
			t.Skip("skipping: no /dev/fuse (the store is opened after the FUSE check)")
		}
		locked := t.TempDir()
		st, err := blockstore.Open(locked, blockstore.Options{GCInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		code, out := runInProc(t, "--store", locked, u, t.TempDir())
		if code != exitStore || !strings.Contains(out, "in use") {
			t.Fatalf("exit %d, output %q; want %d, in use", code, out, exitStore)
		}
	})

	t.Run("no permission for /dev/fuse", func(t *testing.T) {
		requireFUSE(t)
		dir, err := os.MkdirTemp("", "dfmount-nobody")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		os.Chmod(dir, 0o777)
		cmd := exec.Command(binary, "--store", dir+"-store", u, dir) // never created: the FUSE check comes first
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitNoFUSE || !strings.Contains(string(out), "/dev/fuse") {
			t.Fatalf("as nobody: %v, output %q; want exit %d about /dev/fuse", err, out, exitNoFUSE)
		}
	})
}

// proc is a running dfmount process.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
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
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// mountDev returns the device of the dfly mount at dir, or "".
func mountDev(dir string) string {
	ms, _ := dfs.Mounts()
	dev := ""
	for _, m := range ms {
		if m.MountPoint == dir && m.FsType == "fuse."+dfs.FsType {
			dev = m.Dev
		}
	}
	return dev
}

// startMount runs dfmount and waits until DIR carries a new mount.
func startMount(t *testing.T, dir string, args ...string) *proc {
	t.Helper()
	old := mountDev(dir)
	p := &proc{cmd: exec.Command(binary, args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if mountDev(dir) != "" { // left behind by a failed test
			dfs.Unmount(dir)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.done:
			t.Fatalf("dfmount exited before mounting: %v\n%s", p.err, p.out)
		default:
		}
		if dev := mountDev(dir); dev != "" && (dev != old || !dfs.Stale(dir)) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("dfmount did not mount %s in 30s:\n%s", dir, p.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) wait(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("dfmount did not exit within %s:\n%s", d, p.out)
	}
}

func dropCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := fadviseDontNeed(f); err != nil {
		t.Fatal(err)
	}
}

func readRange(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	return b
}

func want(c origin.Content, off, n int64) []byte {
	b := make([]byte, n)
	c.ReadAt(b, off)
	return b
}

// kill -9 leaves a stale mount; the next dfmount of DIR cleans it, mounts
// again and reuses the blocks fetched before.
func TestKill9ThenRemountReusesBlocks(t *testing.T) {
	requireFUSE(t)
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	c := origin.Content{Size: 32 << 20, Seed: 5}
	u := o.Add("model.bin", c)
	store, dir := t.TempDir(), t.TempDir()
	file := filepath.Join(dir, "model.bin")

	p := startMount(t, dir, "--store", store, "--prefetch=false", u, dir)
	if got := readRange(t, file, 0, 4<<20); !bytes.Equal(got, want(c, 0, 4<<20)) {
		t.Fatal("first read differs from the origin")
	}
	// Let the readahead behind the first read finish, so that every block
	// the remount's reads (and their kernel readahead) touch is stored.
	for last, stable := o.BytesSent(), 0; stable < 5; stable++ {
		time.Sleep(100 * time.Millisecond)
		if now := o.BytesSent(); now != last {
			last, stable = now, 0
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 10*time.Second)
	before := o.BytesSent()
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(dir, &sfs); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("after kill -9: statfs = %v, want a stale mount (ENOTCONN)", err)
	}

	p2 := startMount(t, dir, "--store", store, "--prefetch=false", u, dir)
	if !strings.Contains(p2.out.String(), "cleaned a stale mount") {
		t.Errorf("the remount did not report cleaning the stale mount:\n%s", p2.out)
	}
	dropCache(t, file)
	// Small reads inside what the first mount read (no sequential streak,
	// so no readahead past it).
	for _, off := range []int64{0, 3<<20 + 12345, 1 << 20} {
		if got := readRange(t, file, off, 4096); !bytes.Equal(got, want(c, off, 4096)) {
			t.Fatalf("read at %d after the remount differs from the origin", off)
		}
	}
	if after := o.BytesSent(); after != before {
		t.Fatalf("remount re-fetched %d bytes from the origin; the stored blocks should have been reused", after-before)
	}
	if got := readRange(t, file, 20<<20, 1<<20); !bytes.Equal(got, want(c, 20<<20, 1<<20)) {
		t.Fatal("read of a new block after the remount differs")
	}

	code, out := runInProc(t, "-u", dir)
	if code != exitOK {
		t.Fatalf("dfmount -u: exit %d: %s", code, out)
	}
	p2.wait(t, 20*time.Second)
	if p2.err != nil {
		t.Fatalf("dfmount exited with %v after -u:\n%s", p2.err, p2.out)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Fatalf("after unmount DIR lists %v (%v), want an empty directory", ents, err)
	}
}

// Two files in one mount: the right digest verifies, a wrong one makes the
// prefetcher report a verification failure and leaves the task incomplete.
func TestStatusDigestVerification(t *testing.T) {
	requireFUSE(t)
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	good := origin.Content{Size: 6<<20 + 17, Seed: 6}
	bad := origin.Content{Size: 3 << 20, Seed: 7}
	ug, ub := o.Add("good.bin", good), o.Add("bad.bin", bad)
	wrong := "sha256:" + strings.Repeat("0", 64)
	store, dir := t.TempDir(), t.TempDir()
	p := startMount(t, dir, "--store", store, "--digest", good.Digest("sha256"), "--digest", wrong, "--name", "g", "--name", "b", ug, ub, dir)

	var st mountStatus
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, out := runInProc(t, "--status", "--json", "--store", store, dir)
		if code == exitOK {
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatalf("--status --json: %v\n%s", err, out)
			}
			if len(st.Files) == 2 && st.Files[0].Prefetch.State == prefetch.StateDone && st.Files[1].Prefetch.State == prefetch.StateFailed {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefetch did not finish: exit %d, status %s\nlog:\n%s", code, out, p.out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	g, b := st.Files[0], st.Files[1]
	if !g.Prefetch.Verified || !g.Complete || g.Prefetch.BlocksPresent != g.Prefetch.BlocksTotal {
		t.Errorf("good file status %+v / %+v", g, *g.Prefetch)
	}
	if b.Complete || b.Prefetch.Verified || !strings.Contains(b.Prefetch.Error, "verification failed") {
		t.Errorf("bad file status %+v / %+v", b, *b.Prefetch)
	}
	code, text := runInProc(t, "--status", "--store", store, dir)
	if code != exitOK || !strings.Contains(text, "g: 7/7 blocks (100.0%)") || !strings.Contains(text, "verified yes") ||
		!strings.Contains(text, "verification failed") {
		t.Errorf("--status: exit %d\n%s", code, text)
	}
	if !strings.Contains(p.out.String(), "whole-content verification failed") {
		t.Errorf("no log line about the verification failure:\n%s", p.out)
	}
	// The files stay readable.
	if got := readRange(t, filepath.Join(dir, "b"), 1<<20, 4096); !bytes.Equal(got, want(bad, 1<<20, 4096)) {
		t.Error("bad.bin read differs")
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 20*time.Second)
	if p.err != nil {
		t.Fatalf("dfmount exited with %v after SIGTERM:\n%s", p.err, p.out)
	}
	if ms, _ := dfs.Mounts(); func() bool {
		for _, m := range ms {
			if m.MountPoint == dir {
				return true
			}
		}
		return false
	}() {
		t.Fatal("SIGTERM left the mount behind")
	}
	t.Logf("dfmount output:\n%s\n--status:\n%s", p.out, text)
	if code, _ := runInProc(t, "--status", "--store", store, dir); code != exitNotRunning {
		t.Errorf("--status after exit: %d, want %d", code, exitNotRunning)
	}
	s, err := blockstore.Open(store, blockstore.Options{GCInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, task := range s.List() {
		switch task.Source {
		case ub:
			if task.State == blockstore.StateComplete {
				t.Error("the task with the wrong digest is marked complete")
			}
		case ug:
			if task.State != blockstore.StateComplete || !task.Verified {
				t.Errorf("good task %+v", task)
			}
		}
	}
}

// --disk-rate reaches the prefetcher: after a few seconds it has stored no
// more than the rate allows.
func TestDiskRateFlag(t *testing.T) {
	requireFUSE(t)
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	u := o.Add("slow.bin", origin.Content{Size: 64 << 20, Seed: 9})
	store, dir := t.TempDir(), t.TempDir()
	const rate = 2 << 20
	start := time.Now()
	startMount(t, dir, "--store", store, "--disk-rate", "2M", u, dir)
	time.Sleep(3 * time.Second)
	code, out := runInProc(t, "--status", "--json", "--store", store, dir)
	elapsed := time.Since(start)
	if code != exitOK {
		t.Fatalf("--status: exit %d: %s", code, out)
	}
	var st mountStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	pr := st.Files[0].Prefetch
	allowed := int64(elapsed.Seconds()*rate) + 2<<20
	t.Logf("after %s: %d bytes prefetched (rate allows %d)", elapsed.Round(time.Millisecond), pr.BytesFetched, allowed)
	if pr.BytesFetched == 0 || pr.BytesFetched > allowed {
		t.Fatalf("prefetched %d bytes in %s with --disk-rate 2M, want between 1 and %d", pr.BytesFetched, elapsed, allowed)
	}
}

// --supernode: the mount reads through the swarm (here: the seed).
func TestSwarmMode(t *testing.T) {
	requireFUSE(t)
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	sn, err := supernode.Start(supernode.Config{StoreDir: t.TempDir(), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	c := origin.Content{Size: 8<<20 + 5, Seed: 12}
	u := o.Add("s.bin", c)
	store, dir := t.TempDir(), t.TempDir()
	p := startMount(t, dir, "--store", store, "--supernode", sn.GRPCAddr(), "--digest", c.Digest("sha256"), u, dir)
	got, err := os.ReadFile(filepath.Join(dir, "s.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want(c, 0, c.Size)) {
		t.Fatal("content read through the swarm differs from the origin's")
	}
	var st mountStatus
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, out := runInProc(t, "--status", "--json", "--store", store, dir)
		if code == exitOK && json.Unmarshal([]byte(out), &st) == nil && st.Files[0].Prefetch.State == prefetch.StateDone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefetch did not finish: %s\n%s", out, p.out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	f := st.Files[0]
	t.Logf("bytes from origin %d, seed %d, peers %d", f.BytesOrigin, f.BytesSeed, f.BytesPeers)
	if !f.Verified || f.BytesSeed+f.BytesPeers == 0 {
		t.Fatalf("want verified content from the swarm; status %+v", f)
	}
}
