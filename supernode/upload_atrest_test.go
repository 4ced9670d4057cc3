package supernode

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// TestUploadServerSealedBlock: the seed's upload server serves the blocks
// of a store encrypted at rest decrypted and exact.
func TestUploadServerSealedBlock(t *testing.T) {
	store, err := blockstore.Open(t.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1, Key: bytes.Repeat([]byte{7}, blockstore.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c := origin.Content{Size: 2<<20 + 100, Seed: 3}
	tk, err := store.CreateTask(context.Background(), blockstore.Task{ID: "s1", Length: c.Size})
	if err != nil || !tk.Sealed {
		t.Fatalf("create: %+v, %v; want a sealed task", tk, err)
	}
	want := make([][]byte, tk.NumBlocks())
	for b := range want {
		want[b] = make([]byte, tk.BlockLen(b))
		c.ReadAt(want[b], int64(b)*tk.BlockSize)
		if err := store.PutBlock(context.Background(), "s1", b, want[b]); err != nil {
			t.Fatal(err)
		}
	}
	key := newTestSigner()
	srv := httptest.NewServer(NewUploadServer(UploadConfig{Store: store, TokenKeys: key.pub(), Logger: quietLogger()}))
	defer srv.Close()
	for b := range want {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/blocks/s1/"+string(rune('0'+b)), nil)
		req.Header.Set(api.TokenHeader, key.token("s1", time.Hour))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(body, want[b]) {
			t.Fatalf("block %d: HTTP %d, %d bytes (equal %v)", b, resp.StatusCode, len(body), bytes.Equal(body, want[b]))
		}
	}
}
