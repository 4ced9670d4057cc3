package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/tlsconf/tlstest"
	"github.com/dfly-p2p/dfly/supernode"
)

// BenchmarkDfgetSwarmTLS measures what TLS costs a swarm download: dfget
// with an embedded peer (--supernode, fresh store each time) fetches 256
// MiB from the seed of a warm in-process supernode (every block already in
// the seed's store), once over plain TCP and once over mutual TLS, in the
// same run. It reports both rates and tls-time-ratio (TLS time / plain
// time; 1 = free). `make bench-dfget`.
func BenchmarkDfgetSwarmTLS(b *testing.B) {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	c := origin.Content{Size: 256 << 20, Seed: 6}
	u := o.Add("f", c)
	dir := b.TempDir()
	pki := tlstest.New(b, b.TempDir())
	cert, key := pki.Issue("dfget", "127.0.0.1")
	tlsArgs := []string{"--tls-cert", cert, "--tls-key", key, "--tls-ca", pki.CAFile}

	start := func(name string, tls bool) *supernode.Supernode {
		cfg := supernode.Config{StoreDir: filepath.Join(dir, name), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0", Logger: quietLogger()}
		if tls {
			cfg.TLS = pki.Reloader(name, true)
		}
		sn, err := supernode.Start(cfg)
		if err != nil {
			b.Fatal(err)
		}
		return sn
	}
	plain, secure := start("plain", false), start("tls", true)
	defer plain.Close()
	defer secure.Close()
	get := func(sn *supernode.Supernode, extra ...string) time.Duration {
		store := filepath.Join(dir, "store")
		os.RemoveAll(store)
		began := time.Now()
		args := append([]string{u, "-O", filepath.Join(dir, "out"), "--store", store, "--supernode", sn.GRPCAddr(), "-q"}, extra...)
		if out, err := exec.Command(dfgetBin, args...).CombinedOutput(); err != nil {
			b.Fatalf("dfget: %v %s", err, out)
		}
		return time.Since(began)
	}
	// Warm both seeds: the timed runs fetch nothing from the origin.
	get(plain)
	get(secure, tlsArgs...)
	b.ResetTimer()
	var tPlain, tTLS time.Duration
	for i := 0; i < b.N; i++ {
		tPlain += get(plain)
		tTLS += get(secure, tlsArgs...)
	}
	b.StopTimer()
	mib := float64(c.Size) * float64(b.N) / (1 << 20)
	b.ReportMetric(mib/tPlain.Seconds(), "plain-MiB/s")
	b.ReportMetric(mib/tTLS.Seconds(), "tls-MiB/s")
	b.ReportMetric(tTLS.Seconds()/tPlain.Seconds(), "tls-time-ratio")
}
