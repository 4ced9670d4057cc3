package chaos

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
)

// storeCheck is what a stopped daemon's store holds of one content.
type storeCheck struct {
	present, total int
	bs             int64
}

// inspectStore opens a stopped daemon's store and checks every task it
// holds: each present block of the content c (task id) must read back as
// exactly the origin's bytes (the store verifies the block's digest on
// read; a block it cannot verify must not be present). It returns what it
// found of task id.
func inspectStore(t *testing.T, dir, id string, c origin.Content) storeCheck {
	t.Helper()
	s, err := blockstore.Open(dir, blockstore.Options{})
	if err != nil {
		t.Fatalf("open the store %s after the failure: %v", dir, err)
	}
	defer s.Close()
	task, err := s.Task(id)
	if err != nil {
		t.Fatalf("store %s: task %s: %v", dir, id, err)
	}
	bm, err := s.Bitmap(id)
	if err != nil {
		t.Fatal(err)
	}
	sc := storeCheck{total: task.NumBlocks(), bs: task.BlockSize}
	for idx := range sc.total {
		if !bm.Has(idx) {
			continue
		}
		got, err := s.ReadBlock(id, idx)
		if err != nil {
			t.Errorf("store %s: block %d is marked present but does not read back: %v", dir, idx, err)
			continue
		}
		want := make([]byte, task.BlockLen(idx))
		_, _ = c.ReadAt(want, int64(idx)*task.BlockSize)
		if !bytes.Equal(got, want) {
			t.Errorf("store %s: block %d holds wrong bytes", dir, idx)
			continue
		}
		sc.present++
	}
	return sc
}

// taskID is the id dfly gives the content of url.
func taskID(t *testing.T, url string) string {
	t.Helper()
	id, err := blockstore.TaskIDForURL(url, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (sc storeCheck) String() string {
	return fmt.Sprintf("%d of %d blocks of %d MiB", sc.present, sc.total, sc.bs/mib)
}
