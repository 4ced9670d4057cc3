package compress

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// tarOf returns a tar of the regular files under root, up to limit bytes.
func tarOf(root string, limit int) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || buf.Len() >= limit {
			return nil
		}
		fi, err := d.Info()
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return nil
		}
		h.Name = p
		if tw.WriteHeader(h) == nil {
			_, _ = io.Copy(tw, f)
		}
		return nil
	})
	_ = tw.Close()
	return buf.Bytes()[:min(buf.Len(), limit)]
}

// BenchmarkTrialPrediction measures how well the sample predicts the whole
// block's verdict, per 1 MiB block, on a tar of /usr/share (text, binaries
// and compressed files side by side), a gzip of it and random bytes:
// sample-no-% of the blocks are ruled out by their sample, false-neg-% of
// the blocks would have saved >= MinSaving whole but were ruled out (lost-%
// of the plain bytes they would have saved), wasted-% were compressed whole
// for nothing; wire/plain is what the blocks cost on the wire with the
// trial's verdicts. Run: go test -run XXX -bench TrialPrediction ./internal/compress
func BenchmarkTrialPrediction(b *testing.B) {
	if _, err := os.Stat("/usr/share"); err != nil {
		b.Skip("no /usr/share to make a tar of")
	}
	c, err := NewCodec(1)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	tarb := tarOf("/usr/share", 128<<20)
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
	_, _ = zw.Write(tarb[:64<<20])
	_ = zw.Close()
	for _, ds := range []struct {
		name string
		data []byte
	}{{"tar", tarb}, {"gzip", gz.Bytes()}, {"random", random(64<<20, 9)}} {
		b.Run(ds.name, func(b *testing.B) {
			var blocks, sampleNo, falseNeg, wasted int
			var plain, wire, lost int64
			var took time.Duration
			for b.Loop() {
				blocks, sampleNo, falseNeg, wasted, plain, wire, lost, took = 0, 0, 0, 0, 0, 0, 0, 0
				for off := 0; off+(1<<20) <= len(ds.data); off += 1 << 20 {
					blk := ds.data[off : off+(1<<20)]
					blocks++
					plain += int64(len(blk))
					began := time.Now()
					form, v := c.trial(blk)
					took += time.Since(began)
					whole := len(c.Compress(blk))
					switch v {
					case Kept:
						wire += int64(len(form))
					case SampleSaysNo:
						sampleNo++
						wire += int64(len(blk))
						if saving(len(blk), whole) >= MinSaving {
							falseNeg++
							lost += int64(len(blk) - whole)
						}
					default:
						wasted++
						wire += int64(len(blk))
					}
				}
			}
			b.ReportMetric(100*float64(sampleNo)/float64(blocks), "sample-no-%")
			b.ReportMetric(100*float64(falseNeg)/float64(blocks), "false-neg-%")
			b.ReportMetric(100*float64(lost)/float64(plain), "lost-%")
			b.ReportMetric(100*float64(wasted)/float64(blocks), "wasted-%")
			b.ReportMetric(float64(wire)/float64(plain), "wire/plain")
			b.ReportMetric(float64(plain)/took.Seconds()/1e6, "trial-MB/s")
		})
	}
}

// BenchmarkDecompress measures decoding one 1 MiB form of text.
func BenchmarkDecompress(b *testing.B) {
	c, err := NewCodec(1)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	block := text(1<<20, 1)
	form := c.Compress(block)
	dst := make([]byte, 0, len(block))
	b.SetBytes(int64(len(block)))
	for b.Loop() {
		if _, err := c.Decompress(dst, form, len(block)); err != nil {
			b.Fatal(err)
		}
	}
}
