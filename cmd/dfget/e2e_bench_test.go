package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/supernode"
)

// BenchmarkDfgetSwarmE2E measures what end-to-end encryption costs a swarm
// download: dfget with an embedded peer (--supernode, fresh store each
// time) fetches 256 MiB from the warm seed of an in-process supernode,
// as the plain task and as the end-to-end encrypted one (--e2e: the seed
// holds ciphertext, dfget decrypts as it writes and hashes the plaintext),
// alternating, in the same run. It reports both rates and
// e2e-time-ratio (1 = free). `make bench-dfget`.
func BenchmarkDfgetSwarmE2E(b *testing.B) {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	c := origin.Content{Size: 256 << 20, Seed: 6}
	u := o.Add("f", c)
	dir := b.TempDir()
	sn, err := supernode.Start(supernode.Config{StoreDir: filepath.Join(dir, "sn"), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0", Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer sn.Close()
	get := func(extra ...string) time.Duration {
		store := filepath.Join(dir, "store")
		os.RemoveAll(store)
		began := time.Now()
		args := append([]string{u, "-O", filepath.Join(dir, "out"), "--store", store, "--supernode", sn.GRPCAddr(), "-q"}, extra...)
		if out, err := exec.Command(dfgetBin, args...).CombinedOutput(); err != nil {
			b.Fatalf("dfget %v: %v %s", extra, err, out)
		}
		return time.Since(began)
	}
	// Warm the seed with both tasks: the timed runs fetch nothing from the origin.
	get()
	get("--e2e")
	b.ResetTimer()
	var tPlain, tE2E time.Duration
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			tPlain += get()
			tE2E += get("--e2e")
		} else {
			tE2E += get("--e2e")
			tPlain += get()
		}
	}
	b.StopTimer()
	mib := float64(c.Size) * float64(b.N) / (1 << 20)
	b.ReportMetric(mib/tPlain.Seconds(), "plain-MiB/s")
	b.ReportMetric(mib/tE2E.Seconds(), "e2e-MiB/s")
	b.ReportMetric(tE2E.Seconds()/tPlain.Seconds(), "e2e-time-ratio")
}
