// Package blockstore keeps the blocks of tasks on one host: metadata in
// Badger, block bytes in one sparse data file per task.
//
// Layout (DIR is the store directory):
//
//	DIR/*.sst, *.vlog, ...  Badger: the keys below
//	  t/<id>              JSON Task metadata
//	  d/<id>/<idx:4>      32-byte SHA-256 of block idx (known before or after the block)
//	  b/<id>/<idx:4>      empty: block idx is present
//	DIR/data/<id>.blocks   the task's bytes, block idx at offset idx*BlockSize
//
// A block is present exactly when its b/ key exists, and that key is
// committed only after the block's bytes were written to the data file, so
// a crash can never expose a block that was not written. Every block is
// checked against its digest before it is stored and again the first time
// this process reads it (so bytes torn by a power loss are caught and
// refetched). Keeping the bytes out of Badger's value log costs one pwrite
// per block instead of a copy into a memory-mapped log, frees a deleted
// task's disk at once, and lets upload servers send blocks with sendfile(2)
// (OpenBlock). Stores written by older versions, with the bytes inside
// Badger, are migrated on Open.
package blockstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/dfly-p2p/dfly/internal/directio"
)

// Options configure a Store.
type Options struct {
	// Quota caps the sum of the lengths of all tasks (bytes). 0 means no quota.
	Quota int64
	// MinFree is the free space (bytes) always left on the filesystem: the
	// smaller of this (default 64 MiB) and a tenth of the filesystem's size.
	MinFree int64
	// SyncWrites makes every block write durable against power loss (slower).
	// Without it a killed process still loses nothing it committed.
	SyncWrites bool
	// DirectIO moves block bytes between the data files and the process
	// with O_DIRECT, around the page cache: every read is a disk read, and
	// the store occupies no cache memory. For a daemon whose blocks are
	// written once and read a few times (uploads, one output) this saves
	// the page-cache copy of every byte, which on virtual machines that hand
	// free memory back to their host (virtio-balloon free page reporting)
	// is the largest CPU cost of a download. Without it (the default) the
	// page cache serves repeated reads and uploads go out with sendfile(2).
	// Filesystems that refuse O_DIRECT fall back to the page cache.
	DirectIO bool
	// GCInterval is how often the value-log garbage collector runs. Default 1 minute; <0 disables.
	GCInterval time.Duration
	// Logger receives store events. Default slog.Default().
	Logger *slog.Logger
	// FreeSpace reports the free and total bytes of the filesystem holding
	// dir. Default: statfs. Tests replace it to simulate a full disk.
	FreeSpace func(dir string) (free, total int64, err error)
}

// Stats are a snapshot of a store's counters.
type Stats struct {
	Tasks         int   `json:"tasks"`
	Committed     int64 `json:"committed_bytes"` // sum of task lengths (what the quota counts)
	Stored        int64 `json:"stored_bytes"`    // bytes of blocks present
	Quota         int64 `json:"quota_bytes"`
	BlocksWritten int64 `json:"blocks_written"`
	BytesWritten  int64 `json:"bytes_written"`
	BytesRead     int64 `json:"bytes_read"`
	Corrupt       int64 `json:"corrupt_blocks"`
	Rejected      int64 `json:"rejected_blocks"`
	Evicted       int64 `json:"evicted_tasks"`
}

// Store is a Badger-backed block store. It is safe for concurrent use.
type Store struct {
	db  *badger.DB
	dir string
	opt Options
	log *slog.Logger

	mu     sync.Mutex
	tasks  map[string]*taskState
	closed bool

	// noDirect is set once the filesystem refused O_DIRECT.
	noDirect atomic.Bool
	// bufs pools block buffers of OpenBlock with DirectIO (*[]byte).
	bufs sync.Pool

	bytesWritten  atomic.Int64
	blocksWritten atomic.Int64
	bytesRead     atomic.Int64
	corrupt       atomic.Int64
	rejected      atomic.Int64
	evicted       atomic.Int64

	stop chan struct{}
	wg   sync.WaitGroup
}

// taskState is the in-memory view of one task; guarded by its own mutex.
type taskState struct {
	mu      sync.Mutex
	task    Task
	bitmap  Bitmap
	digests [][]byte // nil entry = unknown
	access  time.Time
	// checked marks blocks whose bytes this process has hashed (written or
	// read back verified). They are not hashed again on every read: serving
	// a block to many peers would otherwise hash it once per upload, and each
	// receiver verifies it anyway. Blocks found on disk at Open are checked
	// on their first read.
	checked Bitmap
	// gen counts writes and drops of each block, so that a read that found
	// a block corrupt drops it only if nobody stored a good copy since, and
	// a read that overlapped a drop and rewrite is not believed.
	gen []uint32
	// file is the task's data file, opened on first use (direct: the same
	// file opened with O_DIRECT, with Options.DirectIO); deleted is set by
	// DeleteTask (a write racing it must not resurrect the task).
	file    *os.File
	direct  *os.File
	deleted bool
	// wmu serialises block writes of the task, so that a stale write can
	// never overwrite a block another writer already committed.
	wmu sync.Mutex
}

