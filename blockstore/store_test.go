package blockstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/dfly-p2p/dfly/internal/directio"
)

var ctx = context.Background()

func openT(t *testing.T, dir string, o Options) *Store {
	t.Helper()
	if o.GCInterval == 0 {
		o.GCInterval = -1
	}
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func randBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	_, _ = r.Read(b)
	return b
}

// content returns a task with small blocks and its content.
func content(id string, length int) (Task, []byte) {
	data := randBytes(length, uint64(length))
	sum := sha256.Sum256(data)
	return Task{ID: id, Length: int64(length), BlockSize: 1 << 12, Digest: "sha256:" + hex.EncodeToString(sum[:])}, data
}

func putAll(t *testing.T, s *Store, task Task, data []byte) {
	t.Helper()
	for i := 0; i < task.NumBlocks(); i++ {
		off := int64(i) * task.BlockSize
		if err := s.PutBlock(ctx, task.ID, i, data[off:off+task.BlockLen(i)]); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRoundTripAndReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	task, data := content("t1", 3*4096+100)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	// Put only two of four blocks, then "crash" (close) and reopen.
	for _, i := range []int{0, 3} {
		off := int64(i) * task.BlockSize
		if err := s.PutBlock(ctx, "t1", i, data[off:off+task.BlockLen(i)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir, Options{})
	got, err := s.Task("t1")
	if err != nil || got.Length != task.Length || got.State != StatePending {
		t.Fatalf("reopened task: %+v %v", got, err)
	}
	if m, _ := s.Missing("t1"); len(m) != 2 || m[0] != 1 || m[1] != 2 {
		t.Fatalf("missing after reopen = %v", m)
	}
	if _, err := s.VerifyAndComplete(ctx, "t1", nil); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("verify incomplete: %v", err)
	}
	putAll(t, s, task, data)
	buf := make([]byte, 5000)
	if n, err := s.ReadAt("t1", buf, 4000); err != nil || n != 5000 || !bytes.Equal(buf, data[4000:9000]) {
		t.Fatalf("ReadAt: %d %v", n, err)
	}
	if n, err := s.ReadAt("t1", buf, int64(len(data))-10); n != 10 || err != io.EOF {
		t.Fatalf("ReadAt at end: %d %v", n, err)
	}
	var streamed bytes.Buffer
	done, err := s.VerifyAndComplete(ctx, "t1", &streamed)
	if err != nil || done.State != StateComplete || !done.Verified {
		t.Fatalf("complete: %+v %v", done, err)
	}
	if !bytes.Equal(streamed.Bytes(), data) {
		t.Fatal("VerifyAndComplete streamed different bytes")
	}
	var out bytes.Buffer
	if _, err := s.WriteTo(ctx, "t1", &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("WriteTo: %v", err)
	}
	// CreateTask of an existing task returns it (resume); a different length is refused.
	if again, err := s.CreateTask(ctx, task); err != nil || again.State != StateComplete {
		t.Fatalf("recreate: %+v %v", again, err)
	}
	bad := task
	bad.Length++
	if _, err := s.CreateTask(ctx, bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("conflicting create: %v", err)
	}
}

func TestPutBlockRejectsBadData(t *testing.T) {
	s := openT(t, t.TempDir(), Options{})
	task, data := content("t", 2*4096)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	good := sha256.Sum256(data[:4096])
	if err := s.SetBlockDigest("t", 0, good[:]); err != nil {
		t.Fatal(err)
	}
	wrong := bytes.Clone(data[:4096])
	wrong[7] ^= 1
	if err := s.PutBlock(ctx, "t", 0, wrong); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("wrong block accepted: %v", err)
	}
	if err := s.PutBlock(ctx, "t", 0, data[:100]); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("short block accepted: %v", err)
	}
	if err := s.PutBlock(ctx, "t", 5, data[:4096]); !errors.Is(err, ErrInvalid) {
		t.Fatalf("out of range: %v", err)
	}
	if s.HasBlock("t", 0) || s.Stats().Rejected != 2 {
		t.Fatalf("rejected blocks must not be stored; stats %+v", s.Stats())
	}
	if err := s.PutBlock(ctx, "t", 0, data[:4096]); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBlock(ctx, "nope", 0, data[:4096]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown task: %v", err)
	}
	// Whole-content digest mismatch keeps the task pending.
	if _, err := s.UpdateTask("t", func(m *Task) error { m.Digest = "sha256:" + hex.EncodeToString(good[:]); return nil }); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	if _, err := s.VerifyAndComplete(ctx, "t", nil); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("whole digest mismatch: %v", err)
	}
	if got, _ := s.Task("t"); got.State != StatePending {
		t.Fatalf("state after mismatch = %s", got.State)
	}
}

