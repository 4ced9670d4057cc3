package blockstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// completeTask creates task id of blocks 4-KiB blocks in s, stores and
// verifies it, and reads every block once (so this process has checked
// them all).
func completeTask(t *testing.T, s *Store, id string, blocks int) (Task, []byte) {
	t.Helper()
	task, data := content(id, blocks*4096)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	if got, err := s.VerifyAndComplete(ctx, id, nil); err != nil || got.State != StateComplete || !got.Verified {
		t.Fatalf("complete %s: %+v %v", id, got, err)
	}
	for i := range task.NumBlocks() {
		if _, err := s.ReadBlock(id, i); err != nil {
			t.Fatal(err)
		}
	}
	return task, data
}

// flipForeign changes one byte at off of the data file, as another program
// would, through its own file descriptor (the store's handles stay open).
// It first sleeps a little, so that even on a kernel whose file times have
// a coarse granularity the change gets a time of its own.
func flipForeign(t *testing.T, path string, off int64) {
	t.Helper()
	time.Sleep(20 * time.Millisecond)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestForeignChangeWhileRunning (issue #20): a byte flipped inside a
// complete task's data file while the store is open must never be returned:
// the block is re-hashed, dropped, the task turns pending and ErrCorrupt is
// returned; the blocks left intact stay readable, and the repaired task
// verifies again.
func TestForeignChangeWhileRunning(t *testing.T) {
	for _, direct := range []bool{false, true} {
		t.Run(map[bool]string{false: "pagecache", true: "directio"}[direct], func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir, Options{GCInterval: -1, DirectIO: direct})
			_, data := completeTask(t, s, "f", 4)
			flipForeign(t, filepath.Join(dir, "data", "f.blocks"), 2*4096+17)

			if blk, err := s.ReadBlock("f", 2); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("read of the block changed behind the store's back: err %v, same bytes %v; want ErrCorrupt",
					err, bytes.Equal(blk, data[2*4096:3*4096]))
			}
			if s.HasBlock("f", 2) {
				t.Fatal("changed block still present")
			}
			if got, _ := s.Task("f"); got.State != StatePending || got.Verified {
				t.Fatalf("task with a changed block is %s (verified %v), want pending", got.State, got.Verified)
			}
			for _, i := range []int{0, 1, 3} {
				blk, err := s.ReadBlock("f", i)
				if err != nil || !bytes.Equal(blk, data[i*4096:(i+1)*4096]) {
					t.Fatalf("intact block %d after the change: %v", i, err)
				}
			}
			if err := s.PutBlock(ctx, "f", 2, data[2*4096:3*4096]); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if got, err := s.VerifyAndComplete(ctx, "f", &out); err != nil || !got.Verified || !bytes.Equal(out.Bytes(), data) {
				t.Fatalf("repaired task: %+v %v", got, err)
			}
		})
	}
}

// TestOpenBlockAfterForeignChange (issue #20): the upload path must not
// hand out (for sendfile) a block changed behind the store's back, even
// one this process verified before the change.
func TestOpenBlockAfterForeignChange(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{GCInterval: -1})
	task, data := completeTask(t, s, "u", 4)
	checkOpenBlocks(t, s, task, data)
	flipForeign(t, filepath.Join(dir, "data", "u.blocks"), 1*4096+4000)

	rc, n, err := s.OpenBlock("u", 1)
	if err == nil {
		got, _ := io.ReadAll(io.LimitReader(rc, n))
		rc.Close()
		t.Fatalf("OpenBlock served the changed block (same bytes: %v); want ErrCorrupt", bytes.Equal(got, data[4096:8192]))
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("OpenBlock of the changed block: %v, want ErrCorrupt", err)
	}
	if s.HasBlock("u", 1) {
		t.Fatal("changed block still present")
	}
	for _, i := range []int{0, 2, 3} {
		rc, n, err := s.OpenBlock("u", i)
		if err != nil {
			t.Fatalf("intact block %d: %v", i, err)
		}
		got, err := io.ReadAll(io.LimitReader(rc, n))
		rc.Close()
		if err != nil || !bytes.Equal(got, data[i*4096:(i+1)*4096]) {
			t.Fatalf("intact block %d differs: %v", i, err)
		}
	}
}

// TestForeignChangeRestoringMtime: a change whose author puts the old
// modification time back (touch -r, rsync -t, a careless tool) is still
// noticed: the change time cannot be set back.
func TestForeignChangeRestoringMtime(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{GCInterval: -1})
	completeTask(t, s, "m", 3)
	path := filepath.Join(dir, "data", "m.blocks")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	flipForeign(t, path, 100)
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadBlock("m", 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read after a change that kept the mtime: %v, want ErrCorrupt", err)
	}
}

