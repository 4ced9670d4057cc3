package supernode

import (
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// TestRegisterAfterOriginChanged: through the gRPC service, a registration
// after the origin's content and ETag changed returns the new metadata, and
// a block fetched afterwards from the seed verifies against the new
// content (its digest from Sync, its bytes from the upload server).
func TestRegisterAfterOriginChanged(t *testing.T) {
	const size = 2<<20 + 100
	v1, v2 := randomContent(size, 21), randomContent(size, 22)
	o := newSeedOrigin(t, v1, `"one"`)
	id, _ := blockstore.TaskIDForURL(o.url(), "", "")
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	defer sn.Close()
	p := newPeer(t, dial(t, sn), "p", "")
	p.announce(false)
	if reg := p.register(id, o.url()); reg.Meta.Etag != `"one"` || reg.Meta.SeedError != "" {
		t.Fatalf("first registration: meta %+v", reg.Meta)
	}
	waitSeedComplete(t, sn, id)

	o.set(func(o *seedOrigin) { o.content, o.etag = v2, `"two"` })
	time.Sleep(sn.seed.cfg.RevalidateAfter + 100*time.Millisecond) // the copy is due for revalidation
	reg := p.register(id, o.url())
	if reg.Meta.Etag != `"two"` || reg.Meta.Length != size || reg.Meta.SeedError != "" {
		t.Fatalf("registration after the change: meta %+v, want the new ETag", reg.Meta)
	}
	waitSeedComplete(t, sn, id)
	last := int32(blockstore.NumBlocks(size, 1<<20) - 1)
	digests, _ := p.syncUntil(id, []int32{0, last})
	for _, b := range []int32{0, last} {
		off := int64(b) << 20
		want := v2[off:min(off+1<<20, size)]
		sum := sha256.Sum256(want)
		if string(digests[b]) != string(sum[:]) {
			t.Fatalf("block %d: Sync gave digest %x, want the new content's %x", b, digests[b], sum)
		}
		got, err := fetchBlock(sn.UploadAddr(), id, b, reg.Token)
		if err != nil {
			t.Fatal(err)
		}
		if gs := sha256.Sum256(got); gs != sum {
			t.Fatalf("block %d from the seed: sha256 %x, want the new content's %x", b, gs, sum)
		}
	}
}

// TestRegisterPrivateTask: content registered with credentials is private;
// another host gets a token for it only with credentials the origin
// accepts (the service asks the seed's CheckAccess).
func TestRegisterPrivateTask(t *testing.T) {
	o := newSeedOrigin(t, randomContent(1<<20+1, 23), `"p"`)
	o.set(func(o *seedOrigin) { o.auth = secret })
	id, _ := blockstore.TaskIDForURL(o.url(), "", "")
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	defer sn.Close()
	c := dial(t, sn)
	register := func(host string, auth string) (*api.RegisterTaskResponse, error) {
		req := &api.RegisterTaskRequest{HostId: host, TaskId: id, Url: o.url()}
		if auth != "" {
			req.Headers = []*api.Header{{Name: "Authorization", Value: auth}}
		}
		return c.RegisterTask(t.Context(), req)
	}
	if reg, err := register("a", secret); err != nil || reg.Meta.SeedError != "" {
		t.Fatalf("owner's registration: %v %+v", err, reg.GetMeta())
	}
	waitSeedComplete(t, sn, id)
	if tk, err := sn.Store().Task(id); err != nil || !tk.Private {
		t.Fatalf("stored task %+v (%v), want private", tk, err)
	}
	for _, auth := range []string{"", "Bearer guess"} {
		_, err := register("b", auth)
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("registration with Authorization %q: %v, want PermissionDenied", auth, err)
		}
		if strings.Contains(err.Error(), "MARKER-SECRET") {
			t.Fatalf("the refusal shows the owner's credentials: %v", err)
		}
	}
	if reg, err := register("c", secret); err != nil || reg.Token == "" {
		t.Fatalf("registration with accepted credentials: %v", err)
	}
}
