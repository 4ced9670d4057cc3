package snapshotter

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/dfly-p2p/dfly/snapshotter"
)

// bigSize is the "200 MB random file".
const bigSize = 200 << 20

func requireAll(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("containerd integration test needs root (containerd, FUSE, overlay mounts); not running as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("containerd integration test needs /dev/fuse: %v", err)
	}
	for _, b := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2", "go"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("containerd integration test needs %s (Debian packages containerd, runc): %v", b, err)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("containerd integration test needs /bin/busybox (Debian package busybox-static)")
	}
}

// proc is a child process the test owns.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func startProc(t testing.TB, logPath string, name string, args ...string) *proc {
	t.Helper()
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { _ = cmd.Wait(); _ = lf.Close(); close(p.done) }()
	return p
}

// stop sends sig and waits (SIGKILL after 20 s).
func (p *proc) stop(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func waitFor(t testing.TB, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// world is a registry, a dfly snapshotter process and a private containerd.
type world struct {
	t        testing.TB
	dir      string
	bin      string
	reg      *Registry
	sn       *proc
	ctrd     *proc
	ctrdSock string
	snSock   string
	snRoot   string
	snArgs   []string // extra dfly-snapshotter flags
	ownsReg  bool
	netns    string // network namespace (under /run/netns) the host's daemons and clients run in; "" = this one
}

// inNetns returns the command line that runs name args in the host's network namespace
// (nsenter --net, which, unlike "ip netns exec", keeps the mount namespace: FUSE
// mounts stay visible to containerd).
func (w *world) inNetns(name string, args ...string) (string, []string) {
	if w.netns == "" {
		return name, args
	}
	return "nsenter", append([]string{"--net=/run/netns/" + w.netns, name}, args...)
}

func (w *world) startSnapshotter() {
	name, args := w.inNetns(filepath.Join(w.bin, "dfly-snapshotter"),
		append([]string{"--root", w.snRoot, "--address", w.snSock, "--log-level", "info", "--prefetch-rate", "10M", "--metrics-listen", "127.0.0.1:0"}, w.snArgs...)...)
	w.sn = startProc(w.t, filepath.Join(w.dir, "snapshotter.log"), name, args...)
	waitFor(w.t, "snapshotter socket", 30*time.Second, func() bool { _, err := os.Stat(w.snSock); return err == nil })
}

func (w *world) snLog() string {
	b, _ := os.ReadFile(filepath.Join(w.dir, "snapshotter.log"))
	return string(b)
}

func (w *world) ctr(args ...string) (string, string, error) {
	cmd := exec.Command("ctr", append([]string{"--address", w.ctrdSock, "-n", "dfly-test"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func (w *world) dfctl(args ...string) (string, error) {
	name, args := w.inNetns(filepath.Join(w.bin, "dfctl"), append(args, "--address", w.ctrdSock, "-n", "dfly-test")...)
	cmd := exec.Command(name, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (w *world) status() string {
	out, _ := exec.Command(filepath.Join(w.bin, "dfly-snapshotter"), "--status", "--root", w.snRoot).CombinedOutput()
	return string(out)
}

func newWorld(t testing.TB) *world {
	return newHost(t, nil, "")
}

// newHost starts a snapshotter (with extra flags) and a containerd, in network namespace
// netns ("" = this one); reg nil = a new registry.
func newHost(t testing.TB, reg *Registry, netns string, snArgs ...string) *world {
	requireAll(t)
	// Short paths: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "dfsn-")
	if err != nil {
		t.Fatal(err)
	}
	owns := reg == nil
	if owns {
		reg = StartRegistry()
	}
	w := &world{t: t, dir: dir, bin: filepath.Join(dir, "bin"), reg: reg, ownsReg: owns, snArgs: snArgs, netns: netns,
		ctrdSock: filepath.Join(dir, "ctrd.sock"), snSock: filepath.Join(dir, "dfly.sock"), snRoot: filepath.Join(dir, "sn")}
	t.Cleanup(func() { w.close() })
	build := exec.Command("go", "build", "-o", w.bin+"/", "github.com/dfly-p2p/dfly/cmd/dfly-snapshotter",
		"github.com/dfly-p2p/dfly/cmd/dfctl", "github.com/dfly-p2p/dfly/cmd/supernode")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build binaries: %v\n%s", err, out)
	}
	w.startSnapshotter()
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[proxy_plugins.dfly]
  type = "snapshot"
  address = %q
`, filepath.Join(dir, "ctrd-root"), filepath.Join(dir, "ctrd-state"), w.ctrdSock, w.ctrdSock+".ttrpc", w.snSock)
	cfgPath := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	name, args := w.inNetns("containerd", "--config", cfgPath)
	w.ctrd = startProc(t, filepath.Join(dir, "containerd.log"), name, args...)
	waitFor(t, "containerd socket", 30*time.Second, func() bool {
		_, _, err := w.ctr("version")
		return err == nil
	})
	return w
}

func (w *world) close() {
	if w.ctrd != nil {
		out, _, _ := w.ctr("task", "ls", "-q")
		for _, id := range strings.Fields(out) {
			_, _, _ = w.ctr("task", "kill", "-s", "SIGKILL", id)
			time.Sleep(200 * time.Millisecond)
			_, _, _ = w.ctr("task", "rm", "-f", id)
		}
		out, _, _ = w.ctr("container", "ls", "-q")
		for _, id := range strings.Fields(out) {
			_, _, _ = w.ctr("container", "rm", id)
		}
		w.ctrd.stop(syscall.SIGTERM)
		w.ctrd = nil
	}
	if w.sn != nil {
		w.sn.stop(syscall.SIGTERM)
		w.sn = nil
	}
	if w.ownsReg {
		w.reg.Close()
		w.ownsReg = false
	}
	// Nothing of ours may stay mounted.
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 4 && strings.HasPrefix(f[4], w.dir) {
				_ = syscall.Unmount(f[4], syscall.MNT_DETACH)
			}
		}
	}
	// Layer servers exit when their mounts end; make sure none of ours is left.
	for _, pid := range layerServers(w.dir) {
		deadline := time.Now().Add(30 * time.Second)
		for processAlive(pid) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if processAlive(pid) {
			stack, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stack", pid))
			var lines []string
			for _, l := range strings.Split(w.snLog(), "\n") {
				if strings.Contains(l, fmt.Sprintf("pid=%d ", pid)) {
					lines = append(lines, l)
				}
			}
			w.t.Errorf("layer server %d still runs 30 s after its mounts were detached; killing it\nkernel stack:\n%s\nits log:\n%s",
				pid, stack, strings.Join(lines, "\n"))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if os.Getenv("DFLY_KEEP_TEST_DIR") == "" {
		_ = os.RemoveAll(w.dir)
	} else {
		w.t.Logf("kept %s", w.dir)
	}
}

// layerServers returns the pids of the layer server processes serving mounts under dir.
func layerServers(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 1 && args[1] == snapshotter.LayerServerCommand && strings.Contains(string(b), "\x00"+dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

func imageBytes(t testing.TB, ref string) (int64, []v1.Descriptor) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, l := range m.Layers {
		n += l.Size
	}
	return n, m.Layers
}

func TestContainerdLazyPull(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	tars, small, err := BuildTestImage(w.dir, bigSize)
	if err != nil {
		t.Fatal(err)
	}
	plain := w.reg.Host() + "/test/plain:1"
	lazy := w.reg.Host() + "/test/lazy:1"
	if _, err := PushImage(plain, tars...); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshotter.Convert(ctx, plain, lazy, &snapshotter.Resolver{}, snapshotter.ConvertOptions{
		Prioritized: []string{"/bin/busybox", "/small/file"}, CompressionLevel: 1}); err != nil {
		t.Fatal(err)
	}
	for _, p := range tars {
		_ = os.Remove(p)
	}
	lazyBytes, lazyLayers := imageBytes(t, lazy)
	wantBig := sha256.New()
	if err := Generated(bigSize, 42, wantBig); err != nil {
		t.Fatal(err)
	}

	t.Run("lazy pull and run", func(t *testing.T) {
		before := w.reg.BlobBytes()
		start := time.Now()
		if out, err := w.dfctl("image", "pull", lazy); err != nil {
			t.Fatalf("dfctl image pull: %v\n%s\n%s", err, out, w.snLog())
		}
		pulled := time.Since(start)
		out, errOut, err := w.ctr("run", "--rm", "--snapshotter", "dfly", lazy, "lazy1", "cat", "/small/file")
		firstOutput := time.Since(start)
		served := w.reg.BlobBytes() - before
		if err != nil || out != string(small) {
			t.Fatalf("ctr run cat /small/file = %q, %v\n%s\n%s", out, err, errOut, w.snLog())
		}
		t.Logf("MEASURE lazy: pull %v, first output %v; registry served %d of %d image bytes (%.1f%%) by then",
			pulled.Round(time.Millisecond), firstOutput.Round(time.Millisecond), served, lazyBytes, 100*float64(served)/float64(lazyBytes))
		if served >= lazyBytes/2 {
			t.Fatalf("registry served %d bytes before the first output; want well under half of %d", served, lazyBytes)
		}
		for _, l := range lazyLayers {
			if !strings.Contains(w.snLog(), `msg="layer mounted lazily" layer=`+l.Digest.String()) {
				t.Errorf("layer %s was not mounted lazily; log:\n%s", l.Digest, w.snLog())
			}
		}
	})

	t.Run("prefetch completes and verifies", func(t *testing.T) {
		waitFor(t, "every layer verified", 120*time.Second, func() bool {
			return strings.Count(w.status(), "100% fetched, verified") == len(lazyLayers)
		})
		t.Logf("status:\n%s", w.status())
		out, errOut, err := w.ctr("run", "--rm", "--snapshotter", "dfly", lazy, "lazy2", "sha256sum", "/big")
		if err != nil || !strings.HasPrefix(out, hex.EncodeToString(wantBig.Sum(nil))) {
			t.Fatalf("sha256sum /big = %q %v %s; want %x", out, err, errOut, wantBig.Sum(nil))
		}
	})

	t.Run("snapshotter crash keeps running containers and remounts from the store", func(t *testing.T) {
		// A container that keeps running across the crash.
		if _, errOut, err := w.ctr("run", "-d", "--snapshotter", "dfly", lazy, "live1", "sh", "-c", "while true; do sleep 1; done"); err != nil {
			t.Fatalf("ctr run -d: %v %s", err, errOut)
		}
		if out, errOut, err := w.ctr("task", "exec", "--exec-id", "before", "live1", "cat", "/small/file"); err != nil || out != string(small) {
			t.Fatalf("exec before the crash = %q %v %s", out, err, errOut)
		}
		// A container created (not started) before the crash.
		if _, errOut, err := w.ctr("container", "create", "--snapshotter", "dfly", lazy, "lazy3", "cat", "/small/file"); err != nil {
			t.Fatalf("container create: %v %s", err, errOut)
		}
		w.sn.stop(syscall.SIGKILL) // a crash
		served := w.reg.BlobBytes()
		// While the snapshotter is down, the running container's reads of cached
		// files still work (the layer servers live on; /small/file's chunk is cached).
		if out, errOut, err := w.ctr("task", "exec", "--exec-id", "down", "live1", "cat", "/small/file"); err != nil || out != string(small) {
			t.Fatalf("exec while the snapshotter is down = %q %v %s", out, err, errOut)
		}
		w.startSnapshotter()
		waitFor(t, "layers restored", 30*time.Second, func() bool {
			return strings.Count(w.snLog(), "remote layer restored") >= len(lazyLayers)
		})
		if n := strings.Count(w.snLog(), "layer server still running; kept its mount"); n < len(lazyLayers) {
			t.Fatalf("%d layer mounts kept across the crash, want %d:\n%s", n, len(lazyLayers), w.snLog())
		}
		// containerd's proxy connection retries with a backoff of up to a few seconds.
		waitFor(t, "containerd reconnected to the snapshotter", 30*time.Second, func() bool {
			_, _, err := w.ctr("snapshots", "--snapshotter", "dfly", "ls")
			return err == nil
		})
		out, errOut, err := w.ctr("task", "exec", "--exec-id", "after1", "live1", "cat", "/small/file")
		if err != nil || out != string(small) {
			t.Fatalf("running container's cat /small/file after the crash = %q %v %s\n%s", out, err, errOut, w.snLog())
		}
		out, errOut, err = w.ctr("task", "exec", "--exec-id", "after2", "live1", "sha256sum", "/big")
		if err != nil || !strings.HasPrefix(out, hex.EncodeToString(wantBig.Sum(nil))) {
			t.Fatalf("running container's sha256sum /big after the crash = %q %v %s; want %x", out, err, errOut, wantBig.Sum(nil))
		}
		out, errOut, err = w.ctr("task", "start", "lazy3")
		if err != nil || out != string(small) {
			t.Fatalf("task start after restart = %q %v %s\n%s", out, err, errOut, w.snLog())
		}
		out, errOut, err = w.ctr("run", "--rm", "--snapshotter", "dfly", lazy, "lazy4", "sha256sum", "/big")
		if err != nil || !strings.HasPrefix(out, hex.EncodeToString(wantBig.Sum(nil))) {
			t.Fatalf("new container's sha256sum /big after the crash = %q %v %s", out, err, errOut)
		}
		_, _, _ = w.ctr("task", "rm", "lazy3")
		_, _, _ = w.ctr("container", "rm", "lazy3")
		_, _, _ = w.ctr("task", "kill", "-s", "SIGKILL", "live1")
		if got := w.reg.BlobBytes() - served; got != 0 {
			t.Fatalf("registry served %d bytes after the restart; want 0 (layers are complete in the store)", got)
		}
	})

	t.Run("plain gzip image falls back", func(t *testing.T) {
		start := time.Now()
		if out, err := w.dfctl("image", "pull", plain); err != nil {
			t.Fatalf("dfctl image pull (plain): %v\n%s", err, out)
		}
		out, errOut, err := w.ctr("run", "--rm", "--snapshotter", "dfly", plain, "plain1", "cat", "/small/file")
		if err != nil || out != string(small) {
			t.Fatalf("run plain image = %q %v %s", out, err, errOut)
		}
		t.Logf("MEASURE full pull (plain gzip, fallback path): first output %v", time.Since(start).Round(time.Millisecond))
		if !strings.Contains(w.snLog(), "path=local") {
			t.Fatalf("snapshotter log does not say which layers took the local path:\n%s", w.snLog())
		}
	})

	t.Run("TOC digest mismatch refuses the mount", func(t *testing.T) {
		// A single-layer image of its own, so no snapshot of it exists yet.
		files, _ := BusyboxFiles()
		files = append(files, File{Name: "small/", Dir: true, Mode: 0o755}, File{Name: "small/file", Mode: 0o644, Data: small},
			File{Name: "other", Mode: 0o644, Size: 1 << 20, Seed: 9})
		p := filepath.Join(w.dir, "badtoc.tar")
		if err := WriteLayerTar(p, files); err != nil {
			t.Fatal(err)
		}
		src := w.reg.Host() + "/test/badtoc-src:1"
		if _, err := PushImage(src, p); err != nil {
			t.Fatal(err)
		}
		conv := w.reg.Host() + "/test/badtoc-conv:1"
		if _, err := snapshotter.Convert(ctx, src, conv, &snapshotter.Resolver{}, snapshotter.ConvertOptions{CompressionLevel: 1}); err != nil {
			t.Fatal(err)
		}
		bad := w.reg.Host() + "/test/badtoc:1"
		pushWithAnnotation(t, conv, bad, "sha256:"+strings.Repeat("ab", 32))
		if out, err := w.dfctl("image", "pull", bad); err != nil {
			t.Fatalf("dfctl image pull (bad TOC): %v\n%s", err, out)
		}
		if !strings.Contains(w.snLog(), "TOC digest mismatch") {
			t.Fatalf("no TOC mismatch refusal in the log:\n%s", w.snLog())
		}
		// The fallback still gives a working image.
		out, errOut, err := w.ctr("run", "--rm", "--snapshotter", "dfly", bad, "bad1", "cat", "/small/file")
		if err != nil || out != string(small) {
			t.Fatalf("run image after refused mount = %q %v %s", out, err, errOut)
		}
	})

	t.Run("tampered chunk is EIO", func(t *testing.T) {
		tam := w.reg.Host() + "/test/tamper:1"
		files, _ := BusyboxFiles()
		files = append(files, File{Name: "t/", Dir: true, Mode: 0o755}, File{Name: "t/file", Mode: 0o644, Size: 1 << 20, Seed: 7})
		p := filepath.Join(w.dir, "tamper.tar")
		if err := WriteLayerTar(p, files); err != nil {
			t.Fatal(err)
		}
		src := w.reg.Host() + "/test/tamper-src:1"
		if _, err := PushImage(src, p); err != nil {
			t.Fatal(err)
		}
		if _, err := snapshotter.Convert(ctx, src, tam, &snapshotter.Resolver{}, snapshotter.ConvertOptions{CompressionLevel: 1, ChunkSize: 64 << 10}); err != nil {
			t.Fatal(err)
		}
		dgst, off := chunkOffset(t, tam, "t/file", 512<<10)
		w.reg.Tamper(dgst, off)
		if out, err := w.dfctl("image", "pull", tam); err != nil {
			t.Fatalf("dfctl image pull (tampered): %v\n%s", err, out)
		}
		out, errOut, err := w.ctr("run", "--rm", "--snapshotter", "dfly", tam, "tam1", "cat", "/t/file")
		if err == nil {
			t.Fatalf("reading a file with a tampered chunk succeeded (%d bytes)", len(out))
		}
		if !strings.Contains(errOut+out, "Input/output error") {
			t.Fatalf("want an I/O error, got %v: %s", err, errOut)
		}
		if !strings.Contains(w.snLog(), "chunk digest mismatch") {
			t.Fatalf("no chunk digest mismatch in the log")
		}
	})
}

// pushWithAnnotation copies src to dst with every layer's TOC digest annotation replaced.
func pushWithAnnotation(t *testing.T, src, dst, toc string) {
	t.Helper()
	sr, _ := name.ParseReference(src)
	dr, _ := name.ParseReference(dst)
	img, err := remote.Image(sr)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	ls, _ := img.Layers()
	base, err := mutate.ConfigFile(emptyLike(t, img), withoutLayers(cfg))
	if err != nil {
		t.Fatal(err)
	}
	var adds []mutate.Addendum
	for _, l := range ls {
		mt, _ := l.MediaType()
		adds = append(adds, mutate.Addendum{Layer: l, MediaType: mt, Annotations: map[string]string{estargz.TOCJSONDigestAnnotation: toc}})
	}
	out, err := mutate.Append(base, adds...)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(dr, out); err != nil {
		t.Fatal(err)
	}
}

// chunkOffset returns the only layer's digest of an image and a blob offset inside the
// chunk that holds byte fileOff of file.
func chunkOffset(t *testing.T, ref, file string, fileOff int64) (string, int64) {
	t.Helper()
	r, _ := name.ParseReference(ref)
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	l := ls[len(ls)-1]
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	er, err := estargz.Open(io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b))))
	if err != nil {
		t.Fatal(err)
	}
	ce, ok := er.ChunkEntryForOffset(file, fileOff)
	if !ok {
		t.Fatalf("no chunk of %s at %d", file, fileOff)
	}
	d, _ := l.Digest()
	return d.String(), ce.Offset + (ce.NextOffset()-ce.Offset)/2
}

func emptyLike(t *testing.T, img v1.Image) v1.Image {
	t.Helper()
	return mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
}

func withoutLayers(cfg *v1.ConfigFile) *v1.ConfigFile {
	c := cfg.DeepCopy()
	c.RootFS.DiffIDs = nil
	c.History = nil
	return c
}
