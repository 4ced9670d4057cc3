package blockstore

// Block-size rule.
//
// A task is cut into fixed-size blocks. The size is a power of two between
// MinBlockSize (1 MiB) and MaxBlockSize (16 MiB), chosen as the smallest such
// power of two that keeps the task at or under TargetBlocks blocks. Small
// blocks keep first-byte latency low and let a swarm pipeline early; the cap
// on the block count keeps per-task metadata (bitmap, digests, scheduler
// state) to a few kilobytes. Past 32 GiB the 16 MiB cap wins and the count
// grows linearly (a 64 GiB file has 4096 blocks).
const (
	MinBlockSize int64 = 1 << 20
	MaxBlockSize int64 = 16 << 20
	TargetBlocks int64 = 2048
	// MaxBlocks bounds the blocks of one task (64 TiB in blocks of
	// MaxBlockSize): its metadata is kept in memory, a few tens of bytes a
	// block, so a task of more (a tiny block size given with a large
	// length, or a damaged index record) would exhaust it.
	MaxBlocks = 1 << 22
)

// BlockSizeFor returns the block size for content of the given length.
// Unknown (negative) or zero lengths get MinBlockSize.
func BlockSizeFor(length int64) int64 {
	bs := MinBlockSize
	for bs < MaxBlockSize && length > bs*TargetBlocks {
		bs <<= 1
	}
	return bs
}

// NumBlocks returns how many blocks of size bs cover length bytes.
func NumBlocks(length, bs int64) int {
	if length <= 0 || bs <= 0 {
		return 0
	}
	return int((length + bs - 1) / bs)
}

// BlockLen returns the length of block idx of a task (the last block may be short).
func BlockLen(length, bs int64, idx int) int64 {
	start := int64(idx) * bs
	if start >= length || idx < 0 {
		return 0
	}
	return min(bs, length-start)
}
