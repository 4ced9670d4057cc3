package blockstore

import "testing"

func TestBlockSizeFor(t *testing.T) {
	const MiB, GiB = int64(1 << 20), int64(1 << 30)
	cases := []struct {
		length int64
		want   int64
	}{
		{-1, MiB},
		{0, MiB},
		{1, MiB},
		{256 * MiB, MiB},
		{2 * GiB, MiB},
		{2*GiB + 1, 2 * MiB},
		{4 * GiB, 2 * MiB},
		{10 * GiB, 8 * MiB},
		{32 * GiB, 16 * MiB},
		{1024 * GiB, 16 * MiB},
	}
	for _, c := range cases {
		got := BlockSizeFor(c.length)
		if got != c.want {
			t.Errorf("BlockSizeFor(%d) = %d, want %d", c.length, got, c.want)
		}
		if got&(got-1) != 0 || got < MinBlockSize || got > MaxBlockSize {
			t.Errorf("BlockSizeFor(%d) = %d is not a power of two in range", c.length, got)
		}
		if c.length <= 32*GiB && int64(NumBlocks(c.length, got)) > TargetBlocks {
			t.Errorf("length %d: %d blocks exceeds target", c.length, NumBlocks(c.length, got))
		}
	}
}

func TestNumBlocksAndBlockLen(t *testing.T) {
	cases := []struct {
		length, bs int64
		n          int
		last       int64
	}{
		{0, 4, 0, 0},
		{1, 4, 1, 1},
		{4, 4, 1, 4},
		{5, 4, 2, 1},
		{8, 4, 2, 4},
	}
	for _, c := range cases {
		if got := NumBlocks(c.length, c.bs); got != c.n {
			t.Errorf("NumBlocks(%d,%d)=%d want %d", c.length, c.bs, got, c.n)
		}
		if c.n > 0 {
			if got := BlockLen(c.length, c.bs, c.n-1); got != c.last {
				t.Errorf("BlockLen last (%d,%d)=%d want %d", c.length, c.bs, got, c.last)
			}
		}
		if got := BlockLen(c.length, c.bs, c.n); got != 0 {
			t.Errorf("BlockLen past end = %d", got)
		}
	}
}
