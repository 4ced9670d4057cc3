package mirror

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Baseline tests: pulls without dfly, every client going through hosts.toml (server
// only, no mirror host) straight to the registry. They prove the harness and give the
// mirror tests their reference: exactly one copy of each layer from the registry.

// quickImage is the default run's image: 3 data layers of 4 MiB on the base.
func quickImage() ImageSpec { return ImageSpec{Layers: 3, LayerSize: 4 << 20, Seed: 1} }

// world is a registry with an image, a hosts dir pointing at it, and a containerd.
type world struct {
	reg   *Registry
	img   *Image
	hosts string
	ctrd  *Containerd
}

func newWorld(t *testing.T, opts ContainerdOptions, reg RegistryOptions) *world {
	t.Helper()
	RequireRoot(t)
	if _, err := ContainerdBinDir(opts.Version); err != nil {
		t.Skip(err.Error())
	}
	ctx := context.Background()
	w := &world{reg: StartRegistry(t, reg)}
	start := time.Now()
	img, err := BuildImage(ctx, w.reg, "test/base", "1", quickImage())
	if err != nil {
		t.Fatal(err)
	}
	w.img = img
	t.Logf("image %s: %d layers, %d bytes, built and pushed in %v", img.Ref, len(img.Layers), img.LayerBytes(), time.Since(start).Round(time.Millisecond))
	w.hosts = t.TempDir()
	if _, err := WriteHostsToml(w.hosts, w.reg.Host()); err != nil {
		t.Fatal(err)
	}
	opts.ConfigPath = w.hosts
	start = time.Now()
	w.ctrd = StartContainerd(t, opts)
	t.Logf("containerd %s ready in %v", w.ctrd.Version, time.Since(start).Round(time.Millisecond))
	w.reg.ResetStats()
	return w
}

// checkOneCopy checks that the registry served each layer exactly once.
func (w *world) checkOneCopy(t *testing.T) {
	t.Helper()
	s := w.reg.Stats()
	per, worst := s.Copies(w.img.Layers...)
	for _, l := range w.img.Layers {
		if per[l.Digest] != 1 {
			t.Errorf("registry served %.3f copies of layer %s (%d of %d bytes in %d GETs); want exactly 1",
				per[l.Digest], l.Digest, s.BlobBytes[l.Digest], l.Size, s.BlobGets[l.Digest])
		}
	}
	if s.TotalBlobBytes() != w.img.LayerBytes()+w.img.Config.Size {
		t.Errorf("registry served %d blob bytes; want the layers and the config, %d", s.TotalBlobBytes(), w.img.LayerBytes()+w.img.Config.Size)
	}
	t.Logf("registry: %.2f copies per layer at worst, %d blob bytes, %d manifest GETs, %d manifest HEADs, %d blob HEADs, %d 401s",
		worst, s.TotalBlobBytes(), s.ManifestGets, s.ManifestHeads, s.BlobHeads, s.Unauthorized)
}

func (w *world) ctrPullRun(t *testing.T, o PullOptions) {
	t.Helper()
	ctx := context.Background()
	o.Creds = w.reg.Credentials()
	start := time.Now()
	if out, err := w.ctrd.CtrPull(ctx, w.img.Ref, o); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("ctr pull took %v", time.Since(start).Round(time.Millisecond))
	w.checkOneCopy(t)
	start = time.Now()
	out, err := w.ctrd.CtrRun(ctx, w.img.Ref)
	if err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("ctr run = %q, %v; want ok", out, err)
	}
	out, err = w.ctrd.CtrRun(ctx, w.img.Ref, "cat", "/data/layer-3.txt")
	if err != nil || out != DataLayerNote(3, quickImage().Seed) {
		t.Fatalf("ctr run cat /data/layer-3.txt = %q, %v; want %q", out, err, DataLayerNote(3, quickImage().Seed))
	}
	t.Logf("ctr run ×2 took %v", time.Since(start).Round(time.Millisecond))
}

func TestBaselineContainerd16Ctr(t *testing.T) {
	w := newWorld(t, ContainerdOptions{Version: "1.6"}, RegistryOptions{Auth: true})
	w.ctrPullRun(t, PullOptions{})
}