// TestCorruptBlockOnDisk flips a byte of a block inside its data file and
// checks that the read fails with ErrCorrupt and the block is dropped.
func TestCorruptBlockOnDisk(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	task, data := content("c", 4*4096)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	if _, err := s.VerifyAndComplete(ctx, "c", nil); err != nil {
		t.Fatal(err)
	}
	s.Close()

	needle := data[2*4096+100 : 2*4096+164] // inside block 2
	corrupted := false
	files, _ := filepath.Glob(filepath.Join(dir, "data", "*"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if i := bytes.Index(b, needle); i >= 0 {
			b[i+10] ^= 0xff
			if err := os.WriteFile(f, b, 0o644); err != nil {
				t.Fatal(err)
			}
			corrupted = true
		}
	}
	if !corrupted {
		t.Fatal("could not find the block in the data files to corrupt it")
	}
	s = openT(t, dir, Options{})
	if _, err := s.ReadBlock("c", 1); err != nil {
		t.Fatalf("intact block: %v", err)
	}
	if _, err := s.ReadBlock("c", 2); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupt block read: %v", err)
	}
	if s.HasBlock("c", 2) {
		t.Fatal("corrupt block still marked present")
	}
	if got, _ := s.Task("c"); got.State != StatePending {
		t.Fatalf("task with a dropped block is %s, want pending", got.State)
	}
	if _, err := s.WriteTo(ctx, "c", io.Discard); !errors.Is(err, ErrNotFound) {
		t.Fatalf("WriteTo over a missing block: %v", err)
	}
	// Every damaged block must be reported corrupt or missing, never
	// returned wrong. Refetch (put the right data again) whatever is missing
	// until the task verifies.
	for attempt := 0; ; attempt++ {
		missing, _ := s.Missing("c")
		for _, i := range missing {
			off := int64(i) * task.BlockSize
			if err := s.PutBlock(ctx, "c", i, data[off:off+task.BlockLen(i)]); err != nil {
				t.Fatal(err)
			}
		}
		_, err := s.VerifyAndComplete(ctx, "c", nil)
		if err == nil {
			break
		}
		if !(errors.Is(err, ErrCorrupt) || errors.Is(err, ErrDigestMismatch)) || attempt > 4 {
			t.Fatalf("verify after refetch: %v", err)
		}
		if _, err := s.Scrub(ctx, "c"); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	if _, err := s.WriteTo(ctx, "c", &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("content after repair differs: %v", err)
	}
	if s.Stats().Corrupt < 1 {
		t.Fatalf("corrupt counter = %d", s.Stats().Corrupt)
	}
}

func TestQuotaEvictsLRUCompleteUnpinned(t *testing.T) {
	s := openT(t, t.TempDir(), Options{Quota: 10 * 4096})
	mk := func(id string, blocks int) (Task, []byte) { return content(id, blocks*4096) }
	a, da := mk("a", 4)
	b, db := mk("b", 4)
	for _, p := range []struct {
		t Task
		d []byte
	}{{a, da}, {b, db}} {
		if _, err := s.CreateTask(ctx, p.t); err != nil {
			t.Fatal(err)
		}
		putAll(t, s, p.t, p.d)
		if _, err := s.VerifyAndComplete(ctx, p.t.ID, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.ReadBlock("a", 0); err != nil { // a is now most recently used
		t.Fatal(err)
	}
	c, _ := mk("c", 4)
	if _, err := s.CreateTask(ctx, c); err != nil {
		t.Fatalf("create c with eviction: %v", err)
	}
	if _, err := s.Task("b"); !errors.Is(err, ErrNotFound) {
		t.Fatal("LRU task b was not evicted")
	}
	if _, err := s.Task("a"); err != nil {
		t.Fatal("recently used task a was evicted")
	}
	if err := s.Pin("a", true); err != nil {
		t.Fatal(err)
	}
	d, _ := mk("d", 4)
	if _, err := s.CreateTask(ctx, d); !errors.Is(err, ErrQuota) {
		t.Fatalf("pinned + pending tasks hold the quota; want ErrQuota, got %v", err)
	}
	huge, _ := mk("huge", 11)
	if _, err := s.CreateTask(ctx, huge); !errors.Is(err, ErrQuota) {
		t.Fatalf("task larger than quota: %v", err)
	}
	if s.Stats().Evicted != 1 {
		t.Fatalf("evicted = %d", s.Stats().Evicted)
	}
}

func TestFreeSpaceCheck(t *testing.T) {
	free := int64(100 << 20)
	s := openT(t, t.TempDir(), Options{MinFree: 10 << 20, FreeSpace: func(string) (int64, int64, error) { return free, 1 << 40, nil }})
	if _, err := s.CreateTask(ctx, Task{ID: "big", Length: 95 << 20}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("want ErrNoSpace, got %v", err)
	}
	if _, err := s.Task("big"); !errors.Is(err, ErrNotFound) {
		t.Fatal("refused task was created")
	}
	if _, err := s.CreateTask(ctx, Task{ID: "ok", Length: 80 << 20}); err != nil {
		t.Fatal(err)
	}
	// On a small filesystem the reserve shrinks to a tenth of its size.
	small := openT(t, t.TempDir(), Options{FreeSpace: func(string) (int64, int64, error) { return 40 << 20, 50 << 20, nil }})
	if _, err := small.CreateTask(ctx, Task{ID: "fits", Length: 30 << 20}); err != nil {
		t.Fatalf("small filesystem: %v", err)
	}
	if _, err := small.CreateTask(ctx, Task{ID: "nope", Length: 36 << 20}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("small filesystem, too big: %v", err)
	}
}

func TestDeleteFreesDiskAtOnce(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	data := randBytes(1<<20, 9)
	task := Task{ID: "g", Length: 64 << 20, BlockSize: 1 << 20}
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	before := s.DiskUsage()
	for i := range 64 {
		blk := bytes.Clone(data)
		blk[0] = byte(i)
		if err := s.PutBlock(ctx, "g", i, blk); err != nil {
			t.Fatal(err)
		}
	}
	full := s.DiskUsage()
	if err := s.DeleteTask("g"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTask("g"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("double delete: %v", err)
	}
	after := s.DiskUsage()
	t.Logf("disk usage: empty %d MiB, with the task %d MiB, after delete %d MiB", before>>20, full>>20, after>>20)
	if full-before < 60<<20 || after > before+(4<<20) {
		t.Fatalf("delete did not free the task's space: empty %d, full %d, after %d", before, full, after)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "g.blocks")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("data file still there after delete: %v", err)
	}
	s.CollectGarbage() // metadata only; must not fail on an empty store
}

// TestOrphanDataFileRemovedOnOpen: a data file no task accounts for, and
// no interrupted deletion explains, is moved to the quarantine on the next
// Open (never deleted: the index may have lost its task); a task's file is
// kept.
func TestOrphanDataFileRemovedOnOpen(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{GCInterval: -1})
	task, data := content("keep", 3*4096)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	s.Close()
	orphan := filepath.Join(dir, "data", "gone.blocks")
	if err := os.WriteFile(orphan, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir, Options{GCInterval: -1})
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphan data file kept: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "quarantine", "gone.blocks")); err != nil || string(b) != "stale" {
		t.Fatalf("orphan data file not in the quarantine: %q %v", b, err)
	}
	var out bytes.Buffer
	if _, err := s.WriteTo(ctx, "keep", &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("kept task after reopen: %v", err)
	}
}

