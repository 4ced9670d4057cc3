package supernode

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// compressibleFile writes n bytes of text-like content to dir/name.
func compressibleFile(t *testing.T, dir, name string, n int) []byte {
	t.Helper()
	words := strings.Fields("the seed compresses each block once and every peer verifies the plain bytes it decodes")
	var b bytes.Buffer
	for j := 0; b.Len() < n; j++ {
		b.WriteString(words[(j*5+j/7)%len(words)])
		b.WriteByte(" \n"[j%13/12])
	}
	data := b.Bytes()[:n]
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

func startCompressingSupernode(t *testing.T, dir string, mode compress.Mode, key []byte) *Supernode {
	t.Helper()
	sn, err := Start(Config{
		StoreDir: dir, GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0",
		Source: testSource(), Logger: testLogger(), SyncWait: 2 * time.Second, Compress: mode, StoreKey: key,
	})
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

// fetchZstd GETs a block from the seed asking for its compressed form and
// returns the plain block (decoded when it came compressed) and whether it did.
func fetchZstd(t *testing.T, sn *Supernode, id string, idx int, token string) ([]byte, bool) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/blocks/%s/%d", sn.Advertise(), id, idx), nil)
	req.Header.Set(api.TokenHeader, token)
	req.Header.Set("Accept-Encoding", "zstd")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("block %d: HTTP %d, %v", idx, resp.StatusCode, err)
	}
	if resp.Header.Get("Content-Encoding") != "zstd" {
		return body, false
	}
	n := 1 << 20
	if v := resp.Header.Get("X-Dfly-Plain-Length"); v != "" {
		fmt.Sscan(v, &n)
	}
	codec, _ := compress.NewCodec(1)
	defer codec.Close()
	plain, err := codec.Decompress(nil, body, n)
	if err != nil {
		t.Fatalf("block %d: the form does not decode: %v", idx, err)
	}
	if sum := sha256.Sum256(plain); hex.EncodeToString(sum[:]) != resp.Header.Get(api.DigestHeader) {
		t.Fatalf("block %d: the form decodes to other bytes than its digest", idx)
	}
	return plain, true
}

