// Package fs is dfly's lazy FUSE filesystem: a read-only tree of one or more
// files whose bytes are faulted in block by block through the peer engine
// (dfmount). A read asks the engine for exactly the blocks it covers, at
// foreground priority; sequential readers get the next blocks requested ahead
// of them; every read is bounded by a timeout so that a dead origin gives EIO
// (and a log line naming the cause), never a hang and never wrong bytes.
//
// The content is immutable, so the kernel may cache it freely (keep-cache,
// long attribute and entry timeouts).
package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/peer"
)

// Content is what a file of the tree reads from. *peer.Task satisfies it.
type Content interface {
	// ReadAt fetches (foreground) and returns the bytes at off; io.EOF at the end.
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	// Fetch makes sure block idx is stored (used for readahead, Background).
	Fetch(ctx context.Context, idx int, prio peer.Priority) error
	// Info returns the task's metadata (Length, BlockSize, LastModified).
	Info() blockstore.Task
}

// Entry is one file of the tree.
type Entry struct {
	Name    string
	Content Content
	// ModTime overrides the task's Last-Modified as the file's mtime.
	ModTime time.Time
}

// Options tune the tree.
type Options struct {
	// Timeout bounds every read (default 30s): past it the reader gets EIO.
	Timeout time.Duration
	// Readahead is how many bytes past a sequential reader are requested
	// (Background) from the engine; rounded up to whole blocks. Default
	// 8 MiB; negative disables.
	Readahead int64
	// MaxReadaheads bounds the readahead fetches in flight (default 8).
	MaxReadaheads int
	// AttrTimeout is how long the kernel may cache attributes and entries
	// (default 1h: the content is immutable).
	AttrTimeout time.Duration
	Logger      *slog.Logger
	// Metrics, if set, times the reads and counts the EIO answers.
	Metrics *Metrics
	// Tracing makes one FUSE read in 16 a trace's root, "fuse.read"; the
	// engine's block fetches are its children (trace.go). nil: off.
	Tracing *telemetry.Tracing
}

// Root is the root directory of the tree. It owns the goroutines its reads
// start; Close stops them.
type Root struct {
	gofs.Inode

	opt     Options
	log     *slog.Logger
	entries []Entry

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ra     chan struct{} // readahead slots
	bufs   sync.Pool
	uid    uint32 // owner of the files: the mounting user
	gid    uint32
	reads  atomic.Uint64 // reads so far: one in 16 is traced (trace.go)
}

var _ = (gofs.NodeOnAdder)((*Root)(nil))
var _ = (gofs.NodeGetattrer)((*Root)(nil))

// NewRoot builds a tree of the given files. Names must be unique, non-empty
// and contain no '/'.
func NewRoot(entries []Entry, opt Options) (*Root, error) {
	if len(entries) == 0 {
		return nil, errors.New("fs: no files to expose")
	}
	seen := map[string]bool{}
	for _, e := range entries {
		if err := ValidName(e.Name); err != nil {
			return nil, err
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("fs: two files named %q; give them distinct names", e.Name)
		}
		seen[e.Name] = true
		if e.Content == nil {
			return nil, fmt.Errorf("fs: file %q has no content", e.Name)
		}
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 30 * time.Second
	}
	if opt.Readahead == 0 {
		opt.Readahead = 8 << 20
	}
	if opt.MaxReadaheads <= 0 {
		opt.MaxReadaheads = 8
	}
	if opt.AttrTimeout <= 0 {
		opt.AttrTimeout = time.Hour
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Root{opt: opt, log: opt.Logger, entries: entries, ctx: ctx, cancel: cancel, ra: make(chan struct{}, opt.MaxReadaheads),
		uid: uint32(os.Getuid()), gid: uint32(os.Getgid())}
	r.bufs.New = func() any { b := make([]byte, maxRead); return &b }
	return r, nil
}

// ValidName checks a file name for the tree.
func ValidName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 255 {
		return fmt.Errorf("fs: file name %q: want 1-255 bytes, not . or .., without '/'; pass --name", name)
	}
	return nil
}

// NameFromURL derives a file name from a URL's last path element.
func NameFromURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "content"
	}
	s := path.Base(u.Path)
	if ValidName(s) != nil || s == "/" {
		return "content"
	}
	return s
}

// Close stops readahead and abandoned reads and waits for them.
func (r *Root) Close() {
	r.cancel()
	r.wg.Wait()
}

