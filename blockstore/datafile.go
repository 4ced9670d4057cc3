package blockstore

// Data files: how they are opened, kept open, and checked for changes made
// behind the store's back.
//
// Open files. Each task's bytes live in DIR/data/<id>.blocks. The store
// opens a task's file on first use and keeps at most Options.MaxOpenFiles
// of them open, least recently used first out. A handle is reference
// counted: a reader or writer holds it for the length of one block's I/O,
// and an idle handle is closed only once nobody holds it; it is opened
// again on its next use. OpenBlock hands out a descriptor of its own (the
// same file opened again, for sendfile), which its caller closes.
//
// Foreign changes. A block this process hashed (when it wrote the block, or
// read it back verified) is not hashed again on every read: serving a block
// to many peers would otherwise hash it once per upload, and each receiver
// verifies it anyway. That trust holds only for the bytes the store itself
// left in the file. So the store records the file's stamp (device, inode,
// size, modification and change time) after each of its own writes, under
// the task's write serialisation, and on every block read and OpenBlock
// compares it with fstat(2) of the file, taken after the bytes were read: a
// file that changed behind the store's back (another program wrote,
// truncated or replaced it) loses the "checked" mark of all its blocks, so
// each is hashed again on its next read, and one that fails is dropped, its
// task turns pending and ErrCorrupt is returned, as for rot found at the
// first read after Open. The cost is one fstat per block read; nothing is
// hashed while the file is as the store left it.
//
// Limits: a change that leaves the stamp as it was is not noticed here:
// silent disk rot, a write to the raw device, a write landing in the same
// clock tick as the store's own last write on a kernel or filesystem
// without fine-grained file times (Linux before 6.13), or one made while a
// write of the store to the same file was in flight. (Restoring the
// modification time does not hide a change: the change time cannot be set
// from user space.) Nor can a change be noticed after OpenBlock checked the
// file, while the block is being sent. Those bytes are still caught before
// any use: blocks on disk at Open are hashed on their first read, Scrub
// re-hashes everything, VerifyAndComplete checks the whole content, and
// every receiver checks each block's SHA-256 before it stores it.

import (
	"container/list"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// dataDir is the subdirectory of the store holding the tasks' data files.
const dataDir = "data"

// defaultMaxOpenFiles is Options.MaxOpenFiles when not set.
const defaultMaxOpenFiles = 256

// dataPath is the file holding task id's block bytes.
func (s *Store) dataPath(id string) string { return filepath.Join(s.dir, dataDir, id+".blocks") }

// errGone: the task was deleted; its data file is never opened again.
var errGone = errors.New("task deleted")

// fileCache keeps the most recently used data files open, at most max of
// them while no more are in use.
type fileCache struct {
	max    int
	mu     sync.Mutex
	lru    list.List // of *dataFile: open and cached, most recently used first
	closed bool
}

// dataFile is one open data file (and, with direct I/O, the same file opened
// with O_DIRECT). Its fields are guarded by fileCache.mu; the files
// themselves are safe for concurrent positioned I/O.
type dataFile struct {
	f           *os.File
	direct      *os.File
	directTried bool
	refs        int           // holders: a handle is closed only when 0
	elem        *list.Element // in fileCache.lru; nil once retired
	slot        *fileSlot
}

// fileSlot is a task's place in the cache; guarded by fileCache.mu.
type fileSlot struct {
	cur  *dataFile
	gone bool // the task was deleted: never open its file again
}

func (df *dataFile) close() {
	df.f.Close()
	if df.direct != nil {
		df.direct.Close()
	}
}

func closeEach(dfs []*dataFile) {
	for _, df := range dfs {
		df.close()
	}
}

// acquire returns the task's open data file, opening (creating) it when
// needed, held until release. The open happens under the cache's lock so
// that it cannot race a delete of the task (a file opened with O_CREATE
// after the delete removed it would come back as a leftover).
func (c *fileCache) acquire(slot *fileSlot, path string) (*dataFile, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if slot.gone {
		c.mu.Unlock()
		return nil, errGone
	}
	df := slot.cur
	if df == nil {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			c.mu.Unlock()
			return nil, fmt.Errorf("open data file %s: %w", path, err)
		}
		df = &dataFile{f: f, slot: slot}
		df.elem = c.lru.PushFront(df)
		slot.cur = df
	} else {
		c.lru.MoveToFront(df.elem)
	}
	df.refs++
	idle := c.trimLocked()
	c.mu.Unlock()
	closeEach(idle)
	return df, nil
}

