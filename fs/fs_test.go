package fs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/fs/prefetch"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/peer"
)

func TestNameFromURL(t *testing.T) {
	tests := map[string]string{
		"http://h/a/b/model.bin":           "model.bin",
		"http://h/a/file.iso?sig=1&x=2":    "file.iso",
		"https://h:8080/dir/data.tar#frag": "data.tar",
		"http://h/dir/":                    "dir",
		"http://h":                         "content",
		"http://h/":                        "content",
		"http://h/..":                      "content",
	}
	for in, want := range tests {
		if got := NameFromURL(in); got != want {
			t.Errorf("NameFromURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, bad := range []string{"", ".", "..", "a/b", "x\x00", strings.Repeat("a", 256)} {
		if ValidName(bad) == nil {
			t.Errorf("ValidName(%q) accepted", bad)
		}
	}
	for _, good := range []string{"a", "model.bin", "..x", strings.Repeat("a", 255)} {
		if err := ValidName(good); err != nil {
			t.Errorf("ValidName(%q) = %v", good, err)
		}
	}
}

func TestNewRootRejects(t *testing.T) {
	e := newEnv(t)
	task := e.open(t, "f", origin.Content{Size: 10, Seed: 1}, "")
	if _, err := NewRoot(nil, Options{}); err == nil {
		t.Error("empty tree accepted")
	}
	if _, err := NewRoot([]Entry{{Name: "a", Content: task}, {Name: "a", Content: task}}, Options{}); err == nil {
		t.Error("duplicate names accepted")
	}
	if _, err := NewRoot([]Entry{{Name: "a/b", Content: task}}, Options{}); err == nil {
		t.Error("name with a slash accepted")
	}
	if _, err := NewRoot([]Entry{{Name: "a"}}, Options{}); err == nil {
		t.Error("entry without content accepted")
	}
}

// topologies are the content paths the must-show tests run over.
var topologies = []struct {
	name string
	new  func(testing.TB) *env
}{
	{"origin", newEnv},
	{"swarm", newSwarmEnv},
}

// fetched is how many bytes the task pulled from the network.
func fetched(t *peer.Task) int64 {
	s := t.Stats()
	return s.BytesOrigin + s.BytesSeed + s.BytesPeers
}

// A 1 GiB file: the first MiB comes without fetching the file, and 200
// random reads equal the origin's bytes.
func TestLazyRandomReads1GiB(t *testing.T) {
	requireFUSE(t)
	for _, topo := range topologies {
		t.Run(topo.name, func(t *testing.T) { testLazyRandomReads(t, topo.new(t)) })
	}
}

func testLazyRandomReads(t *testing.T, e *env) {
	c := origin.Content{Size: 1 << 30, Seed: 42}
	if e.other != nil { // the other peer holds a few blocks
		u := e.origin.Add("big.bin", c)
		ot, err := e.other.Engine().Open(context.Background(), peer.Request{URL: u})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ot.ReadAt(context.Background(), make([]byte, 16<<20), 100<<20); err != nil {
			t.Fatal(err)
		}
	}
	task := e.open(t, "big.bin", c, "")
	dir := e.mount(t, []Entry{{Name: "big.bin", Content: task}}, Options{Timeout: 30 * time.Second})
	f, err := os.Open(filepath.Join(dir, "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != c.Size || fi.Mode().Perm() != 0o444 {
		t.Fatalf("stat: size %d mode %v, want %d r--r--r--", fi.Size(), fi.Mode(), c.Size)
	}
	first := make([]byte, 1<<20)
	if _, err := io.ReadFull(f, first); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, contentBytes(c, 0, 1<<20)) {
		t.Fatal("first MiB differs from the origin's")
	}
	afterFirst := fetched(task)
	t.Logf("reading the first MiB fetched %d bytes (origin sent %d)", afterFirst, e.origin.BytesSent())
	if afterFirst >= 64<<20 || (e.sn == nil && e.origin.BytesSent() >= 64<<20) {
		t.Fatalf("reading the first MiB fetched %d bytes (origin sent %d), want a few blocks", afterFirst, e.origin.BytesSent())
	}

	// 200 random reads, 8 at a time (a swarm read waits for the scheduler).
	type read struct{ off, n int64 }
	rng := rand.New(rand.NewPCG(1, 2))
	reads := make([]read, 200)
	for i := range reads {
		reads[i] = read{rng.Int64N(c.Size), 1 + rng.Int64N(256<<10)}
		if i%20 == 0 && e.other != nil {
			reads[i].off = 100<<20 + rng.Int64N(16<<20) // where the other peer holds blocks
		}
	}
	readStart := time.Now()
	errs := make(chan error, len(reads))
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(reads); i += 8 {
				r := reads[i]
				got := make([]byte, r.n)
				m, err := f.ReadAt(got, r.off)
				if err != nil && !(errors.Is(err, io.EOF) && r.off+int64(m) == c.Size) {
					errs <- fmt.Errorf("read %d at %d: %w", r.n, r.off, err)
					return
				}
				if !bytes.Equal(got[:m], contentBytes(c, r.off, r.n)) {
					errs <- fmt.Errorf("read #%d: %d bytes at %d differ from the origin's", i, r.n, r.off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := task.Stats()
	t.Logf("200 random reads in %s", time.Since(readStart).Round(time.Millisecond))
	t.Logf("200 random reads: fetched %d MiB of %d MiB (origin %d, seed %d, peers %d bytes)",
		fetched(task)>>20, c.Size>>20, st.BytesOrigin, st.BytesSeed, st.BytesPeers)
	if fetched(task) >= c.Size/2 || (e.sn == nil && e.origin.BytesSent() >= c.Size/2) {
		t.Fatalf("fetched %d bytes for 200 random reads of a %d-byte file: not lazy", fetched(task), c.Size)
	}
	if s := e.store.Stats(); s.Stored >= c.Size/2 {
		t.Fatalf("store holds %d bytes after random reads", s.Stored)
	}
	if e.sn != nil && st.BytesSeed+st.BytesPeers == 0 {
		t.Fatal("in the swarm topology no byte came from the seed or the other peer")
	}
}

// Prefetch completes and verifies; with the origin (and the swarm) gone,
// the whole file still reads back exactly through the mount.
func TestPrefetchThenOriginGone(t *testing.T) {
	requireFUSE(t)
	for _, topo := range topologies {
		t.Run(topo.name, func(t *testing.T) { testPrefetchThenGone(t, topo.new(t)) })
	}
}

func testPrefetchThenGone(t *testing.T, e *env) {
	c := origin.Content{Size: 48<<20 + 4097, Seed: 7}
	digest := c.Digest("sha256")
	task := e.open(t, "data", c, digest)
	dir := e.mount(t, []Entry{{Name: "data", Content: task}}, Options{Timeout: 5 * time.Second})
	p := prefetch.New(task, prefetch.Options{Logger: e.log})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := p.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if pr := p.Progress(); !pr.Verified || !pr.Complete || pr.BlocksPresent != pr.BlocksTotal {
		t.Fatalf("progress %+v", pr)
	}
	st := task.Stats()
	t.Logf("prefetched: origin %d, seed %d, peers %d bytes", st.BytesOrigin, st.BytesSeed, st.BytesPeers)
	e.origin.Close()
	if e.sn != nil {
		e.other.Close()
		e.sn.Close()
	}
	f, err := os.Open(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dropCache(t, f)
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatalf("read after the origin stopped: %v", err)
	}
	if got := "sha256:" + hexString(h.Sum(nil)); n != c.Size || got != digest {
		t.Fatalf("read %d bytes with %s, want %d with %s", n, got, c.Size, digest)
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 2*len(b))
	for i, v := range b {
		out[2*i], out[2*i+1] = digits[v>>4], digits[v&15]
	}
	return string(out)
}

// A dead origin: an unfetched block gives EIO within the timeout (with a
// log line naming the cause); a fetched block still reads.
func TestDeadOriginEIOWithinTimeout(t *testing.T) {
	requireFUSE(t)
	e := newEnv(t)
	c := origin.Content{Size: 16 << 20, Seed: 9}
	task := e.open(t, "f", c, "")
	const timeout = 2 * time.Second
	dir := e.mount(t, []Entry{{Name: "f", Content: task}}, Options{Timeout: timeout, Readahead: -1})
	f, err := os.Open(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	e.origin.SetDown(true)

	start := time.Now()
	_, err = f.ReadAt(buf, 12<<20)
	elapsed := time.Since(start)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of an unfetched block with the origin down: %v, want EIO", err)
	}
	t.Logf("EIO after %s (timeout %s)", elapsed.Round(time.Millisecond), timeout)
	if elapsed > timeout+3*time.Second {
		t.Fatalf("EIO came after %s, the timeout is %s", elapsed, timeout)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "read failed") || !strings.Contains(logs, "cause=") {
		t.Fatalf("no log line naming the cause; logs:\n%s", logs)
	}

	dropCache(t, f)
	got := make([]byte, 64<<10)
	if _, err := f.ReadAt(got, 512<<10); err != nil {
		t.Fatalf("read of a fetched block with the origin down: %v", err)
	}
	if !bytes.Equal(got, contentBytes(c, 512<<10, 64<<10)) {
		t.Fatal("fetched block read back wrong bytes")
	}
}

// A network that never answers: the read ends with EIO at the timeout.
func TestHangingOriginEIOAtTimeout(t *testing.T) {
	requireFUSE(t)
	e := newEnv(t)
	task := e.open(t, "f", origin.Content{Size: 4 << 20, Seed: 9}, "")
	const timeout = time.Second
	dir := e.mount(t, []Entry{{Name: "f", Content: &stuckContent{Content: task}}}, Options{Timeout: timeout})
	f, err := os.Open(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	_, err = f.ReadAt(make([]byte, 4096), 1<<20)
	elapsed := time.Since(start)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read with a hanging origin: %v, want EIO", err)
	}
	t.Logf("EIO after %s (timeout %s)", elapsed, timeout)
	if elapsed < timeout || elapsed > timeout+5*time.Second {
		t.Fatalf("EIO after %s, want at the %s timeout", elapsed, timeout)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "read timeout") {
		t.Fatalf("the log does not name the timeout; logs:\n%s", logs)
	}
}

// A reader blocked on a dead origin can be interrupted by a signal even
// though the read timeout is long. (Buffered reads wait for the page lock,
// which only fatal signals break; O_DIRECT reads are synchronous FUSE
// requests that the kernel interrupts with FUSE_INTERRUPT.)
func TestReadHonoursInterrupt(t *testing.T) {
	requireFUSE(t)
	dd, err := exec.LookPath("dd")
	if err != nil {
		t.Skip("skipping: dd not found")
	}
	e := newEnv(t)
	task := e.open(t, "f", origin.Content{Size: 8 << 20, Seed: 10}, "")
	stuck := &stuckContent{Content: task}
	dir := e.mount(t, []Entry{{Name: "f", Content: stuck}}, Options{Timeout: time.Minute})
	cmd := exec.Command(dd, "if="+filepath.Join(dir, "f"), "of=/dev/null", "bs=4k", "count=1", "skip=100", "iflag=direct")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-exited:
		t.Fatalf("dd finished before the interrupt (%v); the read should have blocked", err)
	default:
	}
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		t.Logf("dd ended %s after SIGINT: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("a read blocked on a dead origin ignored the interrupt")
	}
}

// stuckContent is a task behind a network that never answers: reads block
// until their context ends.
type stuckContent struct{ Content }

func (s *stuckContent) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

// A sequential reader gets the blocks ahead of it requested before it asks.
func TestSequentialReadahead(t *testing.T) {
	requireFUSE(t)
	e := newEnv(t)
	c := origin.Content{Size: 32 << 20, Seed: 11}
	task := e.open(t, "f", c, "")
	dir := e.mount(t, []Entry{{Name: "f", Content: task}}, Options{Readahead: 8 << 20})
	f, err := os.Open(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 128<<10)
	for off := int64(0); off < 3<<20; off += int64(len(buf)) {
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	// The reader stopped inside block 2; blocks up to 2+8 are requested ahead.
	deadline := time.Now().Add(20 * time.Second)
	for !e.store.HasBlock(task.ID(), 10) {
		if time.Now().After(deadline) {
			t.Fatalf("block 10 not fetched ahead of a sequential reader; missing %v", task.Missing())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if e.store.HasBlock(task.ID(), 20) {
		t.Fatal("readahead went far past its window")
	}
}

// Several URLs in one mount; attributes come from the task metadata.
func TestTreeAttributes(t *testing.T) {
	requireFUSE(t)
	e := newEnv(t)
	a := e.open(t, "a", origin.Content{Size: 3 << 20, Seed: 1}, "")
	b := e.open(t, "b", origin.Content{Size: 12345, Seed: 2}, "")
	mt := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	dir := e.mount(t, []Entry{{Name: "a.bin", Content: a}, {Name: "b.txt", Content: b, ModTime: mt}}, Options{})
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 2 || ents[0].Name() != "a.bin" || ents[1].Name() != "b.txt" {
		t.Fatalf("directory lists %v", ents)
	}
	fa, err := os.Stat(filepath.Join(dir, "a.bin"))
	if err != nil {
		t.Fatal(err)
	}
	lm, err := http.ParseTime(a.Info().LastModified)
	if err != nil {
		t.Fatalf("origin Last-Modified %q: %v", a.Info().LastModified, err)
	}
	if fa.Size() != 3<<20 || !fa.ModTime().Equal(lm) {
		t.Fatalf("a.bin: size %d mtime %v, want %d %v", fa.Size(), fa.ModTime(), 3<<20, lm)
	}
	fb, err := os.Stat(filepath.Join(dir, "b.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if fb.Size() != 12345 || !fb.ModTime().Equal(mt) {
		t.Fatalf("b.txt: size %d mtime %v", fb.Size(), fb.ModTime())
	}
	got, err := os.ReadFile(filepath.Join(dir, "b.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, contentBytes(origin.Content{Size: 12345, Seed: 2}, 0, 12345)) {
		t.Fatal("b.txt content differs")
	}
	if _, err := os.OpenFile(filepath.Join(dir, "a.bin"), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.EACCES) {
		t.Fatalf("open for writing: %v, want EROFS or EACCES", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat of a missing name: %v", err)
	}
}