func newTaskState(t Task, access time.Time) *taskState {
	n := t.NumBlocks()
	return &taskState{task: t, bitmap: NewBitmap(n), checked: NewBitmap(n), gen: make([]uint32, n), digests: make([][]byte, n), access: access}
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, opt Options) (*Store, error) {
	if opt.MinFree == 0 {
		opt.MinFree = 64 << 20
	}
	if opt.GCInterval == 0 {
		opt.GCInterval = time.Minute
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.FreeSpace == nil {
		opt.FreeSpace = statfsFree
	}
	if err := os.MkdirAll(filepath.Join(dir, dataDir), 0o755); err != nil {
		return nil, fmt.Errorf("create store directory %s: %w", dir, err)
	}
	bo := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{opt.Logger}).
		WithValueThreshold(1 << 10).
		WithNumVersionsToKeep(1).
		WithMemTableSize(16 << 20).
		WithBlockCacheSize(16 << 20).
		WithValueLogFileSize(256 << 20).
		WithSyncWrites(opt.SyncWrites).
		WithNumCompactors(2).
		WithMetricsEnabled(false)
	db, err := badger.Open(bo)
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return nil, fmt.Errorf("open block store %s: it is in use by another process (a running dfdaemon or dfget?); stop it or pass a different --store: %w", dir, err)
		}
		return nil, fmt.Errorf("open block store %s: %w", dir, err)
	}
	s := &Store{db: db, dir: dir, opt: opt, log: opt.Logger, tasks: map[string]*taskState{}, stop: make(chan struct{})}
	legacy, err := s.loadAll()
	if err == nil {
		err = s.migrate(legacy)
	}
	if err == nil {
		err = s.removeOrphanFiles()
	}
	if err != nil {
		s.closeFiles()
		db.Close()
		return nil, err
	}
	if opt.GCInterval > 0 {
		s.wg.Add(1)
		go s.gcLoop()
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Close flushes access times and closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	s.wg.Wait()
	s.flushAccess()
	s.closeFiles()
	return s.db.Close()
}

// dataDir is the subdirectory of the store holding the tasks' data files.
const dataDir = "data"

// dataPath is the file holding task id's block bytes.
func (s *Store) dataPath(id string) string { return filepath.Join(s.dir, dataDir, id+".blocks") }

// fileLocked returns the task's data file, opening (creating) it on first
// use. st.mu is held.
func (s *Store) fileLocked(st *taskState) (*os.File, error) {
	if st.deleted {
		return nil, fmt.Errorf("task %s: %w", st.task.ID, ErrNotFound)
	}
	if st.file == nil {
		f, err := os.OpenFile(s.dataPath(st.task.ID), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("open data file of task %s: %w", st.task.ID, err)
		}
		st.file = f
	}
	return st.file, nil
}

// directLocked returns the task's data file opened with O_DIRECT, or nil
// when the store does not use direct I/O or the filesystem refuses it.
// st.mu is held.
func (s *Store) directLocked(st *taskState) *os.File {
	if !s.opt.DirectIO || s.noDirect.Load() || st.deleted {
		return nil
	}
	if st.direct == nil {
		if _, err := s.fileLocked(st); err != nil { // creates the file
			return nil
		}
		f, err := os.OpenFile(s.dataPath(st.task.ID), os.O_RDWR|syscall.O_DIRECT, 0)
		if err != nil {
			s.directRefused(err)
			return nil
		}
		st.direct = f
	}
	return st.direct
}

func (s *Store) directRefused(err error) {
	if !s.noDirect.Swap(true) {
		s.log.Warn("the store's filesystem refuses direct I/O; using the page cache", "dir", s.dir, "err", err)
	}
}

func (s *Store) closeFiles() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.tasks {
		st.mu.Lock()
		closeTaskFiles(st)
		st.mu.Unlock()
	}
}

// closeTaskFiles closes the task's data file handles. st.mu is held.
func closeTaskFiles(st *taskState) {
	for _, f := range []**os.File{&st.file, &st.direct} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
}

// removeOrphanFiles deletes data files whose task is gone (a crash between
// dropping a task's keys and removing its file).
func (s *Store) removeOrphanFiles() error {
	ents, err := os.ReadDir(filepath.Join(s.dir, dataDir))
	if err != nil {
		return fmt.Errorf("list data files of store %s: %w", s.dir, err)
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".blocks")
		if _, known := s.tasks[id]; ok && known {
			continue
		}
		s.log.Info("removing data file of a deleted task", "file", e.Name())
		if err := os.Remove(filepath.Join(s.dir, dataDir, e.Name())); err != nil {
			return fmt.Errorf("remove orphan data file: %w", err)
		}
	}
	return nil
}

// legacyBlock is a block whose bytes an older version kept inside Badger.
type legacyBlock struct {
	id  string
	idx int
}

// migrate moves blocks stored by older versions (bytes as Badger values)
// into the data files, one transaction per block, so that an interrupted
// migration resumes on the next Open and loses nothing.
func (s *Store) migrate(legacy []legacyBlock) error {
	if len(legacy) == 0 {
		return nil
	}
	s.log.Info("moving blocks out of Badger into data files (one-time migration)", "blocks", len(legacy))
	for _, lb := range legacy {
		st := s.tasks[lb.id]
		var data []byte
		err := s.db.View(func(txn *badger.Txn) error {
			item, err := txn.Get(blockKey(lb.id, lb.idx))
			if err != nil {
				return err
			}
			data, err = item.ValueCopy(nil)
			return err
		})
		if err == nil {
			var f *os.File
			if f, err = s.fileLocked(st); err == nil {
				_, err = f.WriteAt(data, int64(lb.idx)*st.task.BlockSize)
			}
		}
		if err == nil && s.opt.SyncWrites {
			err = st.file.Sync()
		}
		if err == nil {
			err = s.db.Update(func(txn *badger.Txn) error { return txn.Set(blockKey(lb.id, lb.idx), nil) })
		}
		if err != nil {
			return fmt.Errorf("migrate block %d of task %s in %s to its data file: %w", lb.idx, lb.id, s.dir, err)
		}
	}
	if err := s.db.RunValueLogGC(0.3); err != nil && !errors.Is(err, badger.ErrNoRewrite) {
		s.log.Debug("value-log GC after migration", "err", err)
	}
	return nil
}