// release lets go of a handle acquire returned.
func (c *fileCache) release(df *dataFile) {
	c.mu.Lock()
	df.refs--
	var idle []*dataFile
	if df.refs == 0 {
		if df.elem == nil {
			idle = []*dataFile{df} // retired while in use
		} else {
			idle = c.trimLocked()
		}
	}
	c.mu.Unlock()
	closeEach(idle)
}

// trimLocked takes idle handles, least recently used first, out of the
// cache until it holds at most max, and returns them to be closed. c.mu is
// held.
func (c *fileCache) trimLocked() []*dataFile {
	var idle []*dataFile
	for e := c.lru.Back(); e != nil && c.lru.Len() > c.max; {
		prev := e.Prev()
		if df := e.Value.(*dataFile); df.refs == 0 {
			c.retireLocked(df)
			idle = append(idle, df)
		}
		e = prev
	}
	return idle
}

// retireLocked takes df out of the cache: its holders keep using it, the
// last one closes it, and the next acquire opens the file again. c.mu is
// held.
func (c *fileCache) retireLocked(df *dataFile) {
	c.lru.Remove(df.elem)
	df.elem = nil
	if df.slot.cur == df {
		df.slot.cur = nil
	}
}

// forget closes the task's data file (once idle) for good: the task is
// deleted.
func (c *fileCache) forget(slot *fileSlot) {
	c.mu.Lock()
	slot.gone = true
	var idle []*dataFile
	if df := slot.cur; df != nil {
		c.retireLocked(df)
		if df.refs == 0 {
			idle = append(idle, df)
		}
	}
	c.mu.Unlock()
	closeEach(idle)
}

// closeAll closes every idle handle, and the others as they are released;
// nothing is opened any more.
func (c *fileCache) closeAll() {
	c.mu.Lock()
	c.closed = true
	var idle []*dataFile
	for e := c.lru.Front(); e != nil; {
		next := e.Next()
		df := e.Value.(*dataFile)
		c.retireLocked(df)
		if df.refs == 0 {
			idle = append(idle, df)
		}
		e = next
	}
	c.mu.Unlock()
	closeEach(idle)
}

// open reports how many data files are open.
func (c *fileCache) open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// directFile returns df's file opened with O_DIRECT, or nil when the store
// does not use direct I/O or the filesystem refuses it. df is held.
func (s *Store) directFile(df *dataFile) *os.File {
	if !s.opt.DirectIO || s.noDirect.Load() {
		return nil
	}
	c := &s.files
	c.mu.Lock()
	defer c.mu.Unlock()
	if !df.directTried {
		df.directTried = true
		f, err := os.OpenFile(df.f.Name(), os.O_RDWR|syscall.O_DIRECT, 0)
		if errors.Is(err, syscall.EINVAL) {
			s.directRefused(err)
		}
		if err != nil {
			return nil
		}
		// The twin must be the same file (not one put in its place since).
		a, aerr := df.f.Stat()
		b, berr := f.Stat()
		if aerr != nil || berr != nil || !os.SameFile(a, b) {
			f.Close()
			return nil
		}
		df.direct = f
	}
	return df.direct
}

func (s *Store) directRefused(err error) {
	if !s.noDirect.Swap(true) {
		s.log.Warn("the store's filesystem refuses direct I/O; using the page cache", "dir", s.dir, "err", err)
	}
}

// fileErr describes a failure to get a task's data file.
func fileErr(id string, idx int, err error) error {
	if errors.Is(err, errGone) {
		return fmt.Errorf("block %d of task %s: task deleted: %w", idx, id, ErrNotFound)
	}
	return fmt.Errorf("block %d of task %s: %w", idx, id, err)
}

