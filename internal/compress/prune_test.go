package compress

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestPruner(t *testing.T) {
	c := newCodec(t)
	forms := openForms(t, t.TempDir(), c)
	b := makeBlock(t, c, 64<<10, 8)
	for _, task := range []string{"u1", "u2", "u3"} {
		if err := forms.Put(task, 0, b.digest, int64(len(b.plain)), b.form); err != nil {
			t.Fatal(err)
		}
	}
	var gone atomic.Value
	gone.Store("u1")
	keep := func(task string) bool { return task != gone.Load().(string) }
	p := StartPruner(forms, 10*time.Millisecond, keep)
	defer p.Stop()
	if forms.Lookup("u1", 0, b.digest) != Unknown {
		t.Fatal("StartPruner did not prune at once")
	}
	gone.Store("u2") // evicted later: the next round removes it
	waitFor(t, "the periodic prune", func() bool { return forms.Lookup("u2", 0, b.digest) == Unknown })
	p.Stop()
	p.Stop()
	if forms.Lookup("u3", 0, b.digest) != Compressed {
		t.Fatal("a held task lost its forms")
	}
	var nilP *Pruner
	nilP.Stop()
}
