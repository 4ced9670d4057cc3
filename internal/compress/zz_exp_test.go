package compress

import (
	"os"
	"testing"
)

func TestZZExp(t *testing.T) {
	if os.Getenv("EXP") == "" {
		t.Skip()
	}
	c, _ := NewCodec(1)
	data := tarOf("/usr/share", 128<<20)
	type blk struct{ b []byte; whole int }
	var blocks []blk
	for off := 0; off+(1<<20) <= len(data); off += 1 << 20 {
		b := data[off : off+(1<<20)]
		blocks = append(blocks, blk{b, len(c.Compress(b))})
	}
	for _, size := range []int{64 << 10, 128 << 10} {
		for _, pieces := range []int{16, 64} {
			for _, thr := range []float64{2, 1, 0.5, 0.1} {
				var no, fn, wasted int
				var lost, plain, wire int64
				for _, x := range blocks {
					piece, stride := size/pieces, len(x.b)/pieces
					var s []byte
					for i := 0; i < pieces; i++ {
						s = append(s, x.b[i*stride:i*stride+piece]...)
					}
					so := len(c.sample.EncodeAll(s, nil))
					sv := float64(len(s)-so) * 100 / float64(len(s))
					whole := saving(len(x.b), x.whole)
					plain += int64(len(x.b))
					if sv < thr {
						no++
						wire += int64(len(x.b))
						if whole >= MinSaving {
							fn++
							lost += int64(len(x.b) - x.whole)
						}
						continue
					}
					if whole < MinSaving {
						wasted++
						wire += int64(len(x.b))
					} else {
						wire += int64(x.whole)
					}
				}
				t.Logf("size %dK pieces %d thr %.1f: no %d fn %d lost %.3f wasted %d wire %.3f", size>>10, pieces, thr, no, fn, float64(lost)/float64(plain), wasted, float64(wire)/float64(plain))
			}
		}
	}
	// ideal
	var wire, plain int64
	for _, x := range blocks {
		plain += int64(len(x.b))
		if saving(len(x.b), x.whole) >= MinSaving { wire += int64(x.whole) } else { wire += int64(len(x.b)) }
	}
	t.Logf("ideal wire %.3f, blocks %d", float64(wire)/float64(plain), len(blocks))
}