// TestForeignTruncateWhileRunning: a data file cut short (or replaced by an
// empty one) behind the store's back loses blocks, never returns zeros.
func TestForeignTruncateWhileRunning(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{GCInterval: -1})
	completeTask(t, s, "tr", 3)
	time.Sleep(20 * time.Millisecond)
	if err := os.Truncate(filepath.Join(dir, "data", "tr.blocks"), 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadBlock("tr", 0); err != nil {
		t.Fatalf("block 0 survives the truncation: %v", err)
	}
	for _, i := range []int{1, 2} {
		if _, err := s.ReadBlock("tr", i); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("block %d cut off: %v, want ErrCorrupt", i, err)
		}
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(ents)
}

// TestOpenDataFilesBounded (issue #20): touching many tasks must not keep
// one descriptor open per task for ever.
func TestOpenDataFilesBounded(t *testing.T) {
	s := openT(t, t.TempDir(), Options{GCInterval: -1})
	before := openFDs(t)
	const tasks = 1000
	for i := range tasks {
		task, data := content("t"+strings.Repeat("x", i%3)+itoa(i), 4096)
		if _, err := s.CreateTask(ctx, task); err != nil {
			t.Fatal(err)
		}
		putAll(t, s, task, data)
		if blk, err := s.ReadBlock(task.ID, 0); err != nil || !bytes.Equal(blk, data) {
			t.Fatalf("task %d: %v", i, err)
		}
		if i%2 == 0 {
			rc, _, err := s.OpenBlock(task.ID, 0)
			if err != nil {
				t.Fatal(err)
			}
			rc.Close()
		}
	}
	after := openFDs(t)
	t.Logf("open descriptors: %d before, %d after touching %d tasks", before, after, tasks)
	if after-before > 256+16 {
		t.Fatalf("%d more descriptors open after touching %d tasks; want at most the cache bound (256) and a few", after-before, tasks)
	}
}

func itoa(i int) string {
	const digits = "0123456789"
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{digits[i%10]}, b...)
	}
	return string(b)
}

// TestMissingManifestRefusesOpen (issue #20): a store whose Badger MANIFEST
// was deleted must not open empty (nor delete the tasks' data files as
// orphans): Open fails naming the MANIFEST, nothing on disk changes, and
// once the MANIFEST is back everything is there and verified.
func TestMissingManifestRefusesOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	contents := map[string][]byte{}
	for _, id := range []string{"a", "b", "c"} {
		_, contents[id] = completeTask(t, s, id, 3)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(dir, "MANIFEST")
	saved, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(manifest); err != nil {
		t.Fatal(err)
	}
	listing := func() []string {
		var names []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && d.Name() != "LOCK" {
				fi, _ := d.Info()
				names = append(names, strings.TrimPrefix(p, dir)+":"+itoa(int(fi.Size())))
			}
			return nil
		})
		return names
	}
	was := listing()

	s2, err := Open(dir, Options{GCInterval: -1})
	if err == nil {
		n := len(s2.List())
		s2.Close()
		t.Fatalf("store without its MANIFEST opened (with %d tasks); want an error naming the MANIFEST", n)
	}
	if !strings.Contains(err.Error(), "MANIFEST") || !errors.Is(err, ErrIndexLost) {
		t.Fatalf("error does not name the missing MANIFEST: %v", err)
	}
	t.Logf("open without MANIFEST: %v", err)
	for _, id := range []string{"a", "b", "c"} {
		if _, err := os.Stat(filepath.Join(dir, "data", id+".blocks")); err != nil {
			t.Fatalf("data file of task %s gone after the refused open: %v", id, err)
		}
	}
	if now := listing(); strings.Join(now, " ") != strings.Join(was, " ") {
		t.Fatalf("the refused open changed the store:\nbefore %v\nafter  %v", was, now)
	}

	if err := os.WriteFile(manifest, saved, 0o644); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir, Options{GCInterval: -1})
	for id, data := range contents {
		got, err := s.Task(id)
		if err != nil || got.State != StateComplete || !got.Verified {
			t.Fatalf("task %s after restoring the MANIFEST: %+v %v", id, got, err)
		}
		var out bytes.Buffer
		if _, err := s.VerifyAndComplete(ctx, id, &out); err != nil || !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("task %s content after restoring the MANIFEST: %v", id, err)
		}
	}
}