func taskKey(id string) []byte { return []byte("t/" + id) }
func blockKey(id string, idx int) []byte {
	return binary.BigEndian.AppendUint32([]byte("b/"+id+"/"), uint32(idx))
}
func digestKey(id string, idx int) []byte {
	return binary.BigEndian.AppendUint32([]byte("d/"+id+"/"), uint32(idx))
}

func validID(id string) error {
	if id == "" || len(id) > 200 || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("task ID %q: must be 1-200 bytes without '/': %w", id, ErrInvalid)
	}
	return nil
}

// loadAll reads every task's metadata, bitmap and digests into memory and
// returns the blocks an older version stored inside Badger.
func (s *Store) loadAll() ([]legacyBlock, error) {
	var legacy []legacyBlock
	return legacy, s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("t/"), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var t Task
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &t) }); err != nil {
				return fmt.Errorf("load task metadata %s: %w", it.Item().Key(), err)
			}
			s.tasks[t.ID] = newTaskState(t, t.AccessedAt)
		}
		for id, st := range s.tasks {
			if err := loadBlocks(txn, id, st, &legacy); err != nil {
				return err
			}
		}
		return nil
	})
}

func loadBlocks(txn *badger.Txn, id string, st *taskState, legacy *[]legacyBlock) error {
	n := len(st.digests)
	bit := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("b/" + id + "/")})
	for bit.Rewind(); bit.Valid(); bit.Next() {
		k := bit.Item().Key()
		if idx := int(binary.BigEndian.Uint32(k[len(k)-4:])); idx < n {
			st.bitmap.Set(idx)
			if bit.Item().ValueSize() > 0 {
				*legacy = append(*legacy, legacyBlock{id, idx})
			}
		}
	}
	bit.Close()
	dit := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("d/" + id + "/"), PrefetchValues: true})
	defer dit.Close()
	for dit.Rewind(); dit.Valid(); dit.Next() {
		k := dit.Item().Key()
		idx := int(binary.BigEndian.Uint32(k[len(k)-4:]))
		if idx >= n {
			continue
		}
		v, err := dit.Item().ValueCopy(nil)
		if err != nil {
			return fmt.Errorf("load digest %d of task %s: %w", idx, id, err)
		}
		st.digests[idx] = v
	}
	return nil
}

func (s *Store) state(id string) (*taskState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	st, ok := s.tasks[id]
	if !ok {
		return nil, fmt.Errorf("task %s: %w", id, ErrNotFound)
	}
	return st, nil
}

func (s *Store) writeTask(t Task) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(taskKey(t.ID), b) }); err != nil {
		return fmt.Errorf("write metadata of task %s: %w", t.ID, err)
	}
	return nil
}

// CreateTask accepts a new task, or returns the existing one with the same ID
// (so that an interrupted download resumes). Before accepting a new task it
// checks the quota (evicting least-recently-used complete, unpinned tasks to
// make room) and the filesystem's free space.
func (s *Store) CreateTask(ctx context.Context, t Task) (Task, error) {
	if err := validID(t.ID); err != nil {
		return Task{}, err
	}
	if t.Length < 0 {
		return Task{}, fmt.Errorf("task %s: content length %d: %w", t.ID, t.Length, ErrInvalid)
	}
	if t.BlockSize == 0 {
		t.BlockSize = BlockSizeFor(t.Length)
	}
	if t.BlockSize <= 0 || t.BlockSize&(t.BlockSize-1) != 0 {
		return Task{}, fmt.Errorf("task %s: block size %d is not a power of two: %w", t.ID, t.BlockSize, ErrInvalid)
	}
	if t.Digest != "" {
		if _, _, err := ParseDigest(t.Digest); err != nil {
			return Task{}, err
		}
	}
	if existing, err := s.Task(t.ID); err == nil {
		if existing.Length != t.Length || existing.BlockSize != t.BlockSize {
			return Task{}, fmt.Errorf("task %s exists with length %d/block size %d, not %d/%d; delete it first: %w",
				t.ID, existing.Length, existing.BlockSize, t.Length, t.BlockSize, ErrInvalid)
		}
		return existing, nil
	}
	if err := s.reserve(ctx, t.ID, t.Length); err != nil {
		return Task{}, err
	}
	now := time.Now().UTC()
	t.State = StatePending
	t.CreatedAt, t.AccessedAt = now, now
	t.Verified = false

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Task{}, ErrClosed
	}
	if st, ok := s.tasks[t.ID]; ok { // raced with another creator
		return st.task, nil
	}
	// A data file left by an earlier task of this ID holds nothing valid.
	if err := os.Remove(s.dataPath(t.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Task{}, fmt.Errorf("task %s: remove stale data file: %w", t.ID, err)
	}
	if err := s.writeTask(t); err != nil {
		return Task{}, err
	}
	s.tasks[t.ID] = newTaskState(t, now)
	s.log.Debug("task created", "task", t.ID, "length", t.Length, "block_size", t.BlockSize)
	return t, nil
}

