package mirror

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestClassify(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	for _, c := range []struct {
		method, path string
		kind         RequestKind
		dgst         string
	}{
		{"GET", "/v2/", KindOther, ""},
		{"GET", "/v2/a/b/blobs/" + d, KindBlobGet, d},
		{"HEAD", "/v2/a/blobs/" + d, KindBlobHead, d},
		{"GET", "/v2/a/manifests/1", KindManifestGet, ""},
		{"HEAD", "/v2/a/b/c/manifests/" + d, KindManifestHead, ""},
		{"PUT", "/v2/a/manifests/1", KindPush, ""},
		{"PATCH", "/v2/a/blobs/uploads/x", KindPush, ""},
		{"GET", "/v2/_catalog", KindOther, ""},
	} {
		kind, dgst := classify(c.method, c.path)
		if kind != c.kind || dgst != c.dgst {
			t.Errorf("classify(%s %s) = %q %q, want %q %q", c.method, c.path, kind, dgst, c.kind, c.dgst)
		}
	}
}

func TestWriteHostsToml(t *testing.T) {
	dir := t.TempDir()
	p, err := WriteHostsToml(dir, "127.0.0.1:5000", "127.0.0.1:65001", "https://m.example:443")
	if err != nil {
		t.Fatal(err)
	}
	if p != filepath.Join(dir, "127.0.0.1:5000", "hosts.toml") {
		t.Fatalf("path %s", p)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := `server = "http://127.0.0.1:5000"
skip_verify = true

[host."http://127.0.0.1:65001"]
  capabilities = ["pull", "resolve"]
  skip_verify = true

[host."https://m.example:443"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
`
	if string(b) != want {
		t.Fatalf("hosts.toml:\n%s\nwant:\n%s", b, want)
	}
}

// TestRegistryHarness: the registry with auth takes a generated image, counts what it
// serves, refuses anonymous and wrong credentials, and survives Stop/Start.
func TestRegistryHarness(t *testing.T) {
	ctx := context.Background()
	reg := StartRegistry(t, RegistryOptions{Auth: true})
	start := time.Now()
	img, err := BuildImage(ctx, reg, "test/harness", "1", ImageSpec{Layers: 2, LayerSize: 1 << 20, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built and pushed %d layers (%d bytes) in %v", len(img.Layers), img.LayerBytes(), time.Since(start).Round(time.Millisecond))
	if len(img.Layers) != 3 || len(img.DiffIDs) != 3 {
		t.Fatalf("image has %d layers, %d diff IDs; want 3 (base + 2)", len(img.Layers), len(img.DiffIDs))
	}
	for _, l := range img.Layers[1:] {
		if l.Size < 1<<20 {
			t.Errorf("data layer %s is %d bytes compressed; want at least %d", l.Digest, l.Size, 1<<20)
		}
	}
	// The same spec gives the same layers.
	again, err := BuildImage(ctx, reg, "test/harness", "2", ImageSpec{Layers: 2, LayerSize: 1 << 20, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	if again.Manifest.Digest != img.Manifest.Digest {
		t.Errorf("same spec, different image digests %s and %s", img.Manifest.Digest, again.Manifest.Digest)
	}

	reg.ResetStats()
	ref, err := name.ParseReference(img.Ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Image(ref, remote.WithContext(ctx)); err == nil {
		t.Fatal("anonymous pull from the auth registry succeeded")
	}
	if _, err := remote.Image(ref, remote.WithContext(ctx), remote.WithAuth(&authn.Basic{Username: RegistryUser, Password: "wrong"})); err == nil {
		t.Fatal("pull with a wrong password succeeded")
	}
	if s := reg.Stats(); s.Unauthorized == 0 {
		t.Fatalf("no 401 counted: %+v", s)
	}
	reg.ResetStats()
	got, err := remote.Image(ref, remote.WithContext(ctx), remote.WithAuth(&authn.Basic{Username: RegistryUser, Password: RegistryPassword}))
	if err != nil {
		t.Fatal(err)
	}
	ls, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		_ = rc.Close()
	}
	s := reg.Stats()
	per, worst := s.Copies(img.Layers...)
	if worst != 1 || s.TotalBlobBytes() != img.LayerBytes() {
		t.Fatalf("registry served %v copies per layer (%d bytes); want exactly 1 of each (%d bytes)", per, s.TotalBlobBytes(), img.LayerBytes())
	}
	if s.ManifestGets == 0 {
		t.Fatalf("no manifest GET counted: %+v", s)
	}

	// Stop refuses connections; Start serves the same content on the same address.
	host := reg.Host()
	reg.Stop()
	if resp, err := http.Get("http://" + host + "/v2/"); err == nil {
		_ = resp.Body.Close()
		t.Fatalf("registry answers %s after Stop", resp.Status)
	}
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	if reg.Host() != host {
		t.Fatalf("address changed across Stop/Start: %s -> %s", host, reg.Host())
	}
	if _, err := remote.Image(ref, remote.WithContext(ctx), remote.WithAuth(&authn.Basic{Username: RegistryUser, Password: RegistryPassword})); err != nil {
		t.Fatalf("pull after restart: %v", err)
	}
}