func TestBaselineContainerd2Ctr(t *testing.T) {
	w := newWorld(t, ContainerdOptions{Version: "2"}, RegistryOptions{Auth: true})
	w.ctrPullRun(t, PullOptions{}) // through the daemon's transfer service
	t.Run("local fetch", func(t *testing.T) {
		if err := w.ctrd.RemoveImage(context.Background(), w.img.Ref); err != nil {
			t.Fatal(err)
		}
		w.reg.ResetStats()
		w.ctrPullRun(t, PullOptions{Local: true})
	})
}

// TestBaselineCRI pulls with crictl through the CRI plugin (registry config_path) of
// both versions.
func TestBaselineCRI(t *testing.T) {
	for _, v := range []string{"1.6", "2"} {
		t.Run("containerd "+v, func(t *testing.T) {
			if _, err := findTool("crictl"); err != nil {
				t.Skip(err.Error())
			}
			w := newWorld(t, ContainerdOptions{Version: v, CRI: true}, RegistryOptions{Auth: true})
			ctx := context.Background()
			start := time.Now()
			if out, err := w.ctrd.CrictlPull(ctx, w.img.Ref, w.reg.Credentials()); err != nil {
				t.Fatalf("%v\n%s\ncontainerd log:\n%s", err, out, w.ctrd.Log())
			}
			t.Logf("crictl pull took %v", time.Since(start).Round(time.Millisecond))
			w.checkOneCopy(t)
			out, err := w.ctrd.Crictl(ctx, "images", "--digests")
			if err != nil || !strings.Contains(out, "test/base") {
				t.Fatalf("crictl images = %q, %v; want test/base listed", out, err)
			}
		})
	}
}

func TestBaselineNerdctl(t *testing.T) {
	if _, err := findTool("nerdctl"); err != nil {
		t.Skip(err.Error())
	}
	w := newWorld(t, ContainerdOptions{Version: "2"}, RegistryOptions{Auth: true})
	ctx := context.Background()
	start := time.Now()
	if out, err := w.ctrd.NerdctlPull(ctx, w.img.Ref, PullOptions{Creds: w.reg.Credentials()}); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("nerdctl pull took %v", time.Since(start).Round(time.Millisecond))
	w.checkOneCopy(t)
	out, err := w.ctrd.NerdctlRun(ctx, w.img.Ref)
	if err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("nerdctl run = %q, %v; want ok", out, err)
	}
}

// TestBaselineWrongCredentials: a pull from the auth registry with a wrong password
// (or none) fails with an authorization error and no blob bytes, for ctr on 1.6 and
// 2.x (transfer service and --local) and crictl.
func TestBaselineWrongCredentials(t *testing.T) {
	bad := RegistryUser + ":wrong"
	wantAuthErr := func(t *testing.T, what string, out string, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s with a wrong password succeeded:\n%s", what, out)
		}
		if msg := strings.ToLower(err.Error()); !strings.Contains(msg, "401") && !strings.Contains(msg, "unauthorized") && !strings.Contains(msg, "authorization failed") {
			t.Fatalf("%s failed without saying unauthorized: %v", what, err)
		}
	}
	for _, v := range []string{"1.6", "2"} {
		t.Run("containerd "+v, func(t *testing.T) {
			w := newWorld(t, ContainerdOptions{Version: v, CRI: true}, RegistryOptions{Auth: true})
			ctx := context.Background()
			out, err := w.ctrd.CtrPull(ctx, w.img.Ref, PullOptions{Creds: bad})
			wantAuthErr(t, "ctr pull", out, err)
			out, err = w.ctrd.CtrPull(ctx, w.img.Ref, PullOptions{})
			wantAuthErr(t, "ctr pull without credentials", out, err)
			if v != "1.6" {
				out, err = w.ctrd.CtrPull(ctx, w.img.Ref, PullOptions{Creds: bad, Local: true})
				wantAuthErr(t, "ctr pull --local", out, err)
			}
			if _, ferr := findTool("crictl"); ferr == nil {
				out, err = w.ctrd.CrictlPull(ctx, w.img.Ref, bad)
				wantAuthErr(t, "crictl pull", out, err)
			}
			if s := w.reg.Stats(); s.Unauthorized == 0 || s.TotalBlobBytes() != 0 {
				t.Fatalf("registry: %d 401s, %d blob bytes; want some 401s and no blob bytes", s.Unauthorized, s.TotalBlobBytes())
			}
		})
	}
}

