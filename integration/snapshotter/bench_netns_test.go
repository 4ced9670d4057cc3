package snapshotter

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"
	"testing"

	"github.com/dfly-p2p/dfly/integration/mirror"
	"github.com/dfly-p2p/dfly/integration/netbench"
	"github.com/dfly-p2p/dfly/snapshotter"
)

// BenchmarkFirstOutputNetns is BenchmarkFirstOutput on an emulated network:
// the registry in its own network namespace behind a 100 Mbit/s link (tc
// tbf both ways), the host's containerd, snapshotter and clients in
// another. Lazy with the prefetcher at its default rate, lazy without it,
// and a full pull into overlayfs; registry-MB/op is what the registry sent
// before the container's first output.
func BenchmarkFirstOutputNetns(b *testing.B) {
	requireAll(b)
	if err := netbench.Preflight(); err != nil {
		b.Skipf("network namespaces: %v", err)
	}
	bigMB := 200
	if v, err := strconv.Atoi(os.Getenv("DFLY_BENCH_BIG_MB")); err == nil && v > 0 {
		bigMB = v
	}
	ctx := context.Background()
	topo, err := netbench.Build(ctx, netbench.Spec{Peers: 1, IDCs: 1, PeerRate: 1e9, OriginRate: 100e6}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer topo.Teardown()
	reg := StartRegistry()
	defer reg.Close()
	addr := net.JoinHostPort(topo.Origin.IP.String(), "5000")
	ln, err := mirror.ListenIn(topo.Origin.NS, addr)
	if err != nil {
		b.Fatal(err)
	}
	reg.ServeOn(ln)
	dir := b.TempDir()
	tars, small, err := BuildTestImage(dir, int64(bigMB)<<20)
	if err != nil {
		b.Fatal(err)
	}
	plainLo, lazyLo := reg.Host()+"/bench/plain:1", reg.Host()+"/bench/lazy:1"
	if _, err := PushImage(plainLo, tars...); err != nil {
		b.Fatal(err)
	}
	if _, err := snapshotter.Convert(ctx, plainLo, lazyLo, &snapshotter.Resolver{}, snapshotter.ConvertOptions{
		Prioritized: []string{"/bin/busybox", "/small/file"}, CompressionLevel: 1}); err != nil {
		b.Fatal(err)
	}
	plain, lazy := addr+"/bench/plain:1", addr+"/bench/lazy:1"
	insecure := []string{"--insecure-registry", addr}
	runFirstOutput(b, reg, topo.Peers[0].NS, insecure, small, bigMB, []firstOutputMode{
		{"lazy-prefetch", lazy, "dfly", append([]string{"--prefetch-rate", "0"}, insecure...)},
		{"lazy-noprefetch", lazy, "dfly", append([]string{"--no-prefetch"}, insecure...)},
		{"full", plain, "overlayfs", insecure},
	})
}
