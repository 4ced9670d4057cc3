package mirror

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/readyproc"
)

// The dfly cases: the same pulls as the baselines, through each host's
// dfdaemon mirror, with a real supernode. Binaries are built once per test
// binary (dflyBins).

var (
	binsOnce sync.Once
	binsDir  string
	binsErr  error
)

// dflyBins builds supernode and dfdaemon from this module (once).
func dflyBins(t *testing.T) string {
	t.Helper()
	binsOnce.Do(func() {
		binsDir, binsErr = os.MkdirTemp("", "dfly-mirror-bin-")
		if binsErr != nil {
			return
		}
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			binsErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", binsDir+"/", "./cmd/supernode", "./cmd/dfdaemon")
		cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
		if b, err := cmd.CombinedOutput(); err != nil {
			binsErr = fmt.Errorf("build the dfly binaries: %w\n%s", err, b)
		}
	})
	if binsErr != nil {
		t.Fatal(binsErr)
	}
	return binsDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binsDir != "" {
		os.RemoveAll(binsDir)
	}
	os.Exit(code)
}

// startReady starts a dfly binary and returns the fields of its ready line.
func startReady(t *testing.T, dir, name, ready string, argv ...string) (*readyproc.Proc, map[string]string) {
	t.Helper()
	p, line, err := readyproc.Start(name, filepath.Join(dir, name+".log"), ready, 60*time.Second, argv...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(10 * time.Second) })
	return p, readyproc.Fields(line)
}

// dflyHost is one host: a dfdaemon (with its mirror) and a containerd
// whose hosts.toml sends pulls of the registry to that mirror first.
type dflyHost struct {
	name   string
	daemon *readyproc.Proc
	mirror string
	hosts  string
	ctrd   *Containerd
}

// dflySwarm is a registry with an image, a supernode and n hosts.
type dflySwarm struct {
	reg    *Registry
	img    *Image
	sn     *readyproc.Proc
	grpc   string
	upload string // the supernode's upload server (and /debug/state)
	hosts  []*dflyHost
	dir    string
}

func newDflySwarm(t *testing.T, n int, version string, reg RegistryOptions, spec ImageSpec) *dflySwarm {
	t.Helper()
	return newDflySwarmWith(t, n, ContainerdOptions{Version: version}, reg, spec)
}

func newDflySwarmWith(t *testing.T, n int, copts ContainerdOptions, reg RegistryOptions, spec ImageSpec) *dflySwarm {
	t.Helper()
	RequireRoot(t)
	if _, err := ContainerdBinDir(copts.Version); err != nil {
		t.Skip(err.Error())
	}
	bins := dflyBins(t)
	ctx := context.Background()
	s := &dflySwarm{reg: StartRegistry(t, reg), dir: shortTempDir(t, "dfly-mirror-")}
	img, err := BuildImage(ctx, s.reg, "test/app", "1", spec)
	if err != nil {
		t.Fatal(err)
	}
	s.img = img
	var f map[string]string
	s.sn, f = startReady(t, s.dir, "supernode", "supernode listening", filepath.Join(bins, "supernode"),
		"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--store", filepath.Join(s.dir, "sn"), "--log-level", "debug")
	s.grpc, s.upload = f["grpc"], f["upload"]
	for i := range n {
		h := &dflyHost{name: fmt.Sprintf("h%d", i)}
		hd := filepath.Join(s.dir, h.name)
		var df map[string]string
		h.daemon, df = startReady(t, s.dir, h.name+"-dfdaemon", "dfdaemon ready", filepath.Join(bins, "dfdaemon"),
			"--supernode", s.grpc, "--listen", "127.0.0.1:0", "--sock", filepath.Join(hd, "d.sock"), "--store", filepath.Join(hd, "store"),
			"--host-id", h.name, "--mirror-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log-level", "debug")
		h.mirror = df["mirror"]
		h.hosts = filepath.Join(hd, "certs.d")
		if _, err := WriteHostsToml(h.hosts, s.reg.Host(), h.mirror); err != nil {
			t.Fatal(err)
		}
		co := copts
		co.ConfigPath = h.hosts
		h.ctrd = StartContainerd(t, co)
		s.hosts = append(s.hosts, h)
	}
	s.reg.ResetStats()
	return s
}

// checkCopies asserts that the registry served at most max copies of each
// layer (counted by the registry's own proxy, not by dfly).
func (s *dflySwarm) checkCopies(t *testing.T, max float64) {
	t.Helper()
	st := s.reg.Stats()
	per, worst := st.Copies(s.img.Layers...)
	for _, l := range s.img.Layers {
		if per[l.Digest] > max {
			t.Errorf("registry served %.3f copies of layer %s (%d GETs) to %d hosts; want ≤ %.2f", per[l.Digest], l.Digest, st.BlobGets[l.Digest], len(s.hosts), max)
		}
	}
	t.Logf("registry: %.3f copies per layer at worst for %d hosts; %d blob bytes, %d manifest GETs, %d blob HEADs, %d 401s",
		worst, len(s.hosts), st.TotalBlobBytes(), st.ManifestGets, st.BlobHeads, st.Unauthorized)
}