// stamp is what fstat(2) tells of a data file's identity and last change;
// the zero stamp is "unknown".
type stamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // nanoseconds since the epoch
}

func stampOf(f *os.File) (stamp, error) {
	fi, err := f.Stat()
	if err != nil {
		return stamp{}, fmt.Errorf("stat data file: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return stamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}, nil
	}
	return stamp{
		dev: uint64(st.Dev), ino: st.Ino, size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}, nil
}

// fileView is what a reader saw of its task's data-file state before it
// read (see settleLocked).
type fileView struct {
	epoch, wseq uint64
	writing     bool
}

// viewLocked snapshots st's data-file state. st.mu is held.
func (st *taskState) viewLocked() fileView {
	return fileView{epoch: st.epoch, wseq: st.wseq, writing: st.writing}
}

// settleLocked compares got, the stamp of the task's data file taken after
// bytes were read from it (serr: fstat failed), with the stamp the store
// recorded, v being the state seen before the read. It reports whether the
// file is as the store left it, so that blocks checked before the read (in
// v) need no hashing. A change the store cannot explain by its own write is
// foreign: every block loses its checked mark. When a write of the store
// overlapped, it cannot tell, and reports false (the caller hashes what it
// read); the next read, or the writer's own check, decides. st.mu is held.
func (s *Store) settleLocked(st *taskState, v fileView, got stamp, serr error) bool {
	if serr == nil && got == st.stamp && st.epoch == v.epoch {
		return true
	}
	if serr != nil || v.writing || st.writing || st.wseq != v.wseq || st.epoch != v.epoch {
		return false
	}
	s.foreignLocked(st, got)
	return false
}

// foreignLocked records that the task's data file changed behind the
// store's back (now stamped got): no block of it counts as checked any more.
// st.mu is held.
func (s *Store) foreignLocked(st *taskState, got stamp) {
	known := st.stamp != (stamp{})
	checked := st.checked.Count()
	clear(st.checked)
	st.epoch++
	st.stamp = got
	if known {
		s.foreign.Add(1)
		s.log.Warn("data file changed behind the store's back; its blocks are hashed again on their next read",
			"task", st.task.ID, "file", s.dataPath(st.task.ID), "checked_blocks", checked)
	}
}

// beginWrite is called, with st.wmu held, before the store writes to the
// task's data file f: it checks that the file is as the store left it
// (forgetting the checked blocks when not) and returns the epoch to pass to
// endWrite.
func (s *Store) beginWrite(st *taskState, f *os.File) uint64 {
	st.mu.Lock()
	st.writing = true
	st.mu.Unlock()
	got, err := stampOf(f)
	st.mu.Lock()
	defer st.mu.Unlock()
	if err != nil || got != st.stamp {
		s.foreignLocked(st, got)
	}
	return st.epoch
}

// endWrite records the data file's stamp after the store's own write.
func (s *Store) endWrite(st *taskState, f *os.File) {
	got, err := stampOf(f)
	st.mu.Lock()
	defer st.mu.Unlock()
	if err != nil {
		got = stamp{} // unknown: the next read starts over
	}
	st.stamp = got
	st.wseq++
	st.writing = false
}

// reopen opens df's file again, read-only with an offset of its own, for
// OpenBlock's caller: through /proc/self/fd, so that it is the very file
// the store checked (not one put in its place since); without /proc, by
// name, and only if that is still the same file.
func reopen(df *dataFile) (*os.File, error) {
	if f, err := os.Open("/proc/self/fd/" + strconv.FormatUint(uint64(df.f.Fd()), 10)); err == nil {
		return f, nil
	}
	f, err := os.Open(df.f.Name())
	if err != nil {
		return nil, err
	}
	a, aerr := df.f.Stat()
	b, berr := f.Stat()
	if aerr != nil || berr != nil || !os.SameFile(a, b) {
		f.Close()
		return nil, fmt.Errorf("data file %s was replaced", df.f.Name())
	}
	return f, nil
}