// reserve makes room for length more bytes under the quota and on disk.
func (s *Store) reserve(ctx context.Context, id string, length int64) error {
	if s.opt.Quota > 0 {
		if length > s.opt.Quota {
			return fmt.Errorf("task %s needs %s but the store quota is %s; raise the quota: %w", id, human(length), human(s.opt.Quota), ErrQuota)
		}
		for s.Stats().Committed+length > s.opt.Quota {
			if err := ctx.Err(); err != nil {
				return err
			}
			victim, ok := s.lruVictim(id)
			if !ok {
				return fmt.Errorf("task %s needs %s; %s of the %s quota is held by pending or pinned tasks; free space with dfget --gc or raise the quota: %w",
					id, human(length), human(s.Stats().Committed), human(s.opt.Quota), ErrQuota)
			}
			s.log.Info("evicting task to make room", "task", victim, "for", id)
			if err := s.DeleteTask(victim); err != nil {
				return err
			}
			s.evicted.Add(1)
		}
	}
	free, total, err := s.opt.FreeSpace(s.dir)
	if err != nil {
		return fmt.Errorf("check free space of %s: %w", s.dir, err)
	}
	reserve := min(s.opt.MinFree, total/10)
	if free-length < reserve {
		return fmt.Errorf("task %s needs %s but %s has %s free (keeping %s in reserve): %w",
			id, human(length), s.dir, human(free), human(reserve), ErrNoSpace)
	}
	return nil
}

func (s *Store) lruVictim(except string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	type cand struct {
		id string
		at time.Time
	}
	var cs []cand
	for id, st := range s.tasks {
		st.mu.Lock()
		if id != except && st.task.State == StateComplete && !st.task.Pinned {
			cs = append(cs, cand{id, st.access})
		}
		st.mu.Unlock()
	}
	if len(cs) == 0 {
		return "", false
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].at.Before(cs[j].at) })
	return cs[0].id, true
}

