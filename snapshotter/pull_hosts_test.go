package snapshotter

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestResolverFollowsHostsDir: the layers containerd downloads itself
// (non-eStargz ones) go where hosts.toml says — through the host's dfly
// mirror first — and registries without a hosts directory go direct.
func TestResolverFollowsHostsDir(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	regHost := strings.TrimPrefix(reg.URL, "http://")
	img, err := random.Image(1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(regHost + "/app:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse(reg.URL)
	var mu sync.Mutex
	var seen []string
	proxy := httputil.NewSingleHostReverseProxy(target)
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path+"?"+r.URL.RawQuery)
		mu.Unlock()
		proxy.ServeHTTP(w, r)
	}))
	defer mirror.Close()

	hosts := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hosts, regHost), 0o755); err != nil {
		t.Fatal(err)
	}
	toml := "server = \"" + reg.URL + "\"\n\n[host.\"" + mirror.URL + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	if err := os.WriteFile(filepath.Join(hosts, regHost, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	fetch := func(r *Resolver) {
		t.Helper()
		res := containerdResolver(r)
		n, desc, err := res.Resolve(ctx, ref.Name())
		if err != nil {
			t.Fatalf("resolve: %v", err)
		}
		f, err := res.Fetcher(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := f.Fetch(ctx, desc)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		mf, _ := img.Manifest()
		layer := ocispec.Descriptor{MediaType: string(mf.Layers[0].MediaType), Digest: digest.Digest(mf.Layers[0].Digest.String()), Size: mf.Layers[0].Size}
		if len(b) == 0 {
			t.Fatal("empty manifest")
		}
		lrc, err := f.Fetch(ctx, layer)
		if err != nil {
			t.Fatalf("fetch layer: %v", err)
		}
		n2, _ := io.Copy(io.Discard, lrc)
		lrc.Close()
		if n2 != layer.Size {
			t.Fatalf("layer: %d bytes, want %d", n2, layer.Size)
		}
	}
	fetch(&Resolver{HostsDir: hosts})
	mu.Lock()
	got := strings.Join(seen, " ")
	mu.Unlock()
	if !strings.Contains(got, "/blobs/sha256:") || !strings.Contains(got, "ns="+url.QueryEscape(regHost)) {
		t.Fatalf("the mirror saw %q: want the layer blob with ?ns=%s", got, regHost)
	}
	mu.Lock()
	seen = nil
	mu.Unlock()
	fetch(&Resolver{HostsDir: t.TempDir()}) // no directory for the registry: direct
	fetch(&Resolver{})
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 0 {
		t.Fatalf("without hosts.toml the mirror saw %v", seen)
	}
}
