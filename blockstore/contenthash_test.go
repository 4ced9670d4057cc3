package blockstore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestContentHashFollowsArrivals stores a task's blocks out of order and
// advances a ContentHash after each one: it hashes exactly the present
// prefix, hands each prefix block to emit once, and CompleteHash hands the
// rest, verifies and completes the task.
func TestContentHashFollowsArrivals(t *testing.T) {
	s := openT(t, t.TempDir(), Options{})
	task, data := content("ch", 8*4096+100)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	c, err := s.NewContentHash("ch")
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(data))
	emitted := map[int]int{}
	emit := func(idx int, blk []byte) error {
		emitted[idx]++
		copy(out[int64(idx)*task.BlockSize:], blk)
		return nil
	}
	put := func(idx int) {
		t.Helper()
		off := int64(idx) * task.BlockSize
		if err := s.PutBlock(ctx, "ch", idx, data[off:off+task.BlockLen(idx)]); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		put  int
		want int // blocks hashed after HashPresent
	}{
		{put: 1, want: 0},
		{put: 3, want: 0},
		{put: 0, want: 2},
		{put: 2, want: 4},
		{put: 6, want: 4},
		{put: 4, want: 5},
	} {
		put(step.put)
		n, err := s.HashPresent(ctx, c, emit)
		if err != nil || n != step.want || c.Hashed() != step.want {
			t.Fatalf("after block %d: hashed %d (%d), %v; want %d", step.put, n, c.Hashed(), err, step.want)
		}
	}
	if _, err := s.CompleteHash(ctx, c, emit); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("CompleteHash with blocks missing: %v, want ErrIncomplete", err)
	}
	c, _ = s.NewContentHash("ch") // a failed CompleteHash uses c up
	if n, err := s.HashPresent(ctx, c, nil); n != 5 || err != nil {
		t.Fatalf("a new hash over the same prefix: %d %v", n, err)
	}
	for _, idx := range []int{5, 7, 8} {
		put(idx)
	}
	clear(emitted)
	got, err := s.CompleteHash(ctx, c, emit)
	if err != nil || got.State != StateComplete || !got.Verified {
		t.Fatalf("CompleteHash: %+v %v", got, err)
	}
	for idx := range task.NumBlocks() {
		if want := map[bool]int{true: 0, false: 1}[idx < 5]; emitted[idx] != want {
			t.Errorf("block %d emitted %d times by CompleteHash, want %d", idx, emitted[idx], want)
		}
	}
	for idx := 5; idx < task.NumBlocks(); idx++ {
		off := int64(idx) * task.BlockSize
		if !bytes.Equal(out[off:off+task.BlockLen(idx)], data[off:off+task.BlockLen(idx)]) {
			t.Fatalf("block %d emitted with the wrong bytes", idx)
		}
	}
}

// TestContentHashMismatch: blocks that each match their digest but do not
// make the declared content (the declared digest is wrong) fail with
// ErrDigestMismatch however much was hashed early, and the task stays pending.
func TestContentHashMismatch(t *testing.T) {
	for _, early := range []bool{false, true} {
		s := openT(t, t.TempDir(), Options{})
		task, data := content("mm", 4*4096)
		task.Digest = "sha256:" + strings.Repeat("0", 64)
		if _, err := s.CreateTask(ctx, task); err != nil {
			t.Fatal(err)
		}
		c, err := s.NewContentHash("mm")
		if err != nil {
			t.Fatal(err)
		}
		putAll(t, s, task, data)
		if early {
			if n, err := s.HashPresent(ctx, c, nil); n != 4 || err != nil {
				t.Fatalf("HashPresent: %d %v", n, err)
			}
		}
		if _, err := s.CompleteHash(ctx, c, nil); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("early=%v: CompleteHash of wrong content: %v, want ErrDigestMismatch", early, err)
		}
		if got, _ := s.Task("mm"); got.State == StateComplete {
			t.Fatalf("early=%v: task completed despite the mismatch", early)
		}
	}
}

// TestContentHashDigestAdopted: a digest declared after the hash started
// makes it start over (with the new algorithm): the task is verified
// against the new digest, not marked verified by a hash that checked none.
func TestContentHashDigestAdopted(t *testing.T) {
	s := openT(t, t.TempDir(), Options{})
	declared, _ := undeclaredTask(t, s, "ad", 4*4096)
	c, err := s.NewContentHash("ad")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.HashPresent(ctx, c, nil); n != 4 || err != nil {
		t.Fatalf("HashPresent: %d %v", n, err)
	}
	wrong := "md5:" + strings.Repeat("0", 32)
	if _, err := s.UpdateTask("ad", func(m *Task) error { m.Digest = wrong; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompleteHash(ctx, c, nil); !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "md5:") {
		t.Fatalf("CompleteHash after an md5 digest was declared: %v, want an md5 mismatch", err)
	}
	if _, err := s.UpdateTask("ad", func(m *Task) error { m.Digest = declared; return nil }); err != nil {
		t.Fatal(err)
	}
	c, _ = s.NewContentHash("ad")
	if got, err := s.CompleteHash(ctx, c, nil); err != nil || !got.Verified {
		t.Fatalf("CompleteHash with the right digest: %+v %v", got, err)
	}
}

// TestContentHashStopsAtDroppedBlock: a block that turns out corrupt while
// HashPresent reads it (no declared digest, so blocks are checked one by
// one) ends the prefix there without an error; it is dropped to be fetched
// again.
func TestContentHashStopsAtDroppedBlock(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	_, data := undeclaredTask(t, s, "dr", 4*4096)
	corruptOnDisk(t, dir, data[2*4096+50:2*4096+120])
	s.uncheck("dr", 2)
	c, err := s.NewContentHash("dr")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.HashPresent(ctx, c, nil); n != 2 || err != nil {
		t.Fatalf("HashPresent over a corrupt block 2: %d %v, want 2 <nil>", n, err)
	}
	if s.HasBlock("dr", 2) {
		t.Fatal("the corrupt block is still present")
	}
}

// corruptOnDisk flips a byte of needle where it lies in the store's data
// files (in place, so open files see it).
func corruptOnDisk(t *testing.T, dir string, needle []byte) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "data", "*"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(b, needle)
		if i < 0 {
			continue
		}
		f, err := os.OpenFile(name, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte{b[i+10] ^ 0xff}, int64(i+10)); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("could not find the bytes in the data files to corrupt them")
}
