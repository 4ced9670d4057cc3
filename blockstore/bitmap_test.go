package blockstore

import (
	"slices"
	"testing"
)

func TestBitmap(t *testing.T) {
	b := NewBitmap(10)
	if len(b) != 2 {
		t.Fatalf("len = %d, want 2", len(b))
	}
	for _, i := range []int{0, 3, 9} {
		b.Set(i)
	}
	b.Set(100) // out of range: ignored
	b.Set(-1)
	if b.Count() != 3 {
		t.Fatalf("count = %d", b.Count())
	}
	if !b.Has(3) || b.Has(4) || b.Has(100) || b.Has(-1) {
		t.Fatal("Has wrong")
	}
	if got := b.Missing(10); !slices.Equal(got, []int{1, 2, 4, 5, 6, 7, 8}) {
		t.Fatalf("missing = %v", got)
	}
	c := b.Clone()
	b.Clear(3)
	if b.Has(3) || !c.Has(3) {
		t.Fatal("Clear/Clone wrong")
	}
}
