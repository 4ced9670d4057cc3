package mirror

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/netbench"
)

// fleetResult is one fleet pull.
type fleetResult struct {
	hosts  int
	dfly   bool
	wall   time.Duration
	took   []time.Duration
	worst  float64 // registry copies of the worst layer
	bytes  int64   // registry blob bytes
	layers int64   // the image's layer bytes
	bound  time.Duration
}

// TestDflyMirrorFiveHosts is the fleet case: five hosts in network
// namespaces (100 Mbit/s each, the registry's host 1 Gbit/s), each with
// its own containerd and dfdaemon, pull the same ordinary 219 MB image at
// once through hosts.toml and run it. The registry serves about one copy
// of every layer (counted by its proxy), not five.
func TestDflyMirrorFiveHosts(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the 219 MB five-host pull takes about a minute")
	}
	for _, v := range []string{"1.6", "2"} {
		t.Run("containerd "+v, func(t *testing.T) {
			r := runFleetWith(t, 5, true, v)
			if r.worst > 1.05 {
				t.Errorf("registry served %.3f copies of a layer to %d hosts; want ≤ 1.05", r.worst, r.hosts)
			}
		})
	}
}

// runFleetWith builds n hosts in network namespaces and pulls the big image on
// all of them at once, through their dfly mirrors (dfly) or straight from
// the registry (native), with containerd of the given version, then runs
// it on each.
func runFleetWith(t *testing.T, n int, dfly bool, version string) fleetResult {
	t.Helper()
	RequireRoot(t)
	if err := netbench.Preflight(); err != nil {
		t.Skipf("network namespaces: %v", err)
	}
	if _, err := ContainerdBinDir(version); err != nil {
		t.Skip(err.Error())
	}
	bins := dflyBins(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	topo, err := netbench.Build(ctx, netbench.Spec{Peers: n, IDCs: 1, PeerRate: 100e6, OriginRate: 1e9, SupernodeRate: 1e9},
		slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Teardown(); err != nil {
			t.Errorf("tear the namespaces down: %v", err)
		}
	})

	// The registry's proxy listens in the origin's namespace.
	reg := StartRegistry(t, RegistryOptions{Auth: true})
	regAddr, err := reg.ServeIn(topo.Origin.NS, net.JoinHostPort(topo.Origin.IP.String(), "5000"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	img, err := BuildImage(ctx, reg, "fleet/app", "1", BigImageSpec(11))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image: %d layers, %d MB, built and pushed in %v", len(img.Layers), img.LayerBytes()/1e6, time.Since(start).Round(time.Millisecond))
	ref := img.RefAt(regAddr)

	dir := shortTempDir(t, "dfly-fleet-")
	snAddr := net.JoinHostPort(topo.Supernode.IP.String(), "8002")
	if dfly {
		startReady(t, dir, "supernode", "supernode listening", inNetNS(topo.Supernode.NS, filepath.Join(bins, "supernode"),
			"--listen", snAddr, "--upload-listen", net.JoinHostPort(topo.Supernode.IP.String(), "8001"), "--metrics-listen", "",
			"--store", filepath.Join(dir, "sn"), "--log-level", "info")...)
	}
	type host struct {
		name string
		ctrd *Containerd
	}
	var hosts []host
	for _, p := range topo.Peers {
		hd := filepath.Join(dir, p.Name)
		if err := os.MkdirAll(hd, 0o755); err != nil {
			t.Fatal(err)
		}
		certs := filepath.Join(hd, "certs.d")
		// Native: the registry itself as the one host (containerd 1.6 cannot
		// decode a hosts.toml without a host table).
		mirrors := []string{regAddr}
		if dfly {
			args := []string{"--supernode", snAddr, "--listen", net.JoinHostPort(p.IP.String(), "8003"), "--sock", filepath.Join(hd, "d.sock"),
				"--store", filepath.Join(hd, "store"), "--host-id", p.Name, "--mirror-listen", "127.0.0.1:65001", "--metrics-listen", "",
				"--mirror-insecure", regAddr, "--log-level", "info"}
			// DFLY_BENCH_DAEMON_ARGS adds dfdaemon flags (experiments, e.g. --direct-io).
			args = append(args, strings.Fields(os.Getenv("DFLY_BENCH_DAEMON_ARGS"))...)
			startReady(t, dir, p.Name+"-dfdaemon", "dfdaemon ready", inNetNS(p.NS, append([]string{filepath.Join(bins, "dfdaemon")}, args...)...)...)
			mirrors = []string{"127.0.0.1:65001"}
		}
		if _, err := WriteHostsToml(certs, regAddr, mirrors...); err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, host{p.Name, StartContainerd(t, ContainerdOptions{Version: version, ConfigPath: certs, NetNS: p.NS})})
	}
	reg.ResetStats()

	var wg sync.WaitGroup
	res := fleetResult{hosts: n, dfly: dfly, took: make([]time.Duration, n), layers: img.LayerBytes(),
		bound: time.Duration(float64(img.LayerBytes()*8) / 100e6 * float64(time.Second))}
	errs := make([]error, n)
	start = time.Now()
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			began := time.Now()
			out, err := h.ctrd.CtrPull(ctx, ref, PullOptions{Creds: reg.Credentials()})
			res.took[i] = time.Since(began)
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w\n%s", h.name, err, out)
			}
		}()
	}
	wg.Wait()
	res.wall = time.Since(start)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := reg.Stats()
	_, res.worst = st.Copies(img.Layers...)
	res.bytes = st.TotalBlobBytes()
	var times []string
	for i, d := range res.took {
		times = append(times, fmt.Sprintf("%s %.1fs", hosts[i].name, d.Seconds()))
	}
	t.Logf("dfly=%v: %d hosts pulled %d MB at once in %.1fs (one host's link bound %.1fs): %s; registry %.3f copies per layer at worst, %d blob bytes",
		dfly, n, img.LayerBytes()/1e6, res.wall.Seconds(), res.bound.Seconds(), strings.Join(times, ", "), res.worst, res.bytes)
	for _, h := range hosts {
		out, err := h.ctrd.CtrRun(ctx, ref, "cat", "/data/layer-4.txt")
		if err != nil || out != DataLayerNote(4, 11) {
			t.Fatalf("%s: ctr run = %q, %v", h.name, out, err)
		}
	}
	return res
}