// pullAll pulls the image on every host at once with pull, then runs it.
func (s *dflySwarm) pullAll(t *testing.T, pull func(h *dflyHost) (string, error)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(s.hosts))
	start := time.Now()
	for i, h := range s.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := pull(h)
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w\n%s", h.name, err, out)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d hosts pulled %d bytes of layers each in %v", len(s.hosts), s.img.LayerBytes(), time.Since(start).Round(time.Millisecond))
}

func (s *dflySwarm) runAll(t *testing.T) {
	t.Helper()
	for _, h := range s.hosts {
		out, err := h.ctrd.CtrRun(context.Background(), s.img.Ref, "cat", "/data/layer-2.txt")
		if err != nil || out != DataLayerNote(2, quickImage().Seed) {
			t.Fatalf("%s: ctr run cat /data/layer-2.txt = %q, %v", h.name, out, err)
		}
	}
}

// noSecretAnywhere greps every log and store file for the credential.
func (s *dflySwarm) noSecretAnywhere(t *testing.T) {
	t.Helper()
	user, pass := RegistryUser, RegistryPassword
	basic := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	if resp, err := http.Get("http://" + s.upload + "/debug/state"); err != nil {
		t.Errorf("supernode /debug/state: %v", err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), pass) || strings.Contains(string(b), basic) {
			t.Error("the registry credential appears in the supernode's /debug/state")
		}
	}
	for _, p := range append([]*readyproc.Proc{s.sn}, func() (ps []*readyproc.Proc) {
		for _, h := range s.hosts {
			ps = append(ps, h.daemon)
		}
		return
	}()...) {
		p.Stop(10 * time.Second)
	}
	filepath.WalkDir(s.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".sock") {
			return nil
		}
		if strings.Contains(path, "/certs.d/") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err == nil && (strings.Contains(string(b), pass) || strings.Contains(string(b), basic)) {
			t.Errorf("the registry credential appears in %s", path)
		}
		return nil
	})
}

func dflyPullCtr(t *testing.T, version string) {
	s := newDflySwarm(t, 3, version, RegistryOptions{Auth: true}, quickImage())
	ctx := context.Background()
	s.pullAll(t, func(h *dflyHost) (string, error) {
		return h.ctrd.CtrPull(ctx, s.img.Ref, PullOptions{Creds: s.reg.Credentials()})
	})
	s.checkCopies(t, 1.05)
	s.runAll(t)

	// A host that knows the digest but has no credentials gets nothing from
	// the mirror (the registry's 401), although its daemon's swarm holds it.
	l := s.img.Layers[1]
	resp, err := http.Get(fmt.Sprintf("http://%s/v2/test/app/blobs/%s?ns=%s", s.hosts[0].mirror, l.Digest, s.reg.Host()))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || int64(len(body)) >= l.Size {
		t.Fatalf("blob GET without credentials: HTTP %d, %d bytes; want the registry's 401", resp.StatusCode, len(body))
	}
	s.noSecretAnywhere(t)
}

func TestDflyMirrorContainerd16(t *testing.T) { dflyPullCtr(t, "1.6") }
func TestDflyMirrorContainerd2(t *testing.T)  { dflyPullCtr(t, "2") }

// TestDflyMirrorWrongCredentials: a pull with wrong credentials fails as
// it does without dfly.
func TestDflyMirrorWrongCredentials(t *testing.T) {
	s := newDflySwarm(t, 1, "1.6", RegistryOptions{Auth: true}, quickImage())
	out, err := s.hosts[0].ctrd.CtrPull(context.Background(), s.img.Ref, PullOptions{Creds: RegistryUser + ":wrong"})
	if err == nil {
		t.Fatalf("a pull with wrong credentials succeeded:\n%s", out)
	}
	if st := s.reg.Stats(); st.TotalBlobBytes() != 0 {
		t.Fatalf("the registry served %d blob bytes to a host with wrong credentials", st.TotalBlobBytes())
	}
}