// Task returns the task's metadata.
func (s *Store) Task(id string) (Task, error) {
	st, err := s.state(id)
	if err != nil {
		return Task{}, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	t := st.task
	t.AccessedAt = st.access
	return t, nil
}

// UpdateTask applies fn to the task's metadata and stores the result. fn may
// change Digest, ETag, LastModified, Source and Pinned; changes to identity,
// length or block size are rejected.
func (s *Store) UpdateTask(id string, fn func(*Task) error) (Task, error) {
	st, err := s.state(id)
	if err != nil {
		return Task{}, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	t := st.task
	if err := fn(&t); err != nil {
		return Task{}, err
	}
	if t.ID != st.task.ID || t.Length != st.task.Length || t.BlockSize != st.task.BlockSize {
		return Task{}, fmt.Errorf("task %s: identity, length and block size cannot change: %w", id, ErrInvalid)
	}
	if t.Digest != "" {
		if _, _, err := ParseDigest(t.Digest); err != nil {
			return Task{}, err
		}
	}
	if t.Digest != st.task.Digest && st.task.State == StateComplete && t.State == StateComplete {
		t.State, t.Verified = StatePending, false // a complete task must be verified again against a new digest
	}
	if err := s.writeTask(t); err != nil {
		return Task{}, err
	}
	st.task = t
	return t, nil
}

// Pin protects a task from eviction (or releases it).
func (s *Store) Pin(id string, pinned bool) error {
	_, err := s.UpdateTask(id, func(t *Task) error { t.Pinned = pinned; return nil })
	return err
}

// DeleteTask removes a task and its blocks; the data file's disk space is
// freed at once (Badger's small metadata by the value-log GC).
func (s *Store) DeleteTask(id string) error {
	s.mu.Lock()
	st, ok := s.tasks[id]
	if ok {
		delete(s.tasks, id)
	}
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("delete task %s: %w", id, ErrNotFound)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.deleted = true
	closeTaskFiles(st)
	// Keys first: a crash before the file is removed leaves an orphan file
	// (removed on the next Open), never a task whose bytes are gone.
	if err := s.db.DropPrefix([]byte("b/"+id+"/"), []byte("d/"+id+"/"), taskKey(id)); err != nil {
		return fmt.Errorf("delete task %s: %w", id, err)
	}
	if err := os.Remove(s.dataPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete task %s: remove its data file: %w", id, err)
	}
	s.log.Debug("task deleted", "task", id)
	return nil
}

// List returns every task, most recently used first.
func (s *Store) List() []Task {
	s.mu.Lock()
	sts := make([]*taskState, 0, len(s.tasks))
	for _, st := range s.tasks {
		sts = append(sts, st)
	}
	s.mu.Unlock()
	out := make([]Task, 0, len(sts))
	for _, st := range sts {
		st.mu.Lock()
		t := st.task
		t.AccessedAt = st.access
		st.mu.Unlock()
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AccessedAt.After(out[j].AccessedAt) })
	return out
}

// SetBlockDigest records the expected SHA-256 of block idx (as sent by the
// seed). A digest that contradicts a stored block drops that block.
func (s *Store) SetBlockDigest(id string, idx int, sum []byte) error {
	if len(sum) != sha256.Size {
		return fmt.Errorf("digest of block %d of task %s: %d bytes, want 32: %w", idx, id, len(sum), ErrInvalid)
	}
	st, err := s.state(id)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if idx < 0 || idx >= len(st.digests) {
		return fmt.Errorf("digest of block %d of task %s: out of range [0,%d): %w", idx, id, len(st.digests), ErrInvalid)
	}
	if bytes.Equal(st.digests[idx], sum) {
		return nil
	}
	sum = bytes.Clone(sum)
	err = s.db.Update(func(txn *badger.Txn) error {
		if st.digests[idx] != nil && st.bitmap.Has(idx) {
			if err := txn.Delete(blockKey(id, idx)); err != nil {
				return err
			}
		}
		return txn.Set(digestKey(id, idx), sum)
	})
	if err != nil {
		return fmt.Errorf("store digest of block %d of task %s: %w", idx, id, err)
	}
	if st.digests[idx] != nil && st.bitmap.Has(idx) {
		s.log.Warn("block digest changed; dropped stored block", "task", id, "block", idx)
		st.bitmap.Clear(idx)
		st.checked.Clear(idx)
		st.gen[idx]++
	}
	st.digests[idx] = sum
	return nil
}

// BlockDigest returns the SHA-256 of block idx, if known.
func (s *Store) BlockDigest(id string, idx int) ([]byte, bool) {
	st, err := s.state(id)
	if err != nil {
		return nil, false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if idx < 0 || idx >= len(st.digests) || st.digests[idx] == nil {
		return nil, false
	}
	return bytes.Clone(st.digests[idx]), true
}

// PutBlock stores block idx after checking its length and, when known, its
// digest (ErrDigestMismatch otherwise; nothing is stored). Putting a block
// already present stores nothing but still checks the bytes: a nil error
// always means data is the verified block. The bytes go to the task's data file first;
// the block becomes present (one Badger transaction) only once they are
// written — and synced, with Options.SyncWrites.
func (s *Store) PutBlock(ctx context.Context, id string, idx int, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	st, err := s.state(id)
	if err != nil {
		return err
	}
	st.wmu.Lock()
	defer st.wmu.Unlock()
	off := int64(idx) * st.task.BlockSize
	st.mu.Lock()
	f, err := s.checkPutLocked(st, idx, data, sum[:])
	var direct *os.File
	if f != nil && directio.CanDirect(data, off) {
		direct = s.directLocked(st)
	}
	st.mu.Unlock()
	if err != nil || f == nil {
		return err
	}
	if err := s.checkFree(id, idx, int64(len(data))); err != nil {
		return err
	}
	if err := s.writeAt(f, direct, data, off); err != nil {
		return s.writeErr(id, idx, err)
	}
	if s.opt.SyncWrites {
		if err := f.Sync(); err != nil {
			return s.writeErr(id, idx, err)
		}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	// The digest may have arrived or changed while the bytes were written.
	if _, err := s.checkPutLocked(st, idx, data, sum[:]); err != nil || st.bitmap.Has(idx) {
		return err
	}
	newDigest := st.digests[idx] == nil
	err = s.db.Update(func(txn *badger.Txn) error {
		if newDigest {
			if err := txn.Set(digestKey(id, idx), sum[:]); err != nil {
				return err
			}
		}
		return txn.Set(blockKey(id, idx), nil)
	})
	if err != nil {
		return s.writeErr(id, idx, err)
	}
	if newDigest {
		st.digests[idx] = sum[:]
	}
	st.bitmap.Set(idx)
	st.checked.Set(idx)
	st.gen[idx]++
	s.blocksWritten.Add(1)
	s.bytesWritten.Add(int64(len(data)))
	return nil
}

// checkPutLocked checks a block about to be stored and returns the task's
// data file, or nil when the block is already present. st.mu is held.
func (s *Store) checkPutLocked(st *taskState, idx int, data, sum []byte) (*os.File, error) {
	id, n := st.task.ID, len(st.digests)
	if idx < 0 || idx >= n {
		return nil, fmt.Errorf("put block %d of task %s: out of range [0,%d): %w", idx, id, n, ErrInvalid)
	}
	if want := st.task.BlockLen(idx); int64(len(data)) != want {
		s.rejected.Add(1)
		return nil, fmt.Errorf("put block %d of task %s: %d bytes, want %d: %w", idx, id, len(data), want, ErrDigestMismatch)
	}
	if want := st.digests[idx]; want != nil && !bytes.Equal(want, sum) {
		s.rejected.Add(1)
		return nil, fmt.Errorf("put block %d of task %s: sha256 %x, want %x: %w", idx, id, sum[:8], want[:8], ErrDigestMismatch)
	}
	if st.bitmap.Has(idx) {
		return nil, nil
	}
	return s.fileLocked(st)
}

// checkFree refuses a block write that would leave less than half the
// reserve free (see Options.MinFree): something else filled the disk since
// the task was accepted, and Badger, which maps its files into memory, must
// keep room to commit metadata (a write into a mapped file on a full disk
// kills the process).
func (s *Store) checkFree(id string, idx int, n int64) error {
	free, total, err := s.opt.FreeSpace(s.dir)
	if err != nil {
		return fmt.Errorf("write block %d of task %s: check free space of %s: %w", idx, id, s.dir, err)
	}
	if floor := min(s.opt.MinFree, total/10) / 2; free-n < floor {
		return fmt.Errorf("write block %d of task %s: %s has %s free, keeping %s for metadata; free disk space: %w",
			idx, id, s.dir, human(free), human(floor), ErrNoSpace)
	}
	return nil
}

// writeAt writes data at off: with direct (O_DIRECT) when given, through the
// page cache when not or when the filesystem refuses the direct write.
func (s *Store) writeAt(f, direct *os.File, data []byte, off int64) error {
	if direct != nil {
		m, err := direct.WriteAt(data, off)
		if err == nil || m > 0 || !errors.Is(err, syscall.EINVAL) {
			return err
		}
		s.directRefused(err)
	}
	_, err := f.WriteAt(data, off)
	return err
}

// writeErr describes a failed block write; a full disk is ErrNoSpace.
func (s *Store) writeErr(id string, idx int, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("write block %d of task %s to %s: %w (%w)", idx, id, s.dir, ErrNoSpace, err)
	}
	if errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("write block %d of task %s: task deleted: %w", idx, id, ErrNotFound)
	}
	return fmt.Errorf("write block %d of task %s to %s: %w", idx, id, s.dir, err)
}

// HasBlock reports whether block idx is present.
func (s *Store) HasBlock(id string, idx int) bool {
	st, err := s.state(id)
	if err != nil {
		return false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.bitmap.Has(idx)
}

// Bitmap returns a copy of the task's block bitmap.
func (s *Store) Bitmap(id string) (Bitmap, error) {
	st, err := s.state(id)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.bitmap.Clone(), nil
}

// Missing lists the blocks of the task not yet present.
func (s *Store) Missing(id string) ([]int, error) {
	st, err := s.state(id)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.bitmap.Missing(len(st.digests)), nil
}

// ReadBlock returns a verified copy of block idx: hashed against its digest
// unless this process already hashed it (see taskState.checked). A block that
// fails is dropped (so it will be fetched again) and ErrCorrupt returned.
func (s *Store) ReadBlock(id string, idx int) ([]byte, error) {
	return s.readBlock(id, idx, nil, true)
}

// readBlock reads block idx into buf (reallocated if too small). With verify
// false the SHA-256 check is left to the caller (a whole-content digest).
func (s *Store) readBlock(id string, idx int, buf []byte, verify bool) ([]byte, error) {
	st, err := s.state(id)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	has := idx >= 0 && idx < len(st.digests) && st.bitmap.Has(idx)
	if !has {
		st.mu.Unlock()
		return nil, fmt.Errorf("block %d of task %s: %w", idx, id, ErrNotFound)
	}
	want := st.digests[idx]
	if verify && st.checked.Has(idx) {
		verify = false
	}
	gen := st.gen[idx]
	st.access = time.Now().UTC()
	n := st.task.BlockLen(idx)
	off := int64(idx) * st.task.BlockSize
	f, err := s.fileLocked(st)
	var direct *os.File
	if off%directio.Align == 0 { // (blocks smaller than a page are read through the cache)
		direct = s.directLocked(st)
	}
	st.mu.Unlock()
	if err != nil {
		return nil, err
	}
	var data []byte
	var m int
	if direct != nil {
		data, m, err = s.readDirect(direct, f, buf, n, off)
	} else {
		if int64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		data = buf[:n]
		m, err = f.ReadAt(data, off)
	}
	if errors.Is(err, os.ErrClosed) {
		return nil, fmt.Errorf("block %d of task %s: task deleted: %w", idx, id, ErrNotFound)
	}
	if err == io.EOF && int64(m) < n {
		err = fmt.Errorf("data file %s ends inside the block (%d of %d bytes)", f.Name(), m, n)
	}
	// A drop (and rewrite) that overlapped this read makes its bytes untrustworthy.
	st.mu.Lock()
	changed := st.gen[idx] != gen || !st.bitmap.Has(idx)
	st.mu.Unlock()
	if changed {
		return nil, fmt.Errorf("block %d of task %s: dropped while being read: %w", idx, id, ErrNotFound)
	}
	if err == nil && !verify {
		s.bytesRead.Add(n)
		return data, nil
	}
	if err == nil {
		if sum := sha256.Sum256(data); want != nil && bytes.Equal(sum[:], want) {
			s.bytesRead.Add(n)
			st.mu.Lock()
			if st.gen[idx] == gen {
				st.checked.Set(idx)
			}
			st.mu.Unlock()
			return data, nil
		}
		err = fmt.Errorf("sha256 mismatch")
	}
	// Unreadable or wrong: drop the block so it is fetched again.
	s.corrupt.Add(1)
	s.log.Error("stored block failed verification; dropping it", "task", id, "block", idx, "err", err)
	st.mu.Lock()
	if st.gen[idx] == gen { // not re-stored meanwhile
		if derr := s.dropLocked(st, idx); derr != nil {
			s.log.Error("drop corrupt block", "task", id, "block", idx, "err", derr)
		}
	}
	st.mu.Unlock()
	return nil, fmt.Errorf("block %d of task %s in %s: %v: %w", idx, id, s.dir, err, ErrCorrupt)
}

// readDirect reads the n bytes at off with O_DIRECT into buf (or a new
// aligned buffer): the read is rounded up to whole aligned pages, and may
// end early at the end of the file. A refused direct read is retried
// through the page cache (f).
func (s *Store) readDirect(direct, f *os.File, buf []byte, n, off int64) ([]byte, int, error) {
	c := (n + directio.Align - 1) &^ (directio.Align - 1)
	if int64(cap(buf)) < c || !directio.AlignedAddr(buf[:1]) {
		buf = directio.Buffer(n)
	}
	m, err := direct.ReadAt(buf[:c], off)
	if errors.Is(err, syscall.EINVAL) && m == 0 {
		s.directRefused(err)
		m, err = f.ReadAt(buf[:n], off)
		return buf[:n], m, err
	}
	if int64(m) >= n {
		return buf[:n], int(n), nil // the page-rounded read may go past the block
	}
	if err == nil {
		err = io.EOF
	}
	return buf[:n], m, err
}

// OpenBlock opens block idx for sending and returns a reader of its n
// bytes, to be closed after use. A block this process has not verified yet
// is verified first (ErrCorrupt: it was dropped). Through the page cache the
// reader is the task's data file (*os.File) positioned at the block, so an
// HTTP answer copying from it sends with sendfile(2), never through user
// space; should the block be dropped and rewritten meanwhile (its digest
// changed at the origin), the receiver's own check rejects the mix. With
// Options.DirectIO the block is read, verified, into a pooled buffer.
func (s *Store) OpenBlock(id string, idx int) (io.ReadCloser, int64, error) {
	st, err := s.state(id)
	if err != nil {
		return nil, 0, err
	}
	st.mu.Lock()
	has := idx >= 0 && idx < len(st.digests) && st.bitmap.Has(idx)
	checked := has && st.checked.Has(idx)
	var n int64
	if has {
		n = st.task.BlockLen(idx)
	}
	st.mu.Unlock()
	if !has {
		return nil, 0, fmt.Errorf("block %d of task %s: %w", idx, id, ErrNotFound)
	}
	if s.opt.DirectIO && !s.noDirect.Load() {
		bp, _ := s.bufs.Get().(*[]byte)
		if bp == nil {
			bp = new([]byte)
		}
		data, err := s.readBlock(id, idx, *bp, true)
		if err != nil {
			s.bufs.Put(bp)
			return nil, 0, err
		}
		*bp = data
		return &pooledBlock{Reader: bytes.NewReader(data), buf: bp, pool: &s.bufs}, n, nil
	}
	if !checked {
		if _, err := s.readBlock(id, idx, nil, true); err != nil {
			return nil, 0, err
		}
	}
	st.mu.Lock()
	off, deleted := int64(idx)*st.task.BlockSize, st.deleted
	st.access = time.Now().UTC()
	st.mu.Unlock()
	if deleted {
		return nil, 0, fmt.Errorf("block %d of task %s: %w", idx, id, ErrNotFound)
	}
	f, err := os.Open(s.dataPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, fmt.Errorf("block %d of task %s: %w", idx, id, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open block %d of task %s: %w", idx, id, err)
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("open block %d of task %s: %w", idx, id, err)
	}
	s.bytesRead.Add(n)
	return f, n, nil
}

// pooledBlock is a block read into a pooled buffer; Close returns the buffer.
type pooledBlock struct {
	*bytes.Reader
	buf  *[]byte
	pool *sync.Pool
}

func (p *pooledBlock) Close() error {
	if p.buf != nil {
		p.pool.Put(p.buf)
		p.buf = nil
	}
	return nil
}

func (s *Store) uncheck(id string, idx int) {
	if st, err := s.state(id); err == nil {
		st.mu.Lock()
		st.checked.Clear(idx)
		st.mu.Unlock()
	}
}

// DropBlock removes block idx (for example after a peer reported it bad).
func (s *Store) DropBlock(id string, idx int) error {
	st, err := s.state(id)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return s.dropLocked(st, idx)
}

// dropLocked removes a block; a complete task becomes pending again. st.mu is held.
func (s *Store) dropLocked(st *taskState, idx int) error {
	id := st.task.ID
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(blockKey(id, idx)) }); err != nil {
		return fmt.Errorf("drop block %d of task %s: %w", idx, id, err)
	}
	st.bitmap.Clear(idx)
	st.checked.Clear(idx)
	st.gen[idx]++
	if st.task.State == StateComplete {
		st.task.State, st.task.Verified = StatePending, false
		return s.writeTask(st.task)
	}
	return nil
}

// ReadAt reads len(p) bytes at off from the task's blocks. Every block read is
// verified. It fails with ErrNotFound if a needed block is missing.
func (s *Store) ReadAt(id string, p []byte, off int64) (int, error) {
	t, err := s.Task(id)
	if err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("read task %s at %d: %w", id, off, ErrInvalid)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= t.Length {
			return n, io.EOF
		}
		idx := int(pos / t.BlockSize)
		blk, err := s.ReadBlock(id, idx)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], blk[pos-int64(idx)*t.BlockSize:])
	}
	return n, nil
}

