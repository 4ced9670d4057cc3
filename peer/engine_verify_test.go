package peer

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dfly-p2p/dfly/blockstore"
)

// TestOutputSinksAccountForEveryBlock: the sinks a download writes through
// fail their final check unless the output got every block of the task.
func TestOutputSinksAccountForEveryBlock(t *testing.T) {
	meta := blockstore.Task{ID: "t", Length: 2<<20 + 10, BlockSize: 1 << 20}
	blk := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, int(meta.BlockLen(i))) }

	f, err := os.Create(filepath.Join(t.TempDir(), "seq"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := &seqSink{w: f}
	for _, i := range []int{0, 1} {
		if err := s.emit(i, blk(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.check(meta); !errors.Is(err, blockstore.ErrIncomplete) {
		t.Fatalf("sequential output missing its last block: %v, want ErrIncomplete", err)
	}
	if err := s.emit(0, blk(0)); err != nil { // a hash that started over: written again from the start
		t.Fatal(err)
	}
	if err := s.emit(2, blk(2)); err == nil {
		t.Fatal("a block out of order was written to a sequential output")
	}
	for _, i := range []int{1, 2} {
		if err := s.emit(i, blk(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.check(meta); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(f.Name())
	if !bytes.Equal(got, append(append(blk(0), blk(1)...), blk(2)...)) {
		t.Fatalf("sequential output is %d bytes, not the content", len(got))
	}

	g, err := os.Create(filepath.Join(t.TempDir(), "at"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	a := newAtSink(g, meta, nil)
	for _, i := range []int{2, 0} {
		if err := a.emit(i, blk(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.check(meta); !errors.Is(err, blockstore.ErrIncomplete) {
		t.Fatalf("output missing block 1: %v, want ErrIncomplete", err)
	}
	if err := a.emit(1, blk(1)); err != nil {
		t.Fatal(err)
	}
	if err := a.check(meta); err != nil {
		t.Fatal(err)
	}
	if err := newAtSink(g, blockstore.Task{ID: "t", Length: meta.Length}, nil).check(meta); !errors.Is(err, blockstore.ErrIncomplete) {
		t.Fatalf("output written with another block size: %v, want ErrIncomplete", err)
	}
}
