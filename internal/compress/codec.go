// Package compress is dfly's dynamic compression of blocks (issue 17): the
// seed decides once per block whether zstd pays (Trial), keeps the
// compressed form beside the block (Forms), and peers ask for that form only
// while their CPU has headroom and their link is the bottleneck (Host.Ask);
// they decompress it with a hard bound (Codec.Decompress) and verify the
// plain block's SHA-256 as they always do, then keep the form to serve it on.
// Block digests stay over the plain bytes: a compressed form is only ever a
// transport encoding (Content-Encoding: zstd, see internal/blockhttp).
package compress

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// MaxBlock is the largest block a form may encode (the store's largest
// block size): a frame that claims more is refused before decoding.
const MaxBlock = 16 << 20

// The trial's rules (see Trial).
const (
	// The early-out compresses a sample first: samplePieces slices spread
	// evenly over the block, an eighth of it in all (at least
	// minSampleSize), each slice on its own. Measured on 1 MiB blocks of a
	// tar of /usr/share (BenchmarkTrialPrediction, docs/benchmarks.md §9):
	// 1.6% of the blocks were ruled out though worth compressing (0.9% of
	// the plain bytes lost to the wire), against 19% of the blocks (7%)
	// for 64 KiB compressed as one stream; random and gzip blocks are all
	// ruled out.
	sampleDivisor = 8
	minSampleSize = 64 << 10
	samplePieces  = 16
	// minSampleSaving: a sample saving less than this (in percent) ends
	// the trial at once: the block is not worth compressing.
	minSampleSaving = 1
	// MinSaving: a form is kept only when it saves at least this many
	// percent of the block.
	MinSaving = 10
)

// ErrCorrupt marks a compressed body that does not decode to a block of
// the expected length: the sender is to be treated like one that sent a
// wrong block.
var ErrCorrupt = errors.New("compressed block does not decode")

// Codec holds the zstd encoders and decoder of a process. The
// klauspost/compress types pool their internal state: one Codec serves any
// number of goroutines (up to the concurrency it was made with at a time,
// the rest wait). Make one per process and Close it at the end.
type Codec struct {
	sample *zstd.Encoder // the early-out (no checksum: its output is thrown away)
	full   *zstd.Encoder // the form that is kept, with its checksum
	dec    *zstd.Decoder
}

// NewCodec makes a Codec for up to concurrency simultaneous operations (0:
// GOMAXPROCS).
func NewCodec(concurrency int) (*Codec, error) {
	if concurrency <= 0 {
		concurrency = runtime.GOMAXPROCS(0)
	}
	sample, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(concurrency), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, fmt.Errorf("zstd sample encoder: %w", err)
	}
	full, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(concurrency))
	if err != nil {
		sample.Close()
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(concurrency), zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(MaxBlock), zstd.WithDecoderMaxWindow(MaxBlock))
	if err != nil {
		sample.Close()
		full.Close()
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &Codec{sample: sample, full: full, dec: dec}, nil
}

// Close releases the encoders and the decoder.
func (c *Codec) Close() {
	if c == nil {
		return
	}
	c.sample.Close()
	c.full.Close()
	c.dec.Close()
}

// Verdict is what a trial found.
type Verdict int

// Trial verdicts.
const (
	// Kept: the block compresses by at least MinSaving percent.
	Kept Verdict = iota
	// SampleSaysNo: the sample saved less than minSampleSaving percent;
	// the block itself was not compressed.
	SampleSaysNo
	// TooLittle: the whole block was compressed but saved less than MinSaving.
	TooLittle
)