// WriteTo streams the task's whole content, verified block by block, to w.
func (s *Store) WriteTo(ctx context.Context, id string, w io.Writer) (int64, error) {
	return s.writeTo(ctx, id, w, true)
}

func (s *Store) writeTo(ctx context.Context, id string, w io.Writer, verify bool) (int64, error) {
	var written int64
	err := s.streamBlocks(ctx, id, verify, func(_ int, blk []byte) error {
		m, err := w.Write(blk)
		written += int64(m)
		return err
	})
	return written, err
}

// readAhead is how many blocks streamBlocks reads ahead of its consumer.
const readAhead = 2

// ForEachBlock hands every block of the task, verified, in order, to fn
// (see streamBlocks); blk is valid only during the call.
func (s *Store) ForEachBlock(ctx context.Context, id string, fn func(idx int, blk []byte) error) error {
	return s.streamBlocks(ctx, id, true, fn)
}

// streamBlocks hands every block of the task, in order, to fn. A reader
// goroutine (owned by this call, which waits for it) reads ahead, so that
// reading the store overlaps with what fn does (hashing, writing an
// output); a block's buffer is reused only after fn returned.
func (s *Store) streamBlocks(ctx context.Context, id string, verify bool, fn func(idx int, blk []byte) error) error {
	return s.streamBlocksFrom(ctx, id, 0, verify, fn)
}

