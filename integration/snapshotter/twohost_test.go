package snapshotter

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/snapshotter"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	_ = l.Close()
	return a
}

// TestTwoHostsShareLayers: two hosts (each a dfly snapshotter in P2P mode + its own
// containerd, on loopback) pull the same lazy image; the second host gets the layers
// from the swarm, so the registry serves about one copy in all.
func TestTwoHostsShareLayers(t *testing.T) {
	requireAll(t)
	reg := StartRegistry()
	defer reg.Close()
	const size = 32 << 20
	dir := t.TempDir()
	files, err := BusyboxFiles()
	if err != nil {
		t.Fatal(err)
	}
	small := []byte("two hosts\n")
	files = append(files, File{Name: "small/", Dir: true, Mode: 0o755}, File{Name: "small/file", Mode: 0o644, Data: small},
		File{Name: "big", Mode: 0o644, Size: size, Seed: 11})
	p := filepath.Join(dir, "l.tar")
	if err := WriteLayerTar(p, files); err != nil {
		t.Fatal(err)
	}
	plain, lazy := reg.Host()+"/two/plain:1", reg.Host()+"/two/lazy:1"
	if _, err := PushImage(plain, p); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshotter.Convert(context.Background(), plain, lazy, &snapshotter.Resolver{}, snapshotter.ConvertOptions{CompressionLevel: 1}); err != nil {
		t.Fatal(err)
	}
	imgBytes, _ := imageBytes(t, lazy)

	// The supernode (seed) is built with the first host's binaries.
	snDir := t.TempDir()
	grpcAddr, upAddr := freeAddr(t), freeAddr(t)
	a := newHost(t, reg, "--supernode", grpcAddr, "--listen", freeAddr(t))
	super := startProc(t, filepath.Join(snDir, "supernode.log"), filepath.Join(a.bin, "supernode"),
		"--listen", grpcAddr, "--upload-listen", upAddr, "--advertise", upAddr, "--store", filepath.Join(snDir, "store"))
	defer super.stop(syscall.SIGTERM)
	waitFor(t, "supernode", 30*time.Second, func() bool {
		c, err := net.Dial("tcp", grpcAddr)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})
	b := newHost(t, reg, "--supernode", grpcAddr, "--listen", freeAddr(t))

	before := reg.BlobBytes()
	for i, h := range []*world{a, b} {
		if out, err := h.dfctl("image", "pull", lazy); err != nil {
			t.Fatalf("host %d pull: %v\n%s\n%s", i, err, out, h.snLog())
		}
		out, errOut, err := h.ctr("run", "--rm", "--snapshotter", "dfly", lazy, "two", "cat", "/small/file")
		if err != nil || out != string(small) {
			t.Fatalf("host %d run = %q %v %s\n%s", i, out, err, errOut, h.snLog())
		}
		waitFor(t, "host layers verified", 120*time.Second, func() bool {
			return strings.Contains(h.status(), "100% fetched, verified")
		})
	}
	st := b.status()
	t.Logf("second host status:\n%s", st)
	if strings.Contains(st, "peers 0)") {
		t.Errorf("second host got no bytes from peers:\n%s", st)
	}
	served := reg.BlobBytes() - before
	t.Logf("MEASURE two hosts: registry served %d bytes for a %d-byte image (%.2f copies)", served, imgBytes, float64(served)/float64(imgBytes))
	if served > imgBytes*3/2 {
		logB, _ := os.ReadFile(filepath.Join(b.dir, "snapshotter.log"))
		t.Fatalf("registry served %d bytes for two hosts; want about one copy of %d\n%s", served, imgBytes, logB)
	}
}
