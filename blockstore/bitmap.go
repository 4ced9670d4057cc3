package blockstore

import "math/bits"

// Bitmap records which blocks of a task are present. Bit i is block i.
type Bitmap []byte

// NewBitmap returns an empty bitmap for n blocks.
func NewBitmap(n int) Bitmap { return make(Bitmap, (n+7)/8) }

// Has reports whether block i is set.
func (b Bitmap) Has(i int) bool {
	if i < 0 || i/8 >= len(b) {
		return false
	}
	return b[i/8]&(1<<(uint(i)%8)) != 0
}

// Set marks block i present.
func (b Bitmap) Set(i int) {
	if i >= 0 && i/8 < len(b) {
		b[i/8] |= 1 << (uint(i) % 8)
	}
}

// Clear marks block i absent.
func (b Bitmap) Clear(i int) {
	if i >= 0 && i/8 < len(b) {
		b[i/8] &^= 1 << (uint(i) % 8)
	}
}

// Count returns how many blocks are set.
func (b Bitmap) Count() int {
	n := 0
	for _, x := range b {
		n += bits.OnesCount8(x)
	}
	return n
}

// Missing lists the unset blocks among the first n.
func (b Bitmap) Missing(n int) []int {
	var out []int
	for i := 0; i < n; i++ {
		if !b.Has(i) {
			out = append(out, i)
		}
	}
	return out
}

// Clone returns an independent copy.
func (b Bitmap) Clone() Bitmap { return append(Bitmap(nil), b...) }
