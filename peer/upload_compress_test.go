package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// compressibleBlocks returns n blocks of 1 MiB of text-like bytes.
func compressibleBlocks(n int) [][]byte {
	words := strings.Fields("blocks travel between peers compressed once by the seed and verified by every receiver against the digest of the plain bytes")
	blocks := make([][]byte, n)
	for i := range blocks {
		var b bytes.Buffer
		for j := 0; b.Len() < 1<<20; j++ {
			b.WriteString(words[(j*7+i*3+j/5)%len(words)])
			b.WriteByte(" \n"[j%11/10])
		}
		blocks[i] = b.Bytes()[:1<<20]
	}
	return blocks
}

// newCompressHost is a Host with its own side store for tests.
func newCompressHost(t testing.TB, mode compress.Mode) *compress.Host {
	t.Helper()
	codec, err := compress.NewCodec(2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(codec.Close)
	forms, err := compress.OpenForms(t.TempDir(), compress.FormsOptions{Codec: codec, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return compress.NewHost(compress.HostConfig{Mode: mode, Codec: codec, Forms: forms, Logger: quietLogger()})
}

// getZstd GETs url asking for zstd (so Go's transport leaves the body as sent).
func getZstd(t *testing.T, url, token, rng string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set(api.TokenHeader, token)
	req.Header.Set("Accept-Encoding", "zstd")
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestUploadServerCompressedForms(t *testing.T) {
	ctx := context.Background()
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	blocks := compressibleBlocks(3)
	if _, err := st.CreateTask(ctx, blockstore.Task{ID: "task", Length: 3 << 20, BlockSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	for i, b := range blocks {
		if err := st.PutBlock(ctx, "task", i, b); err != nil {
			t.Fatal(err)
		}
	}
	host := newCompressHost(t, compress.Auto)
	codec, _ := compress.NewCodec(1)
	defer codec.Close()
	form := codec.Compress(blocks[0])
	sum0 := sha256.Sum256(blocks[0])
	if err := host.Forms().Put("task", 0, sum0[:], 1<<20, form); err != nil {
		t.Fatal(err)
	}
	key := newKeyTokens()
	tok := key.token("task", time.Hour)
	with := httptest.NewServer(NewUploadServer(UploadConfig{Store: st, Tokens: key, Logger: quietLogger(), Compress: host}))
	defer with.Close()
	without := httptest.NewServer(NewUploadServer(UploadConfig{Store: st, Tokens: key, Logger: quietLogger()}))
	defer without.Close()
	liar := httptest.NewServer(NewUploadServer(UploadConfig{Store: st, Tokens: key, Logger: quietLogger(), Compress: host, CorruptUploads: true}))
	defer liar.Close()

	// Asked for, and kept: the form, with the plain block's digest.
	resp, body := getZstd(t, with.URL+"/blocks/task/0", tok, "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "zstd" || !bytes.Equal(body, form) ||
		resp.Header.Get(api.DigestHeader) != hex.EncodeToString(sum0[:]) {
		t.Fatalf("block 0 asked for zstd: HTTP %d, encoding %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Encoding"), len(body))
	}
	plain := func(name, url, rng string, want []byte) {
		t.Helper()
		resp, body := getZstd(t, url, tok, rng)
		if resp.Header.Get("Content-Encoding") != "" || !bytes.Equal(body, want) {
			t.Errorf("%s: encoding %q, %d bytes; want the plain %d", name, resp.Header.Get("Content-Encoding"), len(body), len(want))
		}
	}
	plain("no form kept", with.URL+"/blocks/task/1", "", blocks[1])
	plain("a server without compression", without.URL+"/blocks/task/0", "", blocks[0])
	plain("a range", with.URL+"/blocks/task/0", "bytes=10-19", blocks[0][10:20])
	corrupt := bytes.Clone(blocks[0])
	corrupt[len(corrupt)/2] ^= 0xff
	plain("the corrupting test hook", liar.URL+"/blocks/task/0", "", corrupt)

	// Not asked for (Go's transport asks for gzip only): never zstd.
	resp, body = get(t, with.URL+"/blocks/task/0", tok, "")
	if resp.Header.Get("Content-Encoding") != "" || resp.Uncompressed || !bytes.Equal(body, blocks[0]) {
		t.Fatalf("a receiver that did not ask got encoding %q", resp.Header.Get("Content-Encoding"))
	}
	if s := host.Stats(); s.BlocksServedCompressed != 1 || s.ServedSavedBytes != int64(1<<20-len(form)) {
		t.Fatalf("host stats %+v: want one form served", s)
	}
	// A block the store dropped is not served, form or not.
	if err := st.DropBlock("task", 0); err != nil {
		t.Fatal(err)
	}
	if resp, _ := getZstd(t, with.URL+"/blocks/task/0", tok, ""); resp.StatusCode != 404 {
		t.Fatalf("a dropped block: HTTP %d, want 404", resp.StatusCode)
	}
	// Refusals come before forms: a bad token gets 403.
	if resp, _ := getZstd(t, with.URL+"/blocks/task/1", "", ""); resp.StatusCode != 403 {
		t.Fatalf("no token: HTTP %d, want 403", resp.StatusCode)
	}
}