// TestMigrateLegacyStore opens a store written the old way (block bytes as
// Badger values) and finds every block, now in its data file.
func TestMigrateLegacyStore(t *testing.T) {
	dir := t.TempDir()
	task, data := content("old", 3*4096+100)
	task.BlockSize = 4096
	task.State = StatePending
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithValueThreshold(1 << 10))
	if err != nil {
		t.Fatal(err)
	}
	meta, _ := json.Marshal(task)
	err = db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(taskKey("old"), meta); err != nil {
			return err
		}
		for i := range task.NumBlocks() {
			off := int64(i) * task.BlockSize
			blk := data[off : off+task.BlockLen(i)]
			sum := sha256.Sum256(blk)
			if err := txn.Set(digestKey("old", i), sum[:]); err != nil {
				return err
			}
			if err := txn.Set(blockKey("old", i), blk); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	s := openT(t, dir, Options{GCInterval: -1})
	if got, _ := s.Missing("old"); len(got) != 0 {
		t.Fatalf("missing after migration: %v", got)
	}
	var out bytes.Buffer
	if _, err := s.WriteTo(ctx, "old", &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("content after migration: %v", err)
	}
	s.Close()
	// The values are gone from Badger: a second open migrates nothing and
	// still reads everything from the data file.
	s = openT(t, dir, Options{GCInterval: -1})
	legacy := 0
	s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("b/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if it.Item().ValueSize() > 0 {
				legacy++
			}
		}
		return nil
	})
	if legacy != 0 {
		t.Fatalf("%d block values left in Badger after migration", legacy)
	}
	if _, err := s.VerifyAndComplete(ctx, "old", nil); err != nil {
		t.Fatal(err)
	}
}

