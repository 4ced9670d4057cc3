// Package blockstore keeps the blocks of tasks on one host: metadata in
// Badger, block bytes in one sparse data file per task.
//
// Layout (DIR is the store directory):
//
//	DIR/*.sst, *.vlog, ...  Badger: the keys below
//	  t/<id>              JSON Task metadata
//	  d/<id>/<idx:4>      32-byte SHA-256 of block idx (known before or after the block)
//	  b/<id>/<idx:4>      block idx is present; empty, or for a sealed task its
//	                      seal record (version, 12-byte GCM nonce, 16-byte tag)
//	  k/check             with Options.Key: key fingerprint + a known value
//	                      sealed with the key (a wrong key is refused at Open)
//	DIR/data/<id>.blocks   the task's bytes, block idx at offset idx*BlockSize
//	                      (for a sealed task: AES-256-GCM ciphertext, same length)
//
//	  x/<id>              empty: task id is being deleted (its data file is an orphan)
//	DIR/quarantine/        data files found without a task, kept for the operator
//
// A block is present exactly when its b/ key exists, and that key is
// committed only after the block's bytes were written to the data file, so
// a crash can never expose a block that was not written. Every block is
// checked against its digest before it is stored and again the first time
// this process reads it (so bytes torn by a power loss are caught and
// refetched), and again whenever its data file changed behind the store's
// back (see datafile.go). The store never deletes a data file its index
// does not account for: a store whose index is gone refuses to open, and a
// stray data file is moved to DIR/quarantine (see index.go). Keeping the bytes out of Badger's value log costs one pwrite
// per block instead of a copy into a memory-mapped log, frees a deleted
// task's disk at once, and lets upload servers send blocks with sendfile(2)
// (OpenBlock). Stores written by older versions, with the bytes inside
// Badger, are migrated on Open.
//
// Encryption at rest (Options.Key, see seal.go): every task a store with a
// key creates is sealed, its blocks encrypted with AES-256-GCM bound to the
// task and index, authenticated on every read (a block that fails is
// dropped like a corrupt one) and sent decrypted from memory, not with
// sendfile. A wrong or missing key makes Open fail before anything changes.
package blockstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	// MaxOpenFiles is how many tasks' data files are kept open at most
	// (default 256): each holds one file descriptor, two with DirectIO. An
	// idle one beyond that is closed (the least recently used first) and
	// opened again on its next use; more are open only while more tasks
	// than that are read or written at the same moment.
	MaxOpenFiles int
	// Key, when set (KeySize bytes), encrypts the store at rest with
	// AES-256-GCM: every task created from then on is sealed (Task.Sealed),
	// its blocks encrypted in the data files and authenticated on every
	// read (see seal.go; LoadKey reads a key from a file or DFLY_STORE_KEY).
	// A store once opened with a key refuses to open without it
	// (ErrKeyRequired) or with another (ErrWrongKey), changing nothing.
	Key []byte
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
	// ForeignChanges counts data files found changed behind the store's
	// back (their blocks were hashed again on their next read).
	ForeignChanges int64 `json:"foreign_changes"`
	// OpenDataFiles is how many tasks' data files are open now.
	OpenDataFiles int `json:"open_data_files"`
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
	// files keeps the most recently used data files open.
	files fileCache
	// seal encrypts sealed tasks' blocks (nil: the store has no key);
	// sealBufs pools its ciphertext buffers (*[]byte).
	seal     *sealer
	sealBufs sync.Pool

	bytesWritten  atomic.Int64
	blocksWritten atomic.Int64
	bytesRead     atomic.Int64
	corrupt       atomic.Int64
	rejected      atomic.Int64
	evicted       atomic.Int64
	foreign       atomic.Int64

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
	// read back verified) since the data file last changed behind the
	// store's back. They are not hashed again on every read: serving a
	// block to many peers would otherwise hash it once per upload, and each
	// receiver verifies it anyway. Blocks found on disk at Open are checked
	// on their first read. See datafile.go.
	checked Bitmap
	// gen counts writes and drops of each block, so that a read that found
	// a block corrupt drops it only if nobody stored a good copy since, and
	// a read that overlapped a drop and rewrite is not believed.
	gen []uint32
	// digestChanges counts digests replaced by SetBlockDigest: a content
	// hash that read a block before its digest changed must start over.
	digestChanges uint64
	// stamp is the data file's stamp after the store's own last write
	// (zero: not known yet); epoch counts the changes made behind the
	// store's back (each cleared checked); writing is set while a write of
	// the store is in flight, and wseq counts those writes. See datafile.go.
	stamp   stamp
	epoch   uint64
	writing bool
	wseq    uint64
	// slot is the task's place in the cache of open data files (guarded by
	// the cache's lock); deleted is set by DeleteTask (a write racing it
	// must not resurrect the task).
	slot    fileSlot
	deleted bool
	// wmu serialises block writes of the task, so that a stale write can
	// never overwrite a block another writer already committed.
	wmu sync.Mutex
	// seals are the seal records of a sealed task's present blocks (nil
	// for a plain task); see seal.go.
	seals []sealRec
}

