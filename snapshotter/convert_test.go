package snapshotter_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	testimg "github.com/dfly-p2p/dfly/integration/snapshotter"
	"github.com/dfly-p2p/dfly/snapshotter"
)

func TestConvertProducesVerifiableEstargz(t *testing.T) {
	reg := testimg.StartRegistry()
	defer reg.Close()
	dir := t.TempDir()
	l1, l2 := filepath.Join(dir, "1.tar"), filepath.Join(dir, "2.tar")
	if err := testimg.WriteLayerTar(l1, []testimg.File{{Name: "a/", Dir: true, Mode: 0o755}, {Name: "a/x", Mode: 0o644, Data: []byte("xx")}}); err != nil {
		t.Fatal(err)
	}
	if err := testimg.WriteLayerTar(l2, []testimg.File{{Name: "big", Mode: 0o600, Size: 300 << 10, Seed: 3}, {Name: "hot", Mode: 0o644, Data: []byte("hot")}}); err != nil {
		t.Fatal(err)
	}
	src, dst := reg.Host()+"/c/src:1", reg.Host()+"/c/dst:1"
	if _, err := testimg.PushImage(src, l1, l2); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshotter.Convert(context.Background(), src, dst, &snapshotter.Resolver{},
		snapshotter.ConvertOptions{Prioritized: []string{"/hot"}, ChunkSize: 64 << 10, CompressionLevel: 1}); err != nil {
		t.Fatal(err)
	}
	r, _ := name.ParseReference(dst)
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	cfg, _ := img.ConfigFile()
	layers, _ := img.Layers()
	if len(m.Layers) != 2 || len(cfg.RootFS.DiffIDs) != 2 {
		t.Fatalf("converted image has %d layers / %d diff IDs, want 2", len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	for i, l := range layers {
		rc, _ := l.Compressed()
		blob, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		er, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
		if err != nil {
			t.Fatalf("layer %d is not eStargz: %v", i, err)
		}
		ann := m.Layers[i].Annotations[estargz.TOCJSONDigestAnnotation]
		if ann == "" || digest.Digest(ann) != er.TOCDigest() {
			t.Fatalf("layer %d TOC annotation %q, TOC is %s", i, ann, er.TOCDigest())
		}
		// The diff ID in the config is the uncompressed tar's digest (containerd checks it).
		urc, _ := l.Uncompressed()
		h := digest.Canonical.Digester()
		n, _ := io.Copy(h.Hash(), urc)
		_ = urc.Close()
		if h.Digest().String() != cfg.RootFS.DiffIDs[i].String() || n == 0 {
			t.Fatalf("layer %d diff ID %s, uncompressed digest %s", i, cfg.RootFS.DiffIDs[i], h.Digest())
		}
	}
	// The prioritized file sits before the landmark in the second layer.
	rc, _ := layers[1].Uncompressed()
	tr := tar.NewReader(rc)
	var order []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		order = append(order, h.Name)
	}
	_ = rc.Close()
	if len(order) < 2 || order[0] != "hot" || order[1] != estargz.PrefetchLandmark {
		t.Fatalf("second layer order %v, want hot then %s", order, estargz.PrefetchLandmark)
	}
}
