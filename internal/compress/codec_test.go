package compress

import (
	"bytes"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func newCodec(t testing.TB) *Codec {
	t.Helper()
	c, err := NewCodec(2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// sampledOnly is random bytes except text exactly where the sample looks:
// the sample compresses, the block does not.
func sampledOnly(n int) []byte {
	b := random(n, 3)
	piece, stride := sampleLen(n)/samplePieces, n/samplePieces
	for i := range samplePieces {
		copy(b[i*stride:i*stride+piece], text(piece, uint64(i)))
	}
	return b
}

// mostlyRandomWithText is random bytes with a run of text that makes the
// whole block save well over MinSaving, though three quarters of it are
// random.
func mostlyRandomWithText(n int) []byte {
	b := random(n, 4)
	copy(b[n/4:], text(n/4, 9))
	return b
}

func TestTrialVerdicts(t *testing.T) {
	c := newCodec(t)
	tests := []struct {
		name  string
		block []byte
		want  Verdict
	}{
		{"text", text(1<<20, 1), Kept},
		{"text 2 MiB", text(2<<20, 2), Kept},
		{"random", random(1<<20, 1), SampleSaysNo},
		{"gzip", gzipped(1 << 20), SampleSaysNo},
		{"text too small for a sample", text(100<<10, 3), Kept},
		{"random too small for a sample", random(100<<10, 2), TooLittle},
		{"only the sample compresses", sampledOnly(1 << 20), TooLittle},
		{"a quarter of text in random", mostlyRandomWithText(1 << 20), Kept},
		{"empty", nil, TooLittle},
		{"larger than a block can be", make([]byte, MaxBlock+1), TooLittle},
	}
	for _, tc := range tests {
		out, v := c.trial(tc.block)
		if v != tc.want {
			t.Errorf("%s: verdict %v, want %v", tc.name, v, tc.want)
			continue
		}
		form, ok := c.Trial(tc.block)
		if ok != (tc.want == Kept) {
			t.Errorf("%s: Trial ok = %v", tc.name, ok)
		}
		if tc.want != Kept {
			if out != nil || form != nil {
				t.Errorf("%s: a form of %d bytes for a block not worth it", tc.name, len(out))
			}
			continue
		}
		if saving(len(tc.block), len(out)) < MinSaving {
			t.Errorf("%s: kept a form saving %d%%", tc.name, saving(len(tc.block), len(out)))
		}
		back, err := c.Decompress(nil, out, len(tc.block))
		if err != nil || !bytes.Equal(back, tc.block) {
			t.Errorf("%s: the form does not decode to the block: %v", tc.name, err)
		}
	}
}

func TestSampleSpreadOverTheBlock(t *testing.T) {
	c := newCodec(t)
	// Text only in one of the sample's slices: a sixteenth of the sample.
	b := random(1<<20, 5)
	piece, stride := sampleLen(len(b))/samplePieces, len(b)/samplePieces
	copy(b[7*stride:7*stride+piece], text(piece, 1))
	if got := sampleSaving(c.sample, b); got < 2 || got > 6 {
		t.Fatalf("one text slice in sixteen saves %d%% of the sample, want about 4%%", got)
	}
	// Text between the slices is not seen.
	b = random(1<<20, 6)
	copy(b[7*stride+piece:8*stride], text(stride-piece, 2))
	if got := sampleSaving(c.sample, b); got > 0 {
		t.Fatalf("text outside the slices saves %d%% of the sample", got)
	}
	for n, want := range map[int]int{100 << 10: 64 << 10, 1 << 20: 128 << 10, 16 << 20: 2 << 20} {
		if got := sampleLen(n); got != want {
			t.Errorf("sampleLen(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestDecompressBounds(t *testing.T) {
	c := newCodec(t)
	block := text(1<<20, 5)
	form := c.Compress(block)
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	var stream bytes.Buffer // a frame that does not declare its length
	enc.Reset(&stream)
	_, _ = enc.Write(block)
	_ = enc.Close()
	bomb := c.Compress(make([]byte, MaxBlock)) // 16 MiB of zeros in a few bytes
	skippable := []byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}
	tests := []struct {
		name     string
		src      []byte
		plainLen int
		ok       bool
	}{
		{"the form", form, len(block), true},
		{"shorter block than the frame", form, len(block) - 1, false},
		{"longer block than the frame", form, len(block) + 1, false},
		{"truncated", form[:len(form)/2], len(block), false},
		{"garbage", text(4096, 1), len(block), false},
		{"empty", nil, len(block), false},
		{"two frames", append(bytes.Clone(form), form...), len(block), false},
		{"no declared length", stream.Bytes(), len(block), false},
		{"skippable frame", skippable, len(block), false},
		{"bomb declaring more", bomb, 1 << 20, false},
		{"zero length", form, 0, false},
		{"beyond a block", bomb, MaxBlock + 1, false},
	}
	for _, tc := range tests {
		for _, dst := range [][]byte{nil, make([]byte, 0, 2*len(block))} {
			out, err := c.Decompress(dst, tc.src, tc.plainLen)
			if tc.ok {
				if err != nil || !bytes.Equal(out, block) {
					t.Errorf("%s: %v", tc.name, err)
				}
				continue
			}
			if !errors.Is(err, ErrCorrupt) || out != nil {
				t.Errorf("%s: got %d bytes, err %v; want ErrCorrupt", tc.name, len(out), err)
			}
		}
	}
	// The decoder writes into dst's array, never beyond plainLen of it.
	dst := bytes.Repeat([]byte{0xee}, 2*len(block))
	out, err := c.Decompress(dst[:0], form, len(block))
	if err != nil || &out[0] != &dst[0] || dst[len(block)] != 0xee {
		t.Fatalf("decoding into a large buffer: err %v, own array %v, byte past the block %#x", err, err == nil && &out[0] == &dst[0], dst[len(block)])
	}
}

func TestVerdictString(t *testing.T) {
	for v, want := range map[Verdict]string{Kept: "kept", SampleSaysNo: "sample-says-no", TooLittle: "too-little", Verdict(9): "verdict(9)"} {
		if got := v.String(); got != want {
			t.Errorf("%d: %q, want %q", int(v), got, want)
		}
	}
}
