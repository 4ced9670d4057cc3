package peer

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/supernode"
)

// BenchmarkSwarmForegroundRead measures the latency of a foreground read
// (Task.ReadAt of 4 KiB from a block the host does not hold) through the
// swarm with a real in-process supernode whose seed is still streaming the
// content from a real origin: the lazy filesystem's case. "seeded" reads
// after the seed holds everything (the peer side alone); "streaming" reads
// while the seed still fetches (a read may wait for the seed's origin
// fetch); "background" reads while, besides, a whole download of the same
// task (the prefetcher's case) keeps the swarm busy. ns/op is the mean
// latency; p50-ms and p99-ms are reported too.
//
//	go test -run XXX -bench SwarmForegroundRead -benchtime 100x ./peer
func BenchmarkSwarmForegroundRead(b *testing.B) {
	for _, mode := range []string{"seeded", "streaming", "background"} {
		b.Run(mode, func(b *testing.B) { benchForegroundRead(b, mode == "seeded", mode == "background") })
	}
}

func benchForegroundRead(b *testing.B, seeded, background bool) {
	const size = 1 << 30
	o, err := origin.Start(origin.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { o.Close() })
	url := o.Add("big.bin", origin.Content{Size: size, Seed: 7})
	sn, err := supernode.Start(supernode.Config{StoreDir: b.TempDir(), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0",
		Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sn.Close() })
	p := newTestPeer(b, nil, "reader", sn.GRPCAddr(), false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t, err := p.engine.Open(ctx, Request{URL: url})
	if err != nil {
		b.Fatal(err)
	}
	for seeded {
		if missing, err := sn.Store().Missing(t.ID()); err == nil && len(missing) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	if background {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = p.engine.Download(ctx, Request{URL: url}, DownloadOptions{})
		}()
	}
	meta := t.Info()
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 4096)
	lat := make([]time.Duration, 0, b.N)
	before := p.swarm.Stats()
	held0 := meta.NumBlocks() - len(t.Missing())
	began0 := time.Now()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		idx := rng.IntN(meta.NumBlocks())
		for tries := 0; p.store.HasBlock(t.ID(), idx) && tries < 100; tries++ {
			idx = rng.IntN(meta.NumBlocks())
		}
		began := time.Now()
		if _, err := t.ReadAt(ctx, buf, int64(idx)*meta.BlockSize+meta.BlockSize/2); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(began))
	}
	b.StopTimer()
	after := p.swarm.Stats()
	slices.Sort(lat)
	if background {
		held := meta.NumBlocks() - len(t.Missing()) - held0 - b.N
		b.ReportMetric(float64(held)*float64(meta.BlockSize)/1e6/time.Since(began0).Seconds(), "bg-MB/s")
	}
	if !background { // with a background download these counters mix both kinds of fetch
		b.ReportMetric((after.WaitSeconds-before.WaitSeconds)*1000/float64(b.N), "wait-ms/op")
		b.ReportMetric((after.TransferSeconds-before.TransferSeconds)*1000/float64(b.N), "xfer-ms/op")
		b.ReportMetric(float64(after.Syncs-before.Syncs)/float64(b.N), "syncs/op")
	}
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