// TestDflyMirrorFailSafe: a host pulling what another holds takes no blob
// bytes from the registry; with its daemon stopped, the same pull goes
// straight to the registry (hosts.toml's server) and runs.
func TestDflyMirrorFailSafe(t *testing.T) {
	s := newDflySwarm(t, 2, "1.6", RegistryOptions{}, quickImage())
	ctx := context.Background()
	a, b := s.hosts[0], s.hosts[1]
	if out, err := a.ctrd.CtrPull(ctx, s.img.Ref, PullOptions{}); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// B pulls what A holds: the registry serves B its manifests, and B's
	// blobs come from the swarm.
	s.reg.ResetStats()
	if out, err := b.ctrd.CtrPull(ctx, s.img.Ref, PullOptions{}); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if st := s.reg.Stats(); st.TotalBlobBytes() != 0 {
		t.Fatalf("the second host's pull took %d blob bytes from the registry; want its layers from the swarm", st.TotalBlobBytes())
	}
	s.runAll(t)

	// Daemon stopped: containerd goes to the registry itself.
	b.daemon.Stop(10 * time.Second)
	if err := b.ctrd.RemoveImage(ctx, s.img.Ref); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ctrd.Ctr(ctx, "content", "prune", "references"); err != nil {
		t.Logf("content prune: %v", err)
	}
	if out, err := b.ctrd.CtrPull(ctx, s.img.Ref, PullOptions{}); err != nil {
		t.Fatalf("pull with the daemon stopped: %v\n%s", err, out)
	}
	out, err := b.ctrd.CtrRun(ctx, s.img.Ref)
	if err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("run after a pull without the daemon: %q %v", out, err)
	}
}

// TestDflyMirrorCRI: crictl pulls through containerd's CRI plugin
// (registry config_path) go through the mirror too.
func TestDflyMirrorCRI(t *testing.T) {
	for _, v := range []string{"1.6", "2"} {
		t.Run("containerd "+v, func(t *testing.T) {
			s := newDflySwarmWith(t, 2, ContainerdOptions{Version: v, CRI: true}, RegistryOptions{Auth: true}, quickImage())
			if _, err := exec.LookPath(filepath.Join(ToolsDir(), "crictl")); err != nil {
				t.Skipf("crictl not built (.ci/install-go-tools): %v", err)
			}
			s.pullAll(t, func(h *dflyHost) (string, error) {
				return h.ctrd.CrictlPull(context.Background(), s.img.Ref, s.reg.Credentials())
			})
			s.checkCopies(t, 1.05)
		})
	}
}

// TestDflyMirrorNerdctl: nerdctl pull and run through the mirror. The
// registry is public here: nerdctl sends a registry's credentials only to
// that registry's host, so with an authenticated registry it passes the
// mirror by unless its docker config also holds credentials for the
// mirror's address (see docs/containerd.md).
func TestDflyMirrorNerdctl(t *testing.T) {
	s := newDflySwarm(t, 2, "2", RegistryOptions{}, quickImage())
	if _, err := exec.LookPath(filepath.Join(ToolsDir(), "nerdctl")); err != nil {
		t.Skipf("nerdctl not built (.ci/install-go-tools): %v", err)
	}
	ctx := context.Background()
	s.pullAll(t, func(h *dflyHost) (string, error) {
		return h.ctrd.NerdctlPull(ctx, s.img.Ref, PullOptions{})
	})
	s.checkCopies(t, 1.05)
	for _, h := range s.hosts {
		out, err := h.ctrd.NerdctlRun(ctx, s.img.Ref, "cat", "/data/layer-1.txt")
		if err != nil || out != DataLayerNote(1, quickImage().Seed) {
			t.Fatalf("%s: nerdctl run = %q, %v", h.name, out, err)
		}
	}
}

// TestDflyMirrorRegistryStoppedMidPull: the registry dies right after a
// host got the manifest; its layers come from the swarm (another host
// pulled the image) and the pull completes. A pull of content nobody holds
// fails with containerd's ordinary error.
func TestDflyMirrorRegistryStoppedMidPull(t *testing.T) {
	s := newDflySwarm(t, 2, "1.6", RegistryOptions{}, quickImage())
	ctx := context.Background()
	a, b := s.hosts[0], s.hosts[1]
	if out, err := a.ctrd.CtrPull(ctx, s.img.Ref, PullOptions{}); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	other, err := BuildImage(ctx, s.reg, "test/other", "1", ImageSpec{Layers: 1, LayerSize: 1 << 20, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	s.reg.ResetStats()
	done := make(chan error, 1)
	go func() {
		out, err := b.ctrd.CtrPull(ctx, s.img.Ref, PullOptions{})
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
		done <- err
	}()
	stopped := false
	for !stopped {
		select {
		case err := <-done:
			t.Fatalf("the pull ended before the registry served its manifest: %v", err)
		case <-time.After(2 * time.Millisecond):
		}
		if s.reg.Stats().ManifestGets > 0 {
			s.reg.Stop()
			stopped = true
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("pull with the registry stopped after the manifest: %v", err)
	}
	out, err := b.ctrd.CtrRun(ctx, s.img.Ref)
	if err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("run: %q %v", out, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if out, err := b.ctrd.CtrPull(cctx, other.Ref, PullOptions{}); err == nil {
		t.Fatalf("a pull of an image nobody holds succeeded with the registry stopped:\n%s", out)
	} else if cctx.Err() != nil {
		t.Fatalf("the pull hung instead of failing: %v", err)
	}
}