// TestOpenBlock: the handle is positioned at the block and its bytes are
// right; an unverified corrupt block is refused and dropped; a missing one
// is ErrNotFound.
func TestOpenBlock(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{GCInterval: -1})
	task, data := content("o", 3*4096+7)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.OpenBlock("o", 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open of a missing block: %v", err)
	}
	putAll(t, s, task, data)
	checkOpenBlocks(t, s, task, data)
	s.Close()
	// Damage block 2 on disk; after a restart nothing is verified yet.
	path := filepath.Join(dir, "data", "o.blocks")
	b, _ := os.ReadFile(path)
	b[2*4096+5] ^= 1
	os.WriteFile(path, b, 0o644)
	s = openT(t, dir, Options{GCInterval: -1})
	if _, _, err := s.OpenBlock("o", 2); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open of a corrupt block: %v", err)
	}
	if s.HasBlock("o", 2) {
		t.Fatal("corrupt block still present")
	}
	if f, _, err := s.OpenBlock("o", 1); err != nil {
		t.Fatalf("intact block: %v", err)
	} else {
		f.Close()
	}
}

// TestDiskFilledByOthersIsErrNoSpace: a task is accepted, then another
// program fills the (real, tmpfs, root only) filesystem. Block writes fail
// with ErrNoSpace before the disk is completely full (Badger keeps room for
// its metadata), the failed block is not present, and the blocks stored
// before stay readable.
func TestDiskFilledByOthersIsErrNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=48m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	store := filepath.Join(dir, "store")
	s := openT(t, store, Options{GCInterval: -1})
	task := Task{ID: "big", Length: 16 << 20, BlockSize: 1 << 20}
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	data := randBytes(1<<20, 3)
	for i := range 4 {
		blk := bytes.Clone(data)
		blk[0] = byte(i)
		if err := s.PutBlock(ctx, "big", i, blk); err != nil {
			t.Fatal(err)
		}
	}
	// Another program takes everything but 3 MiB.
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	filler := make([]byte, int64(fs.Bavail)*int64(fs.Bsize)-3<<20)
	if err := os.WriteFile(filepath.Join(dir, "filler"), filler, 0o644); err != nil {
		t.Fatal(err)
	}
	var err error
	stored := 4
	for i := 4; i < 16; i++ {
		blk := bytes.Clone(data)
		blk[0] = byte(i)
		if err = s.PutBlock(ctx, "big", i, blk); err != nil {
			break
		}
		stored++
	}
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write into a full filesystem: %v, want ErrNoSpace", err)
	}
	t.Logf("stored %d blocks, then: %v", stored, err)
	if s.HasBlock("big", stored) {
		t.Fatalf("the block that failed (%d) is marked present", stored)
	}
	for i := range stored {
		if _, err := s.ReadBlock("big", i); err != nil {
			t.Fatalf("block %d stored before the disk filled: %v", i, err)
		}
	}
	// Space freed: writing resumes.
	os.Remove(filepath.Join(dir, "filler"))
	blk := bytes.Clone(data)
	blk[0] = byte(stored)
	if err := s.PutBlock(ctx, "big", stored, blk); err != nil {
		t.Fatalf("write after space was freed: %v", err)
	}
}

