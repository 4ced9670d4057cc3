package snapshotter

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ConvertOptions tune ConvertToEstargz.
type ConvertOptions struct {
	// Prioritized files (absolute paths in the image) go first in their layer, before
	// the .prefetch.landmark, so the prefetcher fetches them first.
	Prioritized []string
	// ChunkSize of eStargz chunks (default estargz's 4 MiB).
	ChunkSize int
	// CompressionLevel for gzip (default 6; 1 is fastest).
	CompressionLevel int
	// TempDir holds the converted layer files, which the returned image reads until it
	// is written: the caller removes it afterwards. Required for ConvertImage.
	TempDir string
	Logger  *slog.Logger
}

// ConvertImage converts every layer of img to eStargz and returns the new image; each
// layer carries the TOC digest annotation in the manifest.
func ConvertImage(ctx context.Context, img v1.Image, opt ConvertOptions) (v1.Image, error) {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.TempDir == "" {
		return nil, fmt.Errorf("convert image: ConvertOptions.TempDir is required")
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read image config: %w", err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("list image layers: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.RootFS.DiffIDs = nil
	history := cfg.History
	cfg.History = nil
	out, err := mutate.ConfigFile(mutate.MediaType(empty.Image, types.OCIManifestSchema1), cfg)
	if err != nil {
		return nil, err
	}
	out = mutate.ConfigMediaType(out, types.OCIConfigJSON)
	var adds []mutate.Addendum
	var nonEmpty []v1.History
	for _, h := range history {
		if !h.EmptyLayer {
			nonEmpty = append(nonEmpty, h)
		}
	}
	for i, l := range layers {
		el, toc, err := convertLayer(ctx, l, opt)
		if err != nil {
			return nil, fmt.Errorf("convert layer %d: %w", i, err)
		}
		a := mutate.Addendum{Layer: el, MediaType: types.OCILayer,
			Annotations: map[string]string{estargz.TOCJSONDigestAnnotation: toc.String()}}
		if i < len(nonEmpty) {
			a.History = nonEmpty[i]
		}
		adds = append(adds, a)
	}
	return mutate.Append(out, adds...)
}

// convertLayer writes the eStargz form of l to a temp file and returns it as a layer.
func convertLayer(ctx context.Context, l v1.Layer, opt ConvertOptions) (v1.Layer, fmt.Stringer, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, nil, fmt.Errorf("uncompress: %w", err)
	}
	defer func() { _ = rc.Close() }()
	tarF, err := os.CreateTemp(opt.TempDir, "dfly-convert-*.tar")
	if err != nil {
		return nil, nil, fmt.Errorf("temp file for layer tar: %w", err)
	}
	defer func() { _ = tarF.Close(); _ = os.Remove(tarF.Name()) }()
	n, err := io.Copy(tarF, rc)
	if err != nil {
		return nil, nil, fmt.Errorf("read layer: %w", err)
	}
	var missed []string
	bopts := []estargz.Option{estargz.WithContext(ctx), estargz.WithAllowPrioritizeNotFound(&missed)}
	if len(opt.Prioritized) > 0 {
		bopts = append(bopts, estargz.WithPrioritizedFiles(opt.Prioritized))
	}
	if opt.ChunkSize > 0 {
		bopts = append(bopts, estargz.WithChunkSize(opt.ChunkSize))
	}
	if opt.CompressionLevel != 0 {
		bopts = append(bopts, estargz.WithCompressionLevel(opt.CompressionLevel))
	}
	blob, err := estargz.Build(io.NewSectionReader(tarF, 0, n), bopts...)
	if err != nil {
		return nil, nil, fmt.Errorf("build eStargz: %w", err)
	}
	defer func() { _ = blob.Close() }()
	outF, err := os.CreateTemp(opt.TempDir, "dfly-convert-*.tar.gz")
	if err != nil {
		return nil, nil, fmt.Errorf("temp file for eStargz layer: %w", err)
	}
	// The returned layer reads this file until the image is written; the file lives in
	// opt.TempDir, which the caller removes afterwards.
	path := outF.Name()
	if _, err := io.Copy(outF, blob); err != nil {
		_ = outF.Close()
		_ = os.Remove(path)
		return nil, nil, fmt.Errorf("write eStargz layer: %w", err)
	}
	if err := outF.Close(); err != nil {
		return nil, nil, err
	}
	el, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return os.Open(path) },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, nil, fmt.Errorf("eStargz layer: %w", err)
	}
	opt.Logger.Info("layer converted to eStargz", "toc", blob.TOCDigest(), "prioritized_missing", len(missed))
	return el, blob.TOCDigest(), nil
}

// Convert reads src from its registry, converts it to eStargz and pushes it as dst.
func Convert(ctx context.Context, src, dst string, r *Resolver, opt ConvertOptions) (v1.Hash, error) {
	if opt.TempDir == "" {
		d, err := os.MkdirTemp("", "dfly-convert-")
		if err != nil {
			return v1.Hash{}, err
		}
		defer func() { _ = os.RemoveAll(d) }()
		opt.TempDir = d
	}
	sref, err := r.ParseRef(src)
	if err != nil {
		return v1.Hash{}, err
	}
	dref, err := r.ParseRef(dst)
	if err != nil {
		return v1.Hash{}, err
	}
	img, err := remote.Image(sref, r.RemoteOptions(ctx)...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("read %s: %w", src, err)
	}
	out, err := ConvertImage(ctx, img, opt)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := remote.Write(dref, out, r.RemoteOptions(ctx)...); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", dst, err)
	}
	return out.Digest()
}
