package oci_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/dfly-p2p/dfly/internal/oci"
)

func TestImageBlobs(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	amd, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	arm, err := random.Image(1024, 3)
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	idxRef, _ := name.ParseReference(host + "/multi:v1")
	if err := remote.WriteIndex(idxRef, idx); err != nil {
		t.Fatal(err)
	}
	imgRef, _ := name.ParseReference(host + "/single:v1")
	if err := remote.Write(imgRef, amd); err != nil {
		t.Fatal(err)
	}
	r := &oci.Resolver{}
	ctx := context.Background()
	for _, tc := range []struct {
		ref, platform string
		want          int // config + layers
		err           string
	}{
		{host + "/single:v1", "", 3, ""},
		{host + "/single:v1", "linux/arm64", 3, ""}, // a plain image has no platform to choose
		{host + "/multi:v1", "", 7, ""},
		{host + "/multi:v1", "all", 7, ""},
		{host + "/multi:v1", "linux/amd64", 3, ""},
		{host + "/multi:v1", "linux/arm64/v8", 4, ""},
		{host + "/multi:v1", "windows/amd64", 0, "has no manifest for platform"},
		{host + "/multi:v1", "linux", 0, "want os/arch"},
		{host + "/missing:v1", "", 0, "resolve image"},
		{"UPPER/Case::bad", "", 0, "parse image reference"},
	} {
		t.Run(tc.ref+"/"+tc.platform, func(t *testing.T) {
			blobs, err := r.ImageBlobs(ctx, tc.ref, tc.platform)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(blobs) != tc.want {
				t.Fatalf("%d blobs, want %d: %+v", len(blobs), tc.want, blobs)
			}
			seen := map[string]bool{}
			for _, b := range blobs {
				if seen[b.Digest] || b.Size <= 0 || !strings.HasPrefix(b.Digest, "sha256:") {
					t.Fatalf("bad or duplicate blob %+v", b)
				}
				seen[b.Digest] = true
				loc, err := r.Blob(ctx, tc.ref, b.Digest)
				if err != nil || loc.Size != b.Size {
					t.Fatalf("Blob(%s): %+v, %v", b.Digest, loc, err)
				}
			}
		})
	}
}