func TestInvalidArguments(t *testing.T) {
	s := openT(t, t.TempDir(), Options{})
	for _, task := range []Task{{ID: ""}, {ID: "a/b"}, {ID: "x", Length: -1}, {ID: "x", Length: 1, BlockSize: 3}, {ID: "x", Length: 1, Digest: "sha1:00"}} {
		if _, err := s.CreateTask(ctx, task); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateTask(%+v) = %v, want ErrInvalid", task, err)
		}
	}
	if _, err := s.CreateTask(ctx, Task{ID: "x", Length: 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateTask("x", func(m *Task) error { m.Length = 11; return nil }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("length change: %v", err)
	}
	if err := s.SetBlockDigest("x", 0, []byte{1}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("short digest: %v", err)
	}
	if len(s.List()) != 1 {
		t.Fatal("List")
	}
	s.Close()
	if _, err := s.Task("x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed store: %v", err)
	}
}

func TestSecondOpenFailsClearly(t *testing.T) {
	dir := t.TempDir()
	openT(t, dir, Options{})
	if _, err := Open(dir, Options{GCInterval: -1}); err == nil || !bytes.Contains([]byte(err.Error()), []byte("in use by another process")) {
		t.Fatalf("second open: %v", err)
	}
}

func TestScrubDropsEveryCorruptBlock(t *testing.T) {
	s := openT(t, t.TempDir(), Options{})
	task, data := content("s", 4*4096)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	// Make blocks 1 and 3 disagree with their digests, as rot on disk would.
	for _, i := range []int{1, 3} {
		bad := sha256.Sum256([]byte{byte(i)})
		s.mu.Lock()
		st := s.tasks["s"]
		s.mu.Unlock()
		st.mu.Lock()
		st.digests[i] = bad[:]
		st.mu.Unlock()
	}
	n, err := s.Scrub(ctx, "s")
	if err != nil || n != 2 {
		t.Fatalf("Scrub = %d, %v; want 2", n, err)
	}
	if m, _ := s.Missing("s"); len(m) != 2 || m[0] != 1 || m[1] != 3 {
		t.Fatalf("missing after scrub = %v", m)
	}
}

// undeclaredTask creates task id of length bytes (see content) without a
// declared digest and stores all its blocks; it returns the digest the
// content has.
func undeclaredTask(t *testing.T, s *Store, id string, length int) (digest string, data []byte) {
	t.Helper()
	task, data := content(id, length)
	digest = task.Digest
	task.Digest = ""
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	return digest, data
}

func TestCompleteWithoutDeclaredDigest(t *testing.T) {
	s := openT(t, t.TempDir(), Options{})
	want, _ := undeclaredTask(t, s, "nd", 3*4096)
	got, err := s.VerifyAndComplete(ctx, "nd", nil)
	if err != nil || got.State != StateComplete || got.Verified || got.Digest != want {
		t.Fatalf("complete without digest: %+v %v (want digest %s recorded, not verified)", got, err, want)
	}
	// Declaring a different digest on a complete task makes it pending again.
	other := "sha256:" + strings.Repeat("1", 64)
	if upd, err := s.UpdateTask("nd", func(m *Task) error { m.Digest = other; return nil }); err != nil || upd.State != StatePending {
		t.Fatalf("new digest on complete task: %+v %v", upd, err)
	}
}

