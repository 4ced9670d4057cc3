package oci

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Blob is one blob a pull of an image fetches: a layer or a config.
type Blob struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	MediaType string `json:"media_type"`
	Platform  string `json:"platform,omitempty"` // os/arch[/variant] of the manifest that names it
}

// ImageBlobs resolves ref (a tag or a digest reference) to the blobs a pull
// fetches: for an image, its config and layers; for an index, those of each
// manifest whose platform matches platform ("" or "all": every platform;
// otherwise os/arch or os/arch/variant). A blob named by several manifests
// is listed once. An index with no manifest for the platform is an error
// naming the platforms it has.
func (r *Resolver) ImageBlobs(ctx context.Context, ref, platform string) ([]Blob, error) {
	parsed, err := r.ParseRef(ref)
	if err != nil {
		return nil, err
	}
	want, err := parsePlatform(platform)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(parsed, r.RemoteOptions(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("resolve image %s: %w", ref, err)
	}
	var out []Blob
	seen := map[string]bool{}
	add := func(img v1.Image, plat string) error {
		m, err := img.Manifest()
		if err != nil {
			return fmt.Errorf("read manifest of %s (%s): %w", ref, plat, err)
		}
		for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if seen[d.Digest.String()] {
				continue
			}
			seen[d.Digest.String()] = true
			out = append(out, Blob{Digest: d.Digest.String(), Size: d.Size, MediaType: string(d.MediaType), Platform: plat})
		}
		return nil
	}
	if !desc.MediaType.IsIndex() {
		img, err := desc.Image()
		if err != nil {
			return nil, fmt.Errorf("read image %s: %w", ref, err)
		}
		return out, add(img, "")
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("read index %s: %w", ref, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read index manifest of %s: %w", ref, err)
	}
	var have []string
	for _, m := range im.Manifests {
		if !m.MediaType.IsImage() {
			continue // nested indexes and attestations: not pulled for a platform
		}
		plat := platformString(m.Platform)
		have = append(have, plat)
		if want != nil && (m.Platform == nil || !want.Satisfies(*m.Platform)) {
			continue
		}
		img, err := idx.Image(m.Digest)
		if err != nil {
			return nil, fmt.Errorf("read image %s@%s: %w", ref, m.Digest, err)
		}
		if err := add(img, plat); err != nil {
			return nil, err
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("image %s has no manifest for platform %q (it has: %s)", ref, platform, strings.Join(have, ", "))
	}
	return out, nil
}

// parsePlatform parses os/arch[/variant]; "" and "all" mean every platform (nil).
func parsePlatform(s string) (*v1.Platform, error) {
	if s == "" || s == "all" {
		return nil, nil
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return nil, fmt.Errorf("platform %q: want os/arch or os/arch/variant (e.g. linux/amd64), or all", s)
	}
	p := &v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func platformString(p *v1.Platform) string {
	if p == nil {
		return "unknown"
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}