// streamBlocksFrom is streamBlocks starting at block from.
func (s *Store) streamBlocksFrom(ctx context.Context, id string, from int, verify bool, fn func(idx int, blk []byte) error) error {
	t, err := s.Task(id)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	type read struct {
		idx int
		blk []byte
		err error
	}
	blocks := make(chan read, readAhead)
	free := make(chan []byte, readAhead+1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(blocks)
		for idx := from; idx < t.NumBlocks(); idx++ {
			var buf []byte
			select {
			case buf = <-free:
			default:
			}
			r := read{idx: idx, err: ctx.Err()}
			if r.err == nil {
				r.blk, r.err = s.readBlock(id, idx, buf, verify)
			}
			select {
			case blocks <- r:
			case <-ctx.Done():
				return
			}
			if r.err != nil {
				return
			}
		}
	}()
	defer func() { cancel(); wg.Wait() }() // a reader blocked on a full channel leaves on cancel
	for r := range blocks {
		if r.err != nil {
			return r.err
		}
		if err := fn(r.idx, r.blk); err != nil {
			return err
		}
		select {
		case free <- r.blk[:0]:
		default:
		}
	}
	return ctx.Err()
}

// Scrub reads and re-hashes every present block of the task (even those
// checked before), dropping the ones that fail (they will be fetched again).
// It returns how many it dropped.
func (s *Store) Scrub(ctx context.Context, id string) (int, error) {
	t, err := s.Task(id)
	if err != nil {
		return 0, err
	}
	dropped := 0
	var buf []byte
	for idx := 0; idx < t.NumBlocks(); idx++ {
		if err := ctx.Err(); err != nil {
			return dropped, err
		}
		if !s.HasBlock(id, idx) {
			continue
		}
		s.uncheck(id, idx)
		blk, err := s.readBlock(id, idx, buf, true)
		switch {
		case errors.Is(err, ErrCorrupt):
			dropped++
		case err != nil && !errors.Is(err, ErrNotFound):
			return dropped, err
		case err == nil:
			buf = blk[:0]
		}
	}
	return dropped, nil
}