// TestBadgerFilesGoneRefusesOpen: every Badger file deleted but the data
// files kept (a "clean-up" of the index) is refused the same way.
func TestBadgerFilesGoneRefusesOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	completeTask(t, s, "k", 2)
	s.Close()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !e.IsDir() {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	if s, err := Open(dir, Options{GCInterval: -1}); err == nil {
		s.Close()
		t.Fatal("store with data files but no index opened")
	} else if !errors.Is(err, ErrIndexLost) {
		t.Fatalf("open: %v, want ErrIndexLost", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "k.blocks")); err != nil {
		t.Fatalf("data file gone: %v", err)
	}
}

// TestSetBlockDigestOnCompleteTask: a digest that contradicts a block of a
// complete task drops the block and the task is no longer complete.
func TestSetBlockDigestOnCompleteTask(t *testing.T) {
	s := openT(t, t.TempDir(), Options{GCInterval: -1})
	completeTask(t, s, "sd", 3)
	other := make([]byte, 32)
	if err := s.SetBlockDigest("sd", 1, other); err != nil {
		t.Fatal(err)
	}
	if s.HasBlock("sd", 1) {
		t.Fatal("block contradicting its new digest still present")
	}
	if got, _ := s.Task("sd"); got.State != StatePending || got.Verified {
		t.Fatalf("task missing a block is %s (verified %v), want pending", got.State, got.Verified)
	}
}

// TestInterruptedDeleteFinishedOnOpen: a process that died inside
// DeleteTask (metadata gone, tombstone set, data file still there) has the
// deletion finished on the next Open: the file is removed, not quarantined.
func TestInterruptedDeleteFinishedOnOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	completeTask(t, s, "keep", 2)
	completeTask(t, s, "del", 2)
	// What dropTask's first step commits, and nothing after it.
	err = s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(tombKey("del"), nil); err != nil {
			return err
		}
		return txn.Delete(taskKey("del"))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openT(t, dir, Options{GCInterval: -1})
	if _, err := s.Task("del"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("half-deleted task: %v", err)
	}
	for _, p := range []string{filepath.Join(dir, "data", "del.blocks"), filepath.Join(dir, "quarantine", "del.blocks")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s after the deletion was finished: %v", p, err)
		}
	}
	if ids, err := s.tombstones(); err != nil || len(ids) != 0 {
		t.Fatalf("tombstones left: %v %v", ids, err)
	}
	if _, err := s.WriteTo(ctx, "keep", io.Discard); err != nil {
		t.Fatal(err)
	}
}

// TestEmptyIndexQuarantinesDataFiles: an index that opens but has lost its
// tasks (here: their metadata deleted under the store) never costs the data
// files: they are moved to the quarantine, intact.
func TestEmptyIndexQuarantinesDataFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	_, data := completeTask(t, s, "q", 2)
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(taskKey("q")) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openT(t, dir, Options{GCInterval: -1})
	if n := len(s.List()); n != 0 {
		t.Fatalf("%d tasks", n)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "quarantine", "q.blocks")); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("quarantined data file: %v", err)
	}
}

// TestDeleteTaskKeepsLongerIDs: deleting task "a" must not take the
// metadata of task "ab" with it.
func TestDeleteTaskKeepsLongerIDs(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	completeTask(t, s, "a", 1)
	_, data := completeTask(t, s, "ab", 2)
	if err := s.DeleteTask("a"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openT(t, dir, Options{GCInterval: -1})
	var out bytes.Buffer
	if got, err := s.Task("ab"); err != nil || got.State != StateComplete {
		t.Fatalf("task ab after deleting task a: %+v %v", got, err)
	}
	if _, err := s.WriteTo(ctx, "ab", &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("task ab content: %v", err)
	}
}

// TestCompleteMissingBlockLoadedPending: a task recorded complete whose
// block key is gone (an older version dropped a block and demoted its task
// in two steps) is pending after Open.
func TestCompleteMissingBlockLoadedPending(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	completeTask(t, s, "h", 3)
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(blockKey("h", 1)) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openT(t, dir, Options{GCInterval: -1})
	if got, _ := s.Task("h"); got.State != StatePending || got.Verified {
		t.Fatalf("task missing a block loaded as %s (verified %v)", got.State, got.Verified)
	}
}

// TestDropDuringVerification: a block dropped after the whole-content pass
// hashed it must not leave the task complete with a hole.
func TestDropDuringVerification(t *testing.T) {
	s := openT(t, t.TempDir(), Options{GCInterval: -1})
	task, data := content("dv", 4*4096)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	_, err := s.VerifyAndCompleteFunc(ctx, "dv", func(idx int, _ []byte) error {
		if idx == 2 {
			return s.DropBlock("dv", 0)
		}
		return nil
	})
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("verification with a block dropped during it: %v, want ErrIncomplete", err)
	}
	if got, _ := s.Task("dv"); got.State != StatePending {
		t.Fatalf("task with a dropped block is %s", got.State)
	}
}