// OnAdd creates the file inodes.
func (r *Root) OnAdd(ctx context.Context) {
	for i, e := range r.entries {
		f := &fileNode{root: r, name: e.Name, content: e.Content, mtime: e.ModTime}
		ch := r.NewPersistentInode(ctx, f, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: uint64(i) + 2})
		r.AddChild(e.Name, ch, false)
	}
}

// Getattr reports a read-only directory.
func (r *Root) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Owner = fuse.Owner{Uid: r.uid, Gid: r.gid}
	out.SetTimeout(r.opt.AttrTimeout)
	return 0
}

// maxRead is the largest FUSE read (MaxWrite/max_pages is 1 MiB).
const maxRead = 1 << 20

type fileNode struct {
	gofs.Inode
	root    *Root
	name    string
	content Content
	mtime   time.Time

	// timedOut remembers blocks whose read timed out a moment ago: the
	// kernel retries a failed readahead at once with a synchronous read,
	// which would double the reader's wait.
	mu       sync.Mutex
	timedOut map[int]time.Time
}

// failMemo is how long a timed-out block fails new reads at once.
const failMemo = time.Second

func (f *fileNode) recentlyTimedOut(info blockstore.Task, off int64, n int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.timedOut) == 0 || info.BlockSize <= 0 {
		return false
	}
	now := time.Now()
	for idx, at := range f.timedOut {
		if now.Sub(at) > min(failMemo, f.root.opt.Timeout) {
			delete(f.timedOut, idx)
		}
	}
	for idx := off / info.BlockSize; idx <= (off+int64(n)-1)/info.BlockSize; idx++ {
		if _, ok := f.timedOut[int(idx)]; ok {
			return true
		}
	}
	return false
}

func (f *fileNode) noteTimeout(info blockstore.Task, off int64, n int) {
	if info.BlockSize <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.timedOut == nil {
		f.timedOut = map[int]time.Time{}
	}
	now := time.Now()
	for idx := off / info.BlockSize; idx <= (off+int64(n)-1)/info.BlockSize; idx++ {
		f.timedOut[int(idx)] = now
	}
}

var _ = (gofs.NodeOpener)((*fileNode)(nil))
var _ = (gofs.NodeReader)((*fileNode)(nil))
var _ = (gofs.NodeGetattrer)((*fileNode)(nil))

func (f *fileNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	info := f.content.Info()
	out.Mode = syscall.S_IFREG | 0o444
	out.Owner = fuse.Owner{Uid: f.root.uid, Gid: f.root.gid}
	out.Size = uint64(max(info.Length, 0))
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 1 << 20
	mt := f.mtime
	if mt.IsZero() && info.LastModified != "" {
		if t, err := http.ParseTime(info.LastModified); err == nil {
			mt = t
		}
	}
	if mt.IsZero() {
		mt = info.CreatedAt
	}
	out.SetTimes(nil, &mt, &mt)
	out.SetTimeout(f.root.opt.AttrTimeout)
	return 0
}

// handle is one open file; it tracks the reader's position to detect
// sequential access.
type handle struct {
	mu      sync.Mutex
	lastEnd int64
	streak  int
	aheadTo int // blocks below this index were already requested ahead
}

func (f *fileNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	return &handle{lastEnd: -1}, fuse.FOPEN_KEEP_CACHE, 0
}

type readResult struct {
	n   int
	err error
}

// Read serves a FUSE read (see read), timed by the metrics.
func (f *fileNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	began := time.Now()
	res, errno := f.read(ctx, fh, dest, off)
	f.root.opt.Metrics.read(time.Since(began), errno)
	return res, errno
}