// VerifyAndComplete checks the whole content against the task's digest and
// marks the task complete, streaming the content to w (if not nil) in the
// same pass. Without a declared digest it records the SHA-256 it computed
// (Verified stays false: only the per-block digests were checked). It returns
// ErrIncomplete when blocks are missing and ErrDigestMismatch (the task stays
// pending) when the content does not match. When a whole-content digest is
// checked, blocks are not re-hashed one by one (the whole digest covers them);
// after a mismatch, Scrub tells a corrupt block from wrong content.
func (s *Store) VerifyAndComplete(ctx context.Context, id string, w io.Writer) (Task, error) {
	var emit func(int, []byte) error
	if w != nil {
		emit = func(_ int, blk []byte) error {
			_, err := w.Write(blk)
			return err
		}
	}
	return s.VerifyAndCompleteFunc(ctx, id, emit)
}

// VerifyAndCompleteFunc is VerifyAndComplete handing each block, in order,
// to emit (if not nil) instead of a writer; emit runs while the block is
// hashed and must only read blk, which is valid during the call.
func (s *Store) VerifyAndCompleteFunc(ctx context.Context, id string, emit func(idx int, blk []byte) error) (Task, error) {
	c, err := s.NewContentHash(id)
	if err != nil {
		return Task{}, err
	}
	return s.CompleteHash(ctx, c, emit)
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	sts := make([]*taskState, 0, len(s.tasks))
	for _, st := range s.tasks {
		sts = append(sts, st)
	}
	s.mu.Unlock()
	out := Stats{Tasks: len(sts), Quota: s.opt.Quota}
	for _, st := range sts {
		st.mu.Lock()
		out.Committed += st.task.Length
		if st.task.BlockSize > 0 {
			for i := range st.digests {
				if st.bitmap.Has(i) {
					out.Stored += st.task.BlockLen(i)
				}
			}
		}
		st.mu.Unlock()
	}
	out.BlocksWritten = s.blocksWritten.Load()
	out.BytesWritten = s.bytesWritten.Load()
	out.BytesRead = s.bytesRead.Load()
	out.Corrupt = s.corrupt.Load()
	out.Rejected = s.rejected.Load()
	out.Evicted = s.evicted.Load()
	return out
}

// DiskUsage returns the bytes the store's files occupy on disk (allocated
// blocks: the data files are sparse).
func (s *Store) DiskUsage() int64 {
	var total int64
	filepath.WalkDir(s.dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					total += st.Blocks * 512
				} else {
					total += fi.Size()
				}
			}
		}
		return nil
	})
	return total
}

// CollectGarbage runs Badger's value-log GC until nothing more is reclaimed,
// so that deleted tasks free disk space.
func (s *Store) CollectGarbage() {
	for range 64 {
		if err := s.db.RunValueLogGC(0.3); err != nil {
			return
		}
	}
}

func (s *Store) gcLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.opt.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.CollectGarbage()
			s.flushAccess()
		}
	}
}

// flushAccess persists access times that moved by more than a minute.
func (s *Store) flushAccess() {
	s.mu.Lock()
	sts := make([]*taskState, 0, len(s.tasks))
	for _, st := range s.tasks {
		sts = append(sts, st)
	}
	s.mu.Unlock()
	for _, st := range sts {
		st.mu.Lock()
		if st.access.Sub(st.task.AccessedAt) > time.Minute {
			st.task.AccessedAt = st.access
			if err := s.writeTask(st.task); err != nil {
				s.log.Warn("persist access time", "task", st.task.ID, "err", err)
			}
		}
		st.mu.Unlock()
	}
}

func statfsFree(dir string) (free, total int64, err error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, 0, err
	}
	return int64(fs.Bavail) * int64(fs.Bsize), int64(fs.Blocks) * int64(fs.Bsize), nil
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// badgerLogger routes Badger's logs to slog, demoting its chatter.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Infof(f string, a ...any) {
	b.l.Debug("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Debugf(f string, a ...any) {}