// TestBaselineNetNS: containerd (1.6 and 2.x) and its clients inside a network
// namespace of their own (loopback only) pull from the registry's proxy address in
// there; the image was pushed through the proxy's address in this namespace.
func TestBaselineNetNS(t *testing.T) {
	ns := NewNetNS(t, "base")
	ctx := context.Background()
	reg := StartRegistry(t, RegistryOptions{NetNS: ns})
	inside := reg.HostIn(ns)
	if inside != "127.0.0.1:5000" {
		t.Fatalf("registry address in %s is %q, want 127.0.0.1:5000", ns, inside)
	}
	img, err := BuildImage(ctx, reg, "test/ns", "1", ImageSpec{Layers: 1, LayerSize: 1 << 20, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	hosts := t.TempDir()
	if _, err := WriteHostsToml(hosts, inside); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1.6", "2"} {
		t.Run("containerd "+v, func(t *testing.T) {
			c := StartContainerd(t, ContainerdOptions{Version: v, ConfigPath: hosts, NetNS: ns})
			reg.ResetStats()
			if out, err := c.CtrPull(ctx, img.RefAt(inside), PullOptions{}); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if _, worst := reg.Stats().Copies(img.Layers...); worst != 1 {
				t.Fatalf("registry served %v copies of the layers; want 1", worst)
			}
			out, err := c.CtrRun(ctx, img.RefAt(inside))
			if err != nil || strings.TrimSpace(out) != "ok" {
				t.Fatalf("ctr run = %q, %v; want ok", out, err)
			}
		})
	}
}

// TestHostsTomlMirror checks the hosts.toml mechanics the dfly mirror relies on, with
// a FakeMirror in place of dfdaemon, for every client: containerd sends the pull to
// the mirror host with ?ns=<registry>, falls back to the server when the mirror
// answers 5xx or is down, and gets everything through a mirror that forwards.
func TestHostsTomlMirror(t *testing.T) {
	RequireRoot(t)
	ctx := context.Background()
	reg := StartRegistry(t, RegistryOptions{Auth: true})
	img, err := BuildImage(ctx, reg, "test/mirror", "1", ImageSpec{Layers: 2, LayerSize: 1 << 20, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	down, err := freeLoopbackAddr() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	hosts := t.TempDir()
	daemons := map[string]*Containerd{}
	absent := map[string]error{}
	for _, v := range []string{"1.6", "2"} {
		if _, err := ContainerdBinDir(v); err != nil {
			absent[v] = err
			continue
		}
		daemons[v] = StartContainerd(t, ContainerdOptions{Version: v, ConfigPath: hosts, CRI: true})
	}
	_, haveCrictl := findTool("crictl")
	_, haveNerdctl := findTool("nerdctl")
	type client struct {
		name    string
		version string
		skip    error
		pull    func(c *Containerd, mirror string) (string, error)
		// unauthMirror: the client sends no credentials to a mirror host, so a
		// forwarding mirror gets 401 and the client falls back to the server.
		unauthMirror bool
		remove       func(c *Containerd) error
	}
	ctrRemove := func(c *Containerd) error { return c.RemoveImage(ctx, img.Ref) }
	criRemove := func(c *Containerd) error {
		_, err := c.Crictl(ctx, "rmi", img.Ref)
		return err
	}
	creds := reg.Credentials()
	clients := []client{
		{name: "ctr", version: "1.6", pull: func(c *Containerd, _ string) (string, error) {
			return c.CtrPull(ctx, img.Ref, PullOptions{Creds: creds})
		}, remove: ctrRemove},
		{name: "ctr transfer", version: "2", pull: func(c *Containerd, _ string) (string, error) {
			return c.CtrPull(ctx, img.Ref, PullOptions{Creds: creds})
		}, remove: ctrRemove},
		{name: "ctr local", version: "2", pull: func(c *Containerd, _ string) (string, error) {
			return c.CtrPull(ctx, img.Ref, PullOptions{Creds: creds, Local: true})
		}, remove: ctrRemove},
		{name: "crictl", version: "1.6", skip: haveCrictl, pull: func(c *Containerd, _ string) (string, error) {
			return c.CrictlPull(ctx, img.Ref, creds)
		}, remove: criRemove},
		{name: "crictl", version: "2", skip: haveCrictl, pull: func(c *Containerd, _ string) (string, error) {
			return c.CrictlPull(ctx, img.Ref, creds)
		}, remove: criRemove},
		{name: "nerdctl", version: "2", skip: haveNerdctl, pull: func(c *Containerd, _ string) (string, error) {
			return c.NerdctlPull(ctx, img.Ref, PullOptions{Creds: creds})
		}, remove: ctrRemove, unauthMirror: true},
		{name: "nerdctl (creds for the mirror too)", version: "2", skip: haveNerdctl, pull: func(c *Containerd, mirror string) (string, error) {
			return c.NerdctlPull(ctx, img.Ref, PullOptions{Creds: creds, CredsAlsoFor: []string{mirror}})
		}, remove: ctrRemove},
	}
	for _, mode := range []string{"mirror fails", "mirror down", "mirror forwards"} {
		for _, cl := range clients {
			t.Run(mode+"/"+cl.name+" "+cl.version, func(t *testing.T) {
				if cl.skip != nil {
					t.Skip(cl.skip.Error())
				}
				if err := absent[cl.version]; err != nil {
					t.Skip(err.Error())
				}
				c := daemons[cl.version]
				var m *FakeMirror
				mirrorHost := down
				switch mode {
				case "mirror fails":
					m = StartFakeMirror(t, MirrorFail)
					mirrorHost = m.Host()
				case "mirror forwards":
					m = StartFakeMirror(t, MirrorForward)
					mirrorHost = m.Host()
				}
				if _, err := WriteHostsToml(hosts, reg.Host(), mirrorHost); err != nil {
					t.Fatal(err)
				}
				reg.ResetStats()
				start := time.Now()
				if out, err := cl.pull(c, mirrorHost); err != nil {
					t.Fatalf("%v\n%s\nmirror saw: %+v", err, out, mirrorRequests(m))
				}
				took := time.Since(start)
				defer func() {
					if err := cl.remove(c); err != nil {
						t.Errorf("remove the image after the test: %v", err)
					}
				}()
				if _, worst := reg.Stats().Copies(img.Layers...); worst != 1 {
					t.Errorf("registry served %.2f copies of a layer; want 1", worst)
				}
				if m == nil {
					t.Logf("pulled in %v", took.Round(time.Millisecond))
					return
				}
				reqs := m.Requests()
				var manifests, blobs, authed int
				for _, r := range reqs {
					if r.NS != reg.Host() {
						t.Errorf("mirror request %s %s has ns=%q; want %q", r.Method, r.Path, r.NS, reg.Host())
					}
					if r.Auth {
						authed++
					}
					switch kind, _ := classify(r.Method, r.Path); kind {
					case KindManifestGet, KindManifestHead:
						manifests++
					case KindBlobGet:
						if r.Status/100 == 2 {
							blobs++
						}
					}
				}
				t.Logf("pulled in %v; mirror saw %d requests (%d manifest, %d successful blob GETs, %d with Authorization)",
					took.Round(time.Millisecond), len(reqs), manifests, blobs, authed)
				if manifests == 0 {
					t.Errorf("the mirror got no manifest request: %+v", reqs)
				}
				if mode == "mirror forwards" && cl.unauthMirror {
					if blobs != 0 || authed != 0 {
						t.Errorf("%s sent credentials to the mirror (%d requests) and got %d blobs through it; want none (it did not before): %+v", cl.name, authed, blobs, reqs)
					}
				} else if mode == "mirror forwards" && blobs < len(img.Layers) {
					t.Errorf("the forwarding mirror served %d blobs; want every layer (%d) through it: %+v", blobs, len(img.Layers), reqs)
				}
			})
		}
	}
}

func mirrorRequests(m *FakeMirror) []MirrorRequest {
	if m == nil {
		return nil
	}
	return m.Requests()
}

// TestRegistryStoppedMidPull: with the blob rate capped, the registry stopped in the
// middle of a pull fails that pull; started again, the next pull completes. (The
// facility the mirror tests use for "registry stopped mid-pull".)
func TestRegistryStoppedMidPull(t *testing.T) {
	w := newWorld(t, ContainerdOptions{Version: "2"}, RegistryOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The image's 13 MB take ~13 s. Blob bytes are counted when an answer
	// ends, and the layers are fetched at once, so waiting for megabytes to
	// be counted could see the whole image done: stop once the first blob
	// (the config or the small base layer) is complete.
	w.reg.SetRate(1 << 20)
	errc := make(chan error, 1)
	go func() {
		_, err := w.ctrd.CtrPull(ctx, w.img.Ref, PullOptions{})
		errc <- err
	}()
	if err := waitUntil(ctx, "registry serving blobs", 30*time.Second, nil, func() error {
		if n := w.reg.Stats().TotalBlobBytes(); n == 0 {
			return fmt.Errorf("%d blob bytes served", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	w.reg.Stop()
	served := w.reg.Stats().TotalBlobBytes()
	if err := <-errc; err == nil {
		t.Fatalf("pull succeeded although the registry stopped after %d of %d bytes", served, w.img.LayerBytes())
	} else {
		t.Logf("pull failed as it should after %d of %d bytes: %.300s", served, w.img.LayerBytes(), err)
	}
	w.reg.SetRate(0)
	if err := w.reg.Start(); err != nil {
		t.Fatal(err)
	}
	if out, err := w.ctrd.CtrPull(ctx, w.img.Ref, PullOptions{}); err != nil {
		t.Fatalf("pull after the registry came back: %v\n%s", err, out)
	}
	if out, err := w.ctrd.CtrRun(ctx, w.img.Ref); err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("ctr run = %q, %v; want ok", out, err)
	}
}

// TestBigImageBaseline builds the mirror tests' ≥ 200 MB image and pulls it once
// with containerd 2.x straight from the registry: the reference time and exactly one
// copy of each layer. Skipped with -short.
func TestBigImageBaseline(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the 200 MB image")
	}
	RequireRoot(t)
	ctx := context.Background()
	reg := StartRegistry(t, RegistryOptions{})
	start := time.Now()
	img, err := BuildImage(ctx, reg, "test/big", "1", BigImageSpec(11))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MEASURE big image: %d layers, %d bytes, built and pushed in %v", len(img.Layers), img.LayerBytes(), time.Since(start).Round(time.Millisecond))
	if img.LayerBytes() < 200_000_000 {
		t.Fatalf("big image is %d bytes; want at least 200 MB", img.LayerBytes())
	}
	hosts := t.TempDir()
	if _, err := WriteHostsToml(hosts, reg.Host()); err != nil {
		t.Fatal(err)
	}
	c := StartContainerd(t, ContainerdOptions{Version: "2", ConfigPath: hosts})
	reg.ResetStats()
	start = time.Now()
	if out, err := c.CtrPull(ctx, img.Ref, PullOptions{}); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("MEASURE big image: ctr pull (containerd 2.x, no mirror) took %v", time.Since(start).Round(time.Millisecond))
	if per, worst := reg.Stats().Copies(img.Layers...); worst != 1 {
		t.Fatalf("registry served %v copies; want exactly 1 of each layer", per)
	}
	out, err := c.CtrRun(ctx, img.Ref, "cat", "/data/layer-4.txt")
	if err != nil || out != DataLayerNote(4, 11) {
		t.Fatalf("ctr run cat = %q, %v; want %q", out, err, DataLayerNote(4, 11))
	}
}
