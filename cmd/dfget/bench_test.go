package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// BenchmarkDfgetVsSingleStream downloads the same 256 MiB file from the same
// loopback origin with a plain single-stream Go HTTP GET and with dfget
// (fresh store each time), and reports dfget's time as a ratio of the
// baseline's (lower is better; < 1 means dfget is faster). `make bench-dfget`.
func BenchmarkDfgetVsSingleStream(b *testing.B) {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	c := origin.Content{Size: 256 << 20, Seed: 5}
	u := o.Add("f", c)
	dir := b.TempDir()
	var base, dfly time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		resp, err := http.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		f, _ := os.Create(filepath.Join(dir, "plain"))
		if _, err := io.Copy(f, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		f.Sync()
		f.Close()
		base += time.Since(start)

		store := filepath.Join(dir, "store")
		os.RemoveAll(store)
		start = time.Now()
		if out, err := exec.Command(dfgetBin, u, "-O", filepath.Join(dir, "dfly"), "--store", store, "-q").CombinedOutput(); err != nil {
			b.Fatalf("dfget: %v %s", err, out)
		}
		dfly += time.Since(start)
	}
	b.ReportMetric(float64(c.Size)*float64(b.N)/base.Seconds()/(1<<20), "baseline-MiB/s")
	b.ReportMetric(float64(c.Size)*float64(b.N)/dfly.Seconds()/(1<<20), "dfget-MiB/s")
	b.ReportMetric(dfly.Seconds()/base.Seconds(), "time-ratio")
}