// read serves a FUSE read. The fetch runs in its own goroutine bounded by the
// read timeout, so that an interrupted read (EINTR, retried by the caller)
// does not throw away a half-fetched block.
func (f *fileNode) read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	info := f.content.Info()
	if off >= info.Length || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	want := int(min(int64(len(dest)), info.Length-off))
	if f.recentlyTimedOut(info, off, want) {
		f.root.log.Debug("read of a block that just timed out; failing at once", "file", f.name, "off", off)
		return nil, syscall.EIO
	}
	if h, ok := fh.(*handle); ok {
		f.readahead(h, info, off, want)
	}
	var bp *[]byte
	var buf []byte
	if want <= maxRead {
		bp = f.root.bufs.Get().(*[]byte)
		buf = (*bp)[:want]
	} else {
		buf = make([]byte, want)
	}
	done := make(chan readResult, 1)
	start := time.Now()
	f.root.wg.Add(1)
	go func() {
		defer f.root.wg.Done()
		rctx, cancel := context.WithTimeoutCause(f.root.ctx, f.root.opt.Timeout, errReadTimeout)
		defer cancel()
		// A reader waits: the swarm asks the supernode for these blocks first.
		rctx = peer.WithPriority(rctx, peer.Foreground)
		rctx, span := f.root.startReadSpan(rctx, f.name, off, want)
		n, err := f.content.ReadAt(rctx, buf, off)
		if err != nil && context.Cause(rctx) == errReadTimeout {
			err = fmt.Errorf("%w after %s: %w", errReadTimeout, f.root.opt.Timeout, err)
		}
		endReadSpan(span, n, want, err)
		done <- readResult{n, err}
	}()
	select {
	case r := <-done:
		if r.err != nil && !(errors.Is(r.err, io.EOF) && r.n == want) {
			if bp != nil {
				f.root.bufs.Put(bp)
			}
			if errors.Is(r.err, errReadTimeout) {
				f.noteTimeout(info, off, want)
			}
			return nil, f.readError(r.err, off, want, start)
		}
		n := copy(dest, buf[:r.n])
		if bp != nil {
			f.root.bufs.Put(bp)
		}
		return fuse.ReadResultData(dest[:n]), 0
	case <-ctx.Done():
		// FUSE interrupt (a signal to the reader): the fetch goes on in the
		// background (bounded by the timeout) so that the retried read finds
		// the block; its buffer is left to the garbage collector.
		return nil, syscall.EINTR
	}
}

var errReadTimeout = errors.New("read timed out")

func (f *fileNode) readError(err error, off int64, n int, start time.Time) syscall.Errno {
	if errors.Is(err, context.Canceled) && f.root.ctx.Err() != nil {
		return syscall.EIO // unmounting
	}
	cause := "fetch failed"
	if errors.Is(err, errReadTimeout) {
		cause = fmt.Sprintf("no data within the %s read timeout (origin or swarm unreachable or too slow)", f.root.opt.Timeout)
	}
	f.root.log.Error("read failed; returning EIO to the reader", "file", f.name, "off", off, "len", n,
		"cause", cause, "elapsed", time.Since(start).Round(time.Millisecond), "err", err)
	return syscall.EIO
}

// readahead detects a sequential reader and asks the engine (Background) for
// the blocks ahead of it.
func (f *fileNode) readahead(h *handle, info blockstore.Task, off int64, n int) {
	if f.root.opt.Readahead < 0 || info.BlockSize <= 0 {
		return
	}
	h.mu.Lock()
	// Kernel readahead issues reads asynchronously, so allow some slack.
	if h.lastEnd >= 0 && off >= h.lastEnd-maxRead && off <= h.lastEnd+maxRead {
		h.streak++
		h.lastEnd = max(h.lastEnd, off+int64(n))
	} else { // a seek: start over
		h.streak, h.aheadTo, h.lastEnd = 0, 0, off+int64(n)
	}
	if h.streak < 2 {
		h.mu.Unlock()
		return
	}
	nb := info.NumBlocks()
	from := int((off+int64(n)-1)/info.BlockSize) + 1
	to := min(from+int((f.root.opt.Readahead+info.BlockSize-1)/info.BlockSize), nb)
	from = max(from, h.aheadTo)
	var todo []int
slots:
	for idx := from; idx < to; idx++ {
		select {
		case f.root.ra <- struct{}{}:
			todo = append(todo, idx)
			h.aheadTo = idx + 1
		default:
			break slots // all slots busy: try again on the next read
		}
	}
	h.mu.Unlock()
	for _, idx := range todo {
		f.root.wg.Add(1)
		go func() {
			defer f.root.wg.Done()
			defer func() { <-f.root.ra }()
			ctx, cancel := context.WithTimeout(f.root.ctx, f.root.opt.Timeout)
			defer cancel()
			if err := f.content.Fetch(ctx, idx, peer.Background); err != nil && f.root.ctx.Err() == nil {
				f.root.log.Debug("readahead fetch failed", "file", f.name, "block", idx, "err", err)
			}
		}()
	}
}