func (v Verdict) String() string {
	switch v {
	case Kept:
		return "kept"
	case SampleSaysNo:
		return "sample-says-no"
	case TooLittle:
		return "too-little"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// Trial decides whether block is worth compressing: it returns the
// compressed form and true when the form saves at least MinSaving percent.
// A block whose sample (an eighth of it in samplePieces slices spread
// over it) saves less than minSampleSaving percent costs only the sample:
// incompressible data (gzip layers, random bytes, ciphertext) costs one
// fast sample and nothing after.
func (c *Codec) Trial(block []byte) (compressed []byte, ok bool) {
	out, v := c.trial(block)
	return out, v == Kept
}

// trial is Trial with the verdict.
func (c *Codec) trial(block []byte) ([]byte, Verdict) {
	if len(block) == 0 || len(block) > MaxBlock {
		return nil, TooLittle
	}
	if len(block) > 2*sampleLen(len(block)) && sampleSaving(c.sample, block) < minSampleSaving {
		return nil, SampleSaysNo
	}
	out := c.full.EncodeAll(block, make([]byte, 0, len(block)))
	if saving(len(block), len(out)) < MinSaving {
		return nil, TooLittle
	}
	return out, Kept
}

// sampleLen is the length of the sample of a block of n bytes.
func sampleLen(n int) int { return max(minSampleSize, n/sampleDivisor) }

// sampleSaving compresses samplePieces slices of block, sampleLen bytes in
// all, spread evenly over it (a tar holds text, binaries and already
// compressed files side by side: its first bytes alone predict the rest
// poorly), each on its own (in one stream, incompressible slices would
// make the encoder skip ahead over the compressible ones), and returns the
// percentage they saved.
func sampleSaving(enc *zstd.Encoder, block []byte) int {
	piece := sampleLen(len(block)) / samplePieces
	stride := len(block) / samplePieces
	buf := make([]byte, 0, piece+piece/8+64)
	in, out := 0, 0
	for i := range samplePieces {
		p := block[i*stride : i*stride+piece]
		buf = enc.EncodeAll(p, buf[:0])
		in, out = in+len(p), out+len(buf)
	}
	return saving(in, out)
}

// saving is the percentage of n that compressing it to m saved.
func saving(n, m int) int {
	if n <= 0 {
		return 0
	}
	return (n - m) * 100 / n
}

// Compress compresses block into the form Trial would keep, whatever it
// saves (tests, and senders that want a form regardless).
func (c *Codec) Compress(block []byte) []byte {
	return c.full.EncodeAll(block, make([]byte, 0, len(block)))
}

// Decompress decodes one zstd frame src into dst[:0], which it grows to
// plainLen bytes when its capacity is smaller, and returns exactly plainLen
// bytes. It never produces more than plainLen bytes (nor more than
// MaxBlock): a frame that does not declare exactly plainLen bytes, or
// decodes to any other length, or fails its checksum, is ErrCorrupt. src is
// network input: nothing in it is trusted.
func (c *Codec) Decompress(dst, src []byte, plainLen int) ([]byte, error) {
	if plainLen <= 0 || plainLen > MaxBlock {
		return nil, fmt.Errorf("%w: plain length %d out of range", ErrCorrupt, plainLen)
	}
	var h zstd.Header
	if err := h.Decode(src); err != nil {
		return nil, fmt.Errorf("%w: frame header: %v", ErrCorrupt, err)
	}
	if h.Skippable || !h.HasFCS || h.FrameContentSize != uint64(plainLen) || h.DictionaryID != 0 {
		return nil, fmt.Errorf("%w: the frame declares %d bytes (known: %v), want %d", ErrCorrupt, h.FrameContentSize, h.HasFCS, plainLen)
	}
	if cap(dst) < plainLen {
		dst = make([]byte, 0, plainLen)
	}
	// The capacity bounds what DecodeAll may write (WithDecodeAllCapLimit):
	// a second frame, or a lie in the first one's header, cannot make it
	// write beyond plainLen bytes.
	out, err := c.dec.DecodeAll(src, dst[:0:plainLen])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if len(out) != plainLen {
		return nil, fmt.Errorf("%w: %d bytes decoded, want %d", ErrCorrupt, len(out), plainLen)
	}
	return out, nil
}
