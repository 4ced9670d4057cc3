package supernode

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/oci"
)

// TestImageAdapter: an image resolves to one target per blob, each a
// content-addressed task (the mirror's task id for that digest) at its
// registry blob URL.
func TestImageAdapter(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	img, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host + "/app:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	ts, err := imageAdapter{&oci.Resolver{}}.Resolve(context.Background(), host+"/app:v1", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 3 {
		t.Fatalf("%d targets, want config + 2 layers", len(ts))
	}
	for _, tg := range ts {
		id, err := blockstore.TaskIDForDigest(tg.Digest)
		if err != nil || tg.TaskID != id {
			t.Errorf("target %+v: task id, want %s", tg, id)
		}
		if !strings.HasPrefix(tg.URL, "http://"+host+"/v2/app/blobs/"+tg.Digest) || tg.Size <= 0 {
			t.Errorf("target %+v: want the registry blob URL and size", tg)
		}
	}
	if _, err := (imageAdapter{&oci.Resolver{}}).Resolve(context.Background(), host+"/nope:v1", ""); err == nil {
		t.Fatal("an unknown image resolved")
	}
}
