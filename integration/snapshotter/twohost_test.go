package snapshotter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dfly-p2p/dfly/snapshotter"
)

// netLab is three network namespaces: a "server" one holding a bridge (the registry and
// the supernode live there) and two hosts, each linked to the bridge by a veth pair.
type netLab struct {
	server, hostA, hostB string // namespace names under /run/netns
	serverIP, aIP, bIP   string
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNetLab builds the namespaces; t.Cleanup deletes them.
func newNetLab(t *testing.T) *netLab {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("two-host test needs ip (iproute2): %v", err)
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skipf("two-host test needs nsenter (util-linux): %v", err)
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	sfx := hex.EncodeToString(b[:])
	l := &netLab{server: "dfsn-" + sfx + "-s", hostA: "dfsn-" + sfx + "-a", hostB: "dfsn-" + sfx + "-b",
		serverIP: "10.77.0.1", aIP: "10.77.0.2", bIP: "10.77.0.3"}
	for _, ns := range []string{l.server, l.hostA, l.hostB} {
		ipCmd(t, "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		ipCmd(t, "-n", ns, "link", "set", "lo", "up")
	}
	ipCmd(t, "-n", l.server, "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", l.server, "addr", "add", l.serverIP+"/24", "dev", "br0")
	ipCmd(t, "-n", l.server, "link", "set", "br0", "up")
	for i, h := range []struct{ ns, ip string }{{l.hostA, l.aIP}, {l.hostB, l.bIP}} {
		peer := fmt.Sprintf("p%d", i)
		ipCmd(t, "-n", h.ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", l.server)
		ipCmd(t, "-n", l.server, "link", "set", peer, "master", "br0", "up")
		ipCmd(t, "-n", h.ns, "addr", "add", h.ip+"/24", "dev", "eth0")
		ipCmd(t, "-n", h.ns, "link", "set", "eth0", "up")
	}
	return l
}

// listenIn opens a TCP listener inside network namespace ns (a socket stays in the
// namespace it was created in). The thread that entered the namespace is discarded.
func listenIn(ns, addr string) (net.Listener, error) {
	type res struct {
		l   net.Listener
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- res{err: fmt.Errorf("open netns %s: %w", ns, err)}
			return
		}
		defer func() { _ = unix.Close(fd) }()
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- res{err: fmt.Errorf("enter netns %s: %w", ns, err)}
			return
		}
		l, err := net.Listen("tcp", addr)
		ch <- res{l, err}
	}()
	r := <-ch
	return r.l, r.err
}

// TestTwoHostsShareLayers: two hosts, each in its own network namespace with a dfly
// snapshotter in P2P mode (started with nsenter --net, so its FUSE mounts are visible
// to containerd) and its own containerd, pull the same lazy image from a registry in a
// third namespace, the containerd client running inside each host's namespace. The
// second host gets the layer mostly from the first one, so the registry serves about
// one copy in all.
func TestTwoHostsShareLayers(t *testing.T) {
	requireAll(t)
	reg := StartRegistry()
	defer reg.Close()
	lab := newNetLab(t)
	regLn, err := listenIn(lab.server, lab.serverIP+":5000")
	if err != nil {
		t.Fatal(err)
	}
	reg.ServeOn(regLn)
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
	// The test pushes and converts through the loopback listener; the hosts pull the
	// same repository through the server namespace's address.
	plain, lazyLocal := reg.Host()+"/two/plain:1", reg.Host()+"/two/lazy:1"
	if _, err := PushImage(plain, p); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshotter.Convert(context.Background(), plain, lazyLocal, &snapshotter.Resolver{}, snapshotter.ConvertOptions{CompressionLevel: 1}); err != nil {
		t.Fatal(err)
	}
	imgBytes, layers := imageBytes(t, lazyLocal)
	regHost := lab.serverIP + ":5000"
	lazy := regHost + "/two/lazy:1"

	// The supernode (seed) lives in the server namespace; it is built with the first
	// host's binaries, so it starts after that host.
	snDir := t.TempDir()
	grpcAddr, upAddr := lab.serverIP+":8002", lab.serverIP+":8001"
	hostArgs := func(ip string) []string {
		return []string{"--supernode", grpcAddr, "--listen", ip + ":8003", "--advertise", ip + ":8003", "--insecure-registry", regHost}
	}
	a := newHost(t, reg, lab.hostA, hostArgs(lab.aIP)...)
	super := startProc(t, filepath.Join(snDir, "supernode.log"), "nsenter", "--net=/run/netns/"+lab.server, filepath.Join(a.bin, "supernode"),
		"--listen", grpcAddr, "--upload-listen", upAddr, "--advertise", upAddr, "--metrics-listen", "", "--store", filepath.Join(snDir, "store"))
	defer super.stop(syscall.SIGTERM)
	waitFor(t, "supernode", 30*time.Second, func() bool {
		return exec.Command("nsenter", "--net=/run/netns/"+lab.hostA, "bash", "-c", "exec 3<>/dev/tcp/"+lab.serverIP+"/8002").Run() == nil
	})
	b := newHost(t, reg, lab.hostB, hostArgs(lab.bIP)...)

	before := reg.BlobBytes()
	var servedA int64
	for i, h := range []*world{a, b} {
		if out, err := h.dfctl("image", "pull", "--insecure-registry", regHost, lazy); err != nil {
			t.Fatalf("host %d pull: %v\n%s\n%s", i, err, out, h.snLog())
		}
		out, errOut, err := h.ctr("run", "--rm", "--snapshotter", "dfly", lazy, "two", "cat", "/small/file")
		if err != nil || out != string(small) {
			t.Fatalf("host %d run = %q %v %s\n%s", i, out, err, errOut, h.snLog())
		}
		waitFor(t, "host layers verified", 120*time.Second, func() bool {
			return strings.Count(h.status(), "100% fetched, verified") == len(layers)
		})
		if i == 0 {
			servedA = reg.BlobBytes() - before
		}
	}
	st := b.status()
	t.Logf("second host status:\n%s", st)
	if strings.Contains(st, "peers 0)") {
		t.Errorf("second host got no bytes from peers:\n%s", st)
	}
	served := reg.BlobBytes() - before
	t.Logf("MEASURE two hosts in network namespaces: registry served %d bytes for a %d-byte image (%.2f copies; %d while host A pulled, %d for host B)",
		served, imgBytes, float64(served)/float64(imgBytes), servedA, served-servedA)
	if served > imgBytes*3/2 {
		logB, _ := os.ReadFile(filepath.Join(b.dir, "snapshotter.log"))
		t.Fatalf("registry served %d bytes for two hosts; want about one copy of %d\n%s", served, imgBytes, logB)
	}
	if served-servedA > imgBytes/4 {
		t.Errorf("registry served %d bytes for the second host; want most of its layer from the first host/seed", served-servedA)
	}
}