// TestDirectIO runs a task through a store with Options.DirectIO: whole
// aligned blocks go around the page cache, the short last block through it;
// reads (including OpenBlock's pooled buffers) return the right bytes, a
// byte damaged on disk is caught after a reopen, and a task of unaligned
// small blocks works too.
func TestDirectIO(t *testing.T) {
	dir := t.TempDir()
	opt := Options{GCInterval: -1, DirectIO: true}
	s := openT(t, dir, opt)
	const bs = 1 << 20
	data := randBytes(5*bs+12345, 11)
	sum := sha256.Sum256(data)
	task := Task{ID: "d", Length: int64(len(data)), BlockSize: bs, Digest: "sha256:" + hex.EncodeToString(sum[:])}
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	for i := range task.NumBlocks() {
		off := int64(i) * bs
		blk := directio.Buffer(task.BlockLen(i)) // as a network buffer would be: aligned
		copy(blk, data[off:])
		if err := s.PutBlock(ctx, "d", i, blk); err != nil {
			t.Fatal(err)
		}
	}
	if s.noDirect.Load() {
		t.Logf("the filesystem of %s refuses O_DIRECT: only the fallback was exercised", dir)
	}
	var out bytes.Buffer
	if _, err := s.VerifyAndComplete(ctx, "d", &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("verify: %v (equal %v)", err, bytes.Equal(out.Bytes(), data))
	}
	checkOpenBlocks(t, s, task, data)
	checkOpenBlocks(t, s, task, data) // again: reuses pooled buffers
	s.Close()

	path := filepath.Join(dir, "data", "d.blocks")
	b, _ := os.ReadFile(path)
	if !bytes.Equal(b, data) {
		t.Fatal("data file is not the content")
	}
	b[3*bs+77] ^= 0x10
	os.WriteFile(path, b, 0o644)
	s = openT(t, dir, opt)
	if n, err := s.Scrub(ctx, "d"); err != nil || n != 1 {
		t.Fatalf("scrub after damage: dropped %d, %v; want 1", n, err)
	}
	if s.HasBlock("d", 3) || !s.HasBlock("d", 4) {
		t.Fatal("scrub dropped the wrong blocks")
	}

	// Small blocks from unaligned slices take the page-cache path.
	small, sdata := content("s", 3*4096+100)
	if _, err := s.CreateTask(ctx, small); err != nil {
		t.Fatal(err)
	}
	for i := range small.NumBlocks() {
		off := int64(i)*small.BlockSize + 0
		blk := append([]byte{0}, sdata[off:off+small.BlockLen(i)]...)[1:] // unaligned
		if err := s.PutBlock(ctx, "s", i, blk); err != nil {
			t.Fatal(err)
		}
	}
	out.Reset()
	if _, err := s.VerifyAndComplete(ctx, "s", &out); err != nil || !bytes.Equal(out.Bytes(), sdata) {
		t.Fatalf("small blocks: %v", err)
	}

	// Blocks smaller than a page (offsets not page-aligned) go through the
	// page cache and must not switch direct I/O off for the whole store.
	directBefore := !s.noDirect.Load()
	tiny, tdata := content("tiny", 5*256+3)
	tiny.BlockSize = 256
	if _, err := s.CreateTask(ctx, tiny); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, tiny, tdata)
	out.Reset()
	if _, err := s.VerifyAndComplete(ctx, "tiny", &out); err != nil || !bytes.Equal(out.Bytes(), tdata) {
		t.Fatalf("256-byte blocks: %v", err)
	}
	if directBefore && s.noDirect.Load() {
		t.Fatal("reading 256-byte blocks switched direct I/O off for the store")
	}
}

// failingWriter fails once more than limit bytes were written to it.
type failingWriter struct{ n, limit int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.n+len(p) > f.limit {
		return 0, errors.New("disk on fire")
	}
	f.n += len(p)
	return len(p), nil
}

// TestStreamingStopsOnWriterError: the read-ahead pipeline of
// VerifyAndComplete and WriteTo returns the writer's error (and does not
// hang or complete the task) when the output fails half-way.
func TestStreamingStopsOnWriterError(t *testing.T) {
	s := openT(t, t.TempDir(), Options{GCInterval: -1})
	task, data := content("w", 40*4096)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	if _, err := s.VerifyAndComplete(ctx, "w", &failingWriter{limit: 5 * 4096}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("verify into a failing writer: %v", err)
	}
	if got, _ := s.Task("w"); got.State != StatePending {
		t.Fatalf("task completed although its output failed: %s", got.State)
	}
	if _, err := s.WriteTo(ctx, "w", &failingWriter{limit: 3*4096 + 1}); err == nil {
		t.Fatal("WriteTo into a failing writer succeeded")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.WriteTo(cctx, "w", io.Discard); !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteTo with a cancelled context: %v", err)
	}
	var out bytes.Buffer
	if _, err := s.VerifyAndComplete(ctx, "w", &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("verify afterwards: %v", err)
	}
}

// checkOpenBlocks reads every block of task through OpenBlock and compares
// it with data.
func checkOpenBlocks(t *testing.T, s *Store, task Task, data []byte) {
	t.Helper()
	for i := range task.NumBlocks() {
		rc, n, err := s.OpenBlock(task.ID, i)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(io.LimitReader(rc, n))
		rc.Close()
		off := int64(i) * task.BlockSize
		if err != nil || !bytes.Equal(got, data[off:off+task.BlockLen(i)]) {
			t.Fatalf("block %d through OpenBlock differs (%v)", i, err)
		}
	}
}