func newTaskState(t Task, access time.Time) *taskState {
	n := t.NumBlocks()
	st := &taskState{task: t, bitmap: NewBitmap(n), checked: NewBitmap(n), gen: make([]uint32, n), digests: make([][]byte, n), access: access}
	if t.Sealed {
		st.seals = make([]sealRec, n)
	}
	return st
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
	if opt.MaxOpenFiles <= 0 {
		opt.MaxOpenFiles = defaultMaxOpenFiles
	}
	var seal *sealer
	if opt.Key != nil {
		var err error
		if seal, err = newSealer(opt.Key); err != nil {
			return nil, fmt.Errorf("open block store %s: %w", dir, err)
		}
	}
	if err := checkIndex(dir); err != nil {
		return nil, err
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
	s := &Store{db: db, dir: dir, opt: opt, log: opt.Logger, tasks: map[string]*taskState{}, stop: make(chan struct{}), seal: seal}
	s.files.max = opt.MaxOpenFiles
	legacy, err := s.loadAll()
	if err == nil { // before anything is changed: a wrong key must cost nothing
		err = s.checkKey()
	}
	if err == nil {
		err = s.migrate(legacy)
	}
	if err == nil {
		err = s.demoteIncomplete()
	}
	if err == nil {
		err = s.settleOrphans()
	}
	if err != nil {
		s.files.closeAll()
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
	s.files.closeAll()
	return s.db.Close()
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
	if err := s.db.Update(func(txn *badger.Txn) error { return setTask(txn, t) }); err != nil {
		return fmt.Errorf("write metadata of task %s: %w", t.ID, err)
	}
	return nil
}

// setTask writes t's metadata in txn.
func setTask(txn *badger.Txn, t Task) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return txn.Set(taskKey(t.ID), b)
}

// demoted is t made pending (and not verified), as it must be once a block
// of it is dropped; ok is false when t was not complete.
func demoted(t Task) (_ Task, ok bool) {
	if t.State != StateComplete {
		return t, false
	}
	t.State, t.Verified = StatePending, false
	return t, true
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
	if t.NumBlocks() > MaxBlocks {
		return Task{}, fmt.Errorf("task %s: %d bytes in blocks of %d is more than %d blocks: %w", t.ID, t.Length, t.BlockSize, MaxBlocks, ErrInvalid)
	}
	if t.Digest != "" {
		if _, _, err := ParseDigest(t.Digest); err != nil {
			return Task{}, err
		}
	}
	if t.Sealed && s.seal == nil {
		return Task{}, fmt.Errorf("task %s: asked to be encrypted at rest but the store has no key; open it with a store key (--store-key-file): %w", t.ID, ErrInvalid)
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
	t.Sealed = s.seal != nil // with a key, every new task is encrypted

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
// length or block size are rejected. fn may make a task pending, never
// complete: a task becomes complete only through VerifyAndComplete (or
// CompleteHash), which checks its content. (Verified may be set on a
// complete task whose recorded digest the caller learnt was declared.)
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
	if t.ID != st.task.ID || t.Length != st.task.Length || t.BlockSize != st.task.BlockSize || t.Sealed != st.task.Sealed ||
		t.E2E != st.task.E2E || t.E2EKeyID != st.task.E2EKeyID || t.E2ESalt != st.task.E2ESalt {
		return Task{}, fmt.Errorf("task %s: identity, length, block size and encryption cannot change: %w", id, ErrInvalid)
	}
	if st.task.Private && !t.Private {
		// Content fetched with credentials stays behind the origin's check
		// for as long as it is stored; only deleting the task ends that.
		return Task{}, fmt.Errorf("task %s: a private task cannot become public; delete it instead: %w", id, ErrInvalid)
	}
	if t.State == StateComplete && st.task.State != StateComplete || t.Verified && t.State != StateComplete {
		return Task{}, fmt.Errorf("task %s: UpdateTask cannot complete a task; VerifyAndComplete does, after checking its content: %w", id, ErrInvalid)
	}
	if t.State != StateComplete && t.State != StatePending {
		return Task{}, fmt.Errorf("task %s: state %q: want %q or %q: %w", id, t.State, StatePending, StateComplete, ErrInvalid)
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
	s.files.forget(&st.slot)
	if err := s.dropTask(id); err != nil {
		return fmt.Errorf("delete task %s: %w", id, err)
	}
	s.log.Debug("task deleted", "task", id)
	return nil
}

// dropTask removes task id's keys and data file. The task's metadata goes
// first, in the transaction that sets its tombstone: a crash before the
// file is removed leaves a tombstoned orphan (removed on the next Open),
// never a task whose bytes are gone, nor a data file the index cannot tell
// from one whose index was lost. (Only the exact t/ key goes: a prefix
// would take the tasks whose IDs extend this one with it.)
func (s *Store) dropTask(id string) error {
	err := s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(tombKey(id), nil); err != nil {
			return err
		}
		return txn.Delete(taskKey(id))
	})
	if err != nil {
		return fmt.Errorf("drop metadata: %w", err)
	}
	if err := s.db.DropPrefix([]byte("b/"+id+"/"), []byte("d/"+id+"/")); err != nil {
		return fmt.Errorf("drop block keys: %w", err)
	}
	if err := os.Remove(s.dataPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove its data file (the next Open retries): %w", err)
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(tombKey(id)) }); err != nil {
		return fmt.Errorf("drop tombstone: %w", err)
	}
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
	out.ForeignChanges = s.foreign.Load()
	out.OpenDataFiles = s.files.open()
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
