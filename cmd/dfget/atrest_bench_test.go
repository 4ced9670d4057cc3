package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// BenchmarkDfgetAtRest downloads the same 256 MiB file from a loopback
// origin with dfget into a fresh plain store and into a fresh store
// encrypted at rest (DFLY_STORE_KEY), alternating, and reports the
// encrypted download's time as a ratio of the plain one's (> 1: slower).
// `go test -run '^$' -bench DfgetAtRest ./cmd/dfget`.
func BenchmarkDfgetAtRest(b *testing.B) {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	c := origin.Content{Size: 256 << 20, Seed: 6}
	u := o.Add("f", c)
	dir := b.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DFLY_STORE_KEY=") {
			env = append(env, kv)
		}
	}
	key := "DFLY_STORE_KEY=" + strings.Repeat("ab", 32)
	run := func(sealed bool) time.Duration {
		store := filepath.Join(dir, "store")
		os.RemoveAll(store)
		cmd := exec.Command(dfgetBin, u, "-O", filepath.Join(dir, "out"), "--store", store, "-q")
		cmd.Env = env
		if sealed {
			cmd.Env = append(append([]string(nil), env...), key)
		}
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("dfget (sealed %v): %v %s", sealed, err, out)
		}
		return time.Since(start)
	}
	var plain, sealed time.Duration
	for i := 0; i < b.N; i++ {
		if i%2 == 0 { // alternate the order: neither always runs on a warmer machine
			plain += run(false)
			sealed += run(true)
		} else {
			sealed += run(true)
			plain += run(false)
		}
	}
	b.ReportMetric(float64(c.Size)*float64(b.N)/plain.Seconds()/(1<<20), "plain-MiB/s")
	b.ReportMetric(float64(c.Size)*float64(b.N)/sealed.Seconds()/(1<<20), "sealed-MiB/s")
	b.ReportMetric(sealed.Seconds()/plain.Seconds(), "sealed/plain-time")
}