// TestUpdateTaskCannotComplete: only verification completes a task.
func TestUpdateTaskCannotComplete(t *testing.T) {
	s := openT(t, t.TempDir(), Options{GCInterval: -1})
	task, _ := content("uc", 4096)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateTask("uc", func(m *Task) error { m.State, m.Verified = StateComplete, true; return nil }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("UpdateTask completing an unverified task: %v, want ErrInvalid", err)
	}
	if got, _ := s.Task("uc"); got.State != StatePending || got.Verified {
		t.Fatalf("task is %s (verified %v)", got.State, got.Verified)
	}
}

// TestPrivateStaysPrivate: UpdateTask cannot make a private task public
// (content fetched with credentials stays behind the origin's check).
func TestPrivateStaysPrivate(t *testing.T) {
	s := openT(t, t.TempDir(), Options{GCInterval: -1})
	task, _ := content("pv", 4096)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateTask("pv", func(m *Task) error { m.Private = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateTask("pv", func(m *Task) error { m.Private = false; return nil }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("UpdateTask making a private task public: %v, want ErrInvalid", err)
	}
	if _, err := s.UpdateTask("pv", func(m *Task) error { m.Pinned = true; return nil }); err != nil {
		t.Fatalf("another update of a private task: %v", err)
	}
	if got, _ := s.Task("pv"); !got.Private || !got.Pinned {
		t.Fatalf("task %+v, want private and pinned", got)
	}
}

// TestOpenFilesBoundUnderLoad: with a tiny MaxOpenFiles, many goroutines
// reading, uploading and writing different tasks at once get the right
// bytes (a handle in use is never closed under them), the bound holds once
// they are done, and the store's own writes never look like foreign
// changes.
func TestOpenFilesBoundUnderLoad(t *testing.T) {
	s := openT(t, t.TempDir(), Options{GCInterval: -1, MaxOpenFiles: 2})
	const tasks, blocks = 12, 8
	type tc struct {
		task Task
		data []byte
	}
	all := make([]tc, tasks)
	for i := range all {
		task, data := content("l"+itoa(i), blocks*4096+i)
		if _, err := s.CreateTask(ctx, task); err != nil {
			t.Fatal(err)
		}
		all[i] = tc{task, data}
	}
	errc := make(chan error, 3*tasks)
	for i := range all {
		c := all[i]
		go func() { // writer
			for b := range c.task.NumBlocks() {
				off := int64(b) * c.task.BlockSize
				if err := s.PutBlock(ctx, c.task.ID, b, c.data[off:off+c.task.BlockLen(b)]); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		for _, upload := range []bool{false, true} {
			go func() { // readers of whatever is present
				for range 200 {
					for b := range c.task.NumBlocks() {
						off := int64(b) * c.task.BlockSize
						want := c.data[off : off+c.task.BlockLen(b)]
						var got []byte
						var err error
						if upload {
							var rc io.ReadCloser
							var n int64
							if rc, n, err = s.OpenBlock(c.task.ID, b); err == nil {
								got, err = io.ReadAll(io.LimitReader(rc, n))
								rc.Close()
							}
						} else {
							got, err = s.ReadBlock(c.task.ID, b)
						}
						if errors.Is(err, ErrNotFound) {
							continue // not written yet
						}
						if err != nil || !bytes.Equal(got, want) {
							errc <- fmt.Errorf("task %s block %d (upload %v): %v, right bytes %v", c.task.ID, b, upload, err, bytes.Equal(got, want))
							return
						}
					}
				}
				errc <- nil
			}()
		}
	}
	for range 3 * tasks {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range all {
		var out bytes.Buffer
		if _, err := s.VerifyAndComplete(ctx, c.task.ID, &out); err != nil || !bytes.Equal(out.Bytes(), c.data) {
			t.Fatalf("task %s: %v", c.task.ID, err)
		}
	}
	st := s.Stats()
	if st.OpenDataFiles > 2 {
		t.Fatalf("%d data files open, bound 2", st.OpenDataFiles)
	}
	if st.ForeignChanges != 0 || st.Corrupt != 0 {
		t.Fatalf("the store's own concurrent writes were taken for foreign changes: %+v", st)
	}
}
