package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// TestUploadServerSealedBlock: a block of a store encrypted at rest is
// served decrypted, exact, with its digest (whole and as a range), while
// its data file holds only ciphertext; a tampered one is refused.
func TestUploadServerSealedBlock(t *testing.T) {
	dir := t.TempDir()
	st, err := blockstore.Open(dir, blockstore.Options{Logger: quietLogger(), GCInterval: -1, Key: bytes.Repeat([]byte{9}, blockstore.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if _, err := st.CreateTask(ctx, blockstore.Task{ID: "task", Length: 2 << 20, BlockSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	blocks := [][]byte{bytes.Repeat([]byte("sealed-block-zero-"), 1<<20/18+1)[:1<<20], bytes.Repeat([]byte("sealed-block-one--"), 1<<20/18+1)[:1<<20]}
	for i, b := range blocks {
		if err := st.PutBlock(ctx, "task", i, b); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(filepath.Join(dir, "data", "task.blocks"))
	if err != nil || bytes.Contains(raw, []byte("sealed-block-zero-")) {
		t.Fatalf("data file holds the plaintext (%v)", err)
	}
	key := newKeyTokens()
	hs := httptest.NewServer(NewUploadServer(UploadConfig{Store: st, Tokens: key, Logger: quietLogger()}))
	defer hs.Close()
	srv := hs.URL
	tok := key.token("task", time.Hour)
	for i, b := range blocks {
		resp, body := get(t, srv+"/blocks/task/"+strconv.Itoa(i), tok, "")
		sum := sha256.Sum256(b)
		if resp.StatusCode != 200 || !bytes.Equal(body, b) || resp.Header.Get(api.DigestHeader) != hex.EncodeToString(sum[:]) {
			t.Fatalf("block %d: HTTP %d, %d bytes (equal %v)", i, resp.StatusCode, len(body), bytes.Equal(body, b))
		}
	}
	if resp, body := get(t, srv+"/blocks/task/1", tok, "bytes=100-199"); resp.StatusCode != 206 || !bytes.Equal(body, blocks[1][100:200]) {
		t.Fatalf("range: HTTP %d %q", resp.StatusCode, body)
	}

	// Flip a ciphertext byte behind the store's back: refused, dropped.
	f, err := os.OpenFile(filepath.Join(dir, "data", "task.blocks"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	f.WriteAt([]byte{raw[1<<20+5] ^ 1}, 1<<20+5)
	f.Close()
	if resp, _ := get(t, srv+"/blocks/task/1", tok, ""); resp.StatusCode != 404 {
		t.Fatalf("tampered sealed block: HTTP %d, want 404", resp.StatusCode)
	}
	if st.HasBlock("task", 1) {
		t.Fatal("tampered block still present")
	}
}
