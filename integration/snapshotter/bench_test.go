package snapshotter

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/snapshotter"
)

// BenchmarkFirstOutput measures the time from "dfctl image pull" to a container's first
// output, lazy (eStargz through the dfly snapshotter, with the background prefetch at
// its default rate and without it) against a full pull (the same content as a plain
// gzip image into containerd's overlayfs snapshotter), with the registry's link capped
// at 100 Mbit/s; registry-MB/op is what the registry served before the first output. DFLY_BENCH_BIG_MB sets the big file's size
// (default 200). Each op starts a fresh containerd and snapshotter (not timed).
func BenchmarkFirstOutput(b *testing.B) {
	requireAll(b)
	bigMB := 200
	if v, err := strconv.Atoi(os.Getenv("DFLY_BENCH_BIG_MB")); err == nil && v > 0 {
		bigMB = v
	}
	reg := StartRegistry()
	defer reg.Close()
	dir := b.TempDir()
	tars, small, err := BuildTestImage(dir, int64(bigMB)<<20)
	if err != nil {
		b.Fatal(err)
	}
	plain, lazy := reg.Host()+"/bench/plain:1", reg.Host()+"/bench/lazy:1"
	if _, err := PushImage(plain, tars...); err != nil {
		b.Fatal(err)
	}
	if _, err := snapshotter.Convert(context.Background(), plain, lazy, &snapshotter.Resolver{}, snapshotter.ConvertOptions{
		Prioritized: []string{"/bin/busybox", "/small/file"}, CompressionLevel: 1}); err != nil {
		b.Fatal(err)
	}
	reg.SetRate(100_000_000 / 8)
	runFirstOutput(b, reg, "", nil, small, bigMB, []firstOutputMode{
		// Prefetch at the default (unlimited) rate, pausing for startup reads.
		{"lazy-prefetch", lazy, "dfly", []string{"--prefetch-rate", "0"}},
		{"lazy-noprefetch", lazy, "dfly", []string{"--no-prefetch"}},
		{"full", plain, "overlayfs", nil},
	})
}

// firstOutputMode is one way of starting the benchmark's container.
type firstOutputMode struct {
	name, ref, sn string
	snArgs        []string // extra dfly-snapshotter flags
}

// runFirstOutput times pull + first output of each mode on a fresh host
// (in network namespace netns, "" = this one) per op, and reports what the
// registry served before the first output.
func runFirstOutput(b *testing.B, reg *Registry, netns string, pullArgs []string, small []byte, bigMB int, modes []firstOutputMode) {
	for _, m := range modes {
		b.Run(fmt.Sprintf("%s/%dMB", m.name, bigMB), func(b *testing.B) {
			var served int64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				w := newHost(b, reg, netns, m.snArgs...)
				before := reg.BlobBytes()
				b.StartTimer()
				if out, err := w.dfctl(append(append([]string{"image", "pull"}, pullArgs...), "--snapshotter", m.sn, m.ref)...); err != nil {
					b.Fatalf("pull: %v\n%s", err, out)
				}
				out, errOut, err := w.ctr("run", "--rm", "--snapshotter", m.sn, m.ref, "bench", "cat", "/small/file")
				b.StopTimer()
				if err != nil || out != string(small) {
					b.Fatalf("run = %q %v %s", out, err, errOut)
				}
				served += reg.BlobBytes() - before
				w.close()
				time.Sleep(100 * time.Millisecond)
			}
			b.ReportMetric(float64(served)/float64(b.N)/1e6, "registry-MB/op")
		})
	}
}