// waitTrials waits until the seed's compressor has tried n blocks.
func waitTrials(t *testing.T, sn *Supernode, n int64) compress.CompressorStats {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := debugState(t, sn).Compression
		if st == nil {
			t.Fatal("no compression in /debug/state")
		}
		if st.Trials+st.SkippedTask >= n && st.Queued == 0 {
			return *st
		}
		if time.Now().After(deadline) {
			t.Fatalf("compressor stats %+v after 30s, want %d trials", *st, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSeedCompressesOnceAndServesForms(t *testing.T) {
	odir := t.TempDir()
	text := compressibleFile(t, odir, "text.txt", 3<<20+5000)
	o, err := origin.Start(origin.Options{Dir: odir})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	randURL := o.Add("random.bin", origin.Content{Size: 2 << 20, Seed: 3})
	textURL := o.URL + "/text.txt"
	textID, _ := blockstore.TaskIDForURL(textURL, "", "")
	randID, _ := blockstore.TaskIDForURL(randURL, "", "")
	dir := t.TempDir()
	sn := startCompressingSupernode(t, dir, compress.Always, nil)
	p := newPeer(t, dial(t, sn), "p", "")
	p.announce(false)
	tok := p.register(textID, textURL).Token
	p.syncUntil(textID, []int32{0, 1, 2, 3})
	waitSeedComplete(t, sn, textID)
	st := waitTrials(t, sn, 4)
	if st.Kept != 4 || st.SideStore.Forms != 4 || st.Mode != "always" {
		t.Fatalf("compressor %+v: want the 4 text blocks kept", st)
	}
	for i := range 4 {
		got, zstd := fetchZstd(t, sn, textID, i, tok)
		if !zstd || !bytes.Equal(got, text[i<<20:min(len(text), (i+1)<<20)]) {
			t.Fatalf("text block %d: compressed %v, right bytes %v", i, zstd, bytes.Equal(got, text[i<<20:min(len(text), (i+1)<<20)]))
		}
	}
	if status, body, _ := p.fetch(sn.Advertise(), textID, 0, tok); status != 200 || !bytes.Equal(body, text[:1<<20]) {
		t.Fatal("a request that did not ask got something else than the plain block")
	}

	// Random content: one trial per block, no form, plain answers.
	rtok := p.register(randID, randURL).Token
	p.syncUntil(randID, []int32{0, 1})
	waitSeedComplete(t, sn, randID)
	st = waitTrials(t, sn, 6)
	if st.Kept != 4 || st.SampleSaysNo != 2 || st.SideStore.NotWorth != 2 {
		t.Fatalf("compressor %+v: want the 2 random blocks ruled out by their samples", st)
	}
	if _, zstd := fetchZstd(t, sn, randID, 1, rtok); zstd {
		t.Fatal("a random block came compressed")
	}
	if forms, _ := filepath.Glob(filepath.Join(dir, FormsDir, randID, "*.zst")); len(forms) != 0 {
		t.Fatalf("forms of random blocks: %v", forms)
	}
	if st := waitTrials(t, sn, 6); st.Trials != 6 {
		t.Fatalf("asking for a random block's form tried it again: %+v", st)
	}
	sn.Close()

	// A restart keeps the forms (the index is rebuilt from the files); one
	// whose file went is tried again when a peer asks for it.
	if err := os.Remove(filepath.Join(dir, FormsDir, textID, "2.zst")); err != nil {
		t.Fatal(err)
	}
	sn = startCompressingSupernode(t, dir, compress.Always, nil)
	defer sn.Close()
	p.c = dial(t, sn)
	p.announce(false)
	tok = p.register(textID, textURL).Token
	if _, zstd := fetchZstd(t, sn, textID, 1, tok); !zstd {
		t.Fatal("a form kept before the restart is not served")
	}
	if _, zstd := fetchZstd(t, sn, textID, 2, tok); zstd {
		t.Fatal("a removed form was served")
	}
	waitTrials(t, sn, 1)
	if got, zstd := fetchZstd(t, sn, textID, 2, tok); !zstd || !bytes.Equal(got, text[2<<20:3<<20]) {
		t.Fatal("the block asked for was not tried and served compressed")
	}
}

func TestSeedSkipsSealedStores(t *testing.T) {
	odir := t.TempDir()
	compressibleFile(t, odir, "text.txt", 2<<20)
	o, err := origin.Start(origin.Options{Dir: odir})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	url := o.URL + "/text.txt"
	id, _ := blockstore.TaskIDForURL(url, "", "")
	key := bytes.Repeat([]byte{7}, blockstore.KeySize)
	dir := t.TempDir()
	sn := startCompressingSupernode(t, dir, compress.Always, key)
	defer sn.Close()
	p := newPeer(t, dial(t, sn), "p", "")
	p.announce(false)
	tok := p.register(id, url).Token
	p.syncUntil(id, []int32{0, 1})
	waitSeedComplete(t, sn, id)
	if st := waitTrials(t, sn, 2); st.Trials != 0 || st.SkippedTask != 2 {
		t.Fatalf("compressor %+v: a sealed store's blocks must not be kept in plaintext forms", st)
	}
	if _, zstd := fetchZstd(t, sn, id, 0, tok); zstd {
		t.Fatal("a sealed store served a form")
	}
}

func TestCompressionOffByDefault(t *testing.T) {
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	defer sn.Close()
	if debugState(t, sn).Compression != nil || sn.comp != nil {
		t.Fatal("a supernode configured without compression compresses")
	}
	if _, err := os.Stat(filepath.Join(sn.cfg.StoreDir, FormsDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a side store was made with compression off")
	}
}

func TestFormIsBad(t *testing.T) {
	codec, err := compress.NewCodec(1)
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	c := &seedCompression{host: compress.NewHost(compress.HostConfig{Mode: compress.Always, Codec: codec, Logger: quietLogger()})}
	block := bytes.Repeat([]byte("a block of text "), 1<<14)
	sum := sha256.Sum256(block)
	form := codec.Compress(block)
	other := codec.Compress(bytes.Repeat([]byte("other text here "), 1<<14))
	n := int64(len(block))
	tests := []struct {
		name  string
		asked bool
		enc   string
		body  io.Reader
		bad   bool
		err   bool
	}{
		{"the right form", true, "zstd", bytes.NewReader(form), false, false},
		{"a form of other bytes", true, "zstd", bytes.NewReader(other), true, false},
		{"a form that does not decode", true, "zstd", bytes.NewReader(form[:len(form)/2]), true, false},
		{"a body as large as the block", true, "zstd", bytes.NewReader(block), true, false},
		{"not asked for", false, "zstd", bytes.NewReader(form), true, false},
		{"another encoding", true, "br", bytes.NewReader(form), true, false},
		{"a cut connection", true, "zstd", io.MultiReader(bytes.NewReader(form[:10]), errReader{}), false, true},
	}
	for _, tc := range tests {
		resp := &http.Response{Header: http.Header{"Content-Encoding": {tc.enc}}, Body: io.NopCloser(tc.body)}
		bad, err := c.formIsBad(resp, tc.asked, n, sum[:])
		if bad != tc.bad || (err != nil) != tc.err {
			t.Errorf("%s: bad %v, err %v; want bad %v, error %v", tc.name, bad, err, tc.bad, tc.err)
		}
	}
	var off *seedCompression
	req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	if off.ask(req) || req.Header.Get("Accept-Encoding") != "" {
		t.Fatal("a supernode without compression asks for forms")
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }
