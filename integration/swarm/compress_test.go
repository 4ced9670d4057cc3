package swarm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/compress"
)

// proseFile writes n bytes of deterministic prose to dir/name and returns
// its sha256 digest.
func proseFile(t *testing.T, dir, name string, n int) string {
	t.Helper()
	words := strings.Fields("a supernode seeds each block once and the peers of a swarm trade the blocks among themselves over links that cost money so the seed compresses what compresses and nothing else")
	r := rand.New(rand.NewPCG(17, 4))
	b := make([]byte, 0, n+64)
	for len(b) < n {
		b = append(b, words[r.IntN(len(words))]...)
		b = append(b, " \n"[min(r.IntN(14), 13)/13])
	}
	b = b[:n]
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// compressionState is the seed's part of /debug/state this test reads.
type compressionState struct {
	Compression *compress.CompressorStats `json:"compression"`
}

func (sn *supernode) compression(t *testing.T) compress.CompressorStats {
	t.Helper()
	resp, err := http.Get("http://" + sn.upload + "/debug/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st compressionState
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.Compression == nil {
		t.Fatalf("no compression in /debug/state: %v", err)
	}
	return *st.Compression
}

// waitTrials waits until the seed tried n blocks (trials outlive the
// announcements they delay by at most 50 ms).
func (sn *supernode) waitTrials(t *testing.T, n int64) compress.CompressorStats {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := sn.compression(t)
		if st.Trials >= n || time.Now().After(deadline) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// formFiles counts the compressed forms kept for a task under a store.
func formFiles(t *testing.T, dir, task string) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "compressed", task, "*.zst"))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

// TestCompressedSwarm: a supernode and three daemons that always compress.
// A compressible file reaches every daemon exact, the blocks leave the seed
// compressed once and the daemons pass the forms on, so the second and third
// daemons receive far fewer bytes than the file has; a random file is
// tried once per block, no form is kept, and it travels plain.
func TestCompressedSwarm(t *testing.T) {
	odir := t.TempDir()
	const size = 6<<20 + 12345
	want := proseFile(t, odir, "prose.txt", size)
	o, err := origin.Start(origin.Options{Dir: odir})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	randContent := origin.Content{Size: 4<<20 + 99, Seed: 23}
	randURL := o.Add("random.bin", randContent)
	textURL := o.URL + "/prose.txt"

	sdir := t.TempDir()
	p, line := start(t, "supernode", "supernode", "supernode listening",
		"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--metrics-listen", "", "--store", filepath.Join(sdir, "store"),
		"--compress", "always", "--log-level", "info")
	sn := &supernode{proc: p, dir: sdir, grpc: field(line, "grpc"), upload: field(line, "upload")}
	var ds []*daemon
	for _, id := range []string{"z1", "z2", "z3"} {
		ds = append(ds, startDaemon(t, sn, id, "", "--compress", "always"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The first daemon alone: every block it gets comes from the seed.
	first := downloadAll(ctx, t, ds[:1], textURL, nil)
	// Then the other two at once, from the seed and the first daemon.
	rest := downloadAll(ctx, t, ds[1:], textURL, nil)
	for _, o := range append(first, rest...) {
		checkExact(t, o, want)
		c := o.stats.Compression
		if c == nil {
			t.Fatalf("%s: no compression in its stats", o.d.id)
		}
		// Blocks from the swarm: all of them (the origin was never
		// needed), and compressed (a block the seed announced before its
		// trial ended, on a loaded machine, may travel plain).
		if c.BytesPlain != size || c.BlocksCompressed == 0 || c.BytesWire >= c.BytesPlain || c.SavedBytes != c.BytesPlain-c.BytesWire {
			t.Errorf("%s: compression %+v: want the %d bytes received compressed", o.d.id, *c, size)
		}
		t.Logf("%s: %d plain bytes took %d on the wire (%.2f), %d of %d blocks compressed; served %d compressed", o.d.id,
			c.BytesPlain, c.BytesWire, float64(c.BytesWire)/float64(c.BytesPlain), c.BlocksCompressed, 7, c.BlocksServedCompressed)
	}
	textID, _ := blockstore.TaskIDForURL(textURL, "", "")
	st := sn.waitTrials(t, 7)
	if st.Kept != 7 || st.Trials != 7 || st.SideStore.Forms != 7 {
		t.Errorf("seed compressor %+v: want each of the 7 blocks tried once and kept", st)
	}
	if n := formFiles(t, filepath.Join(sdir, "store"), textID); n != 7 {
		t.Errorf("the seed keeps %d forms of the text, want 7", n)
	}
	var relayed int64
	for _, o := range append(first, rest...) {
		relayed += o.stats.Compression.BlocksServedCompressed
	}
	if relayed == 0 {
		t.Error("no daemon served a form on: every block came from the seed")
	}

	// A random file: one trial per block, no form anywhere, plain transfers.
	rnd := downloadAll(ctx, t, ds, randURL, nil)
	randID, _ := blockstore.TaskIDForURL(randURL, "", "")
	for i, o := range rnd {
		checkExact(t, o, randContent.Digest("sha256"))
		before := first
		if i > 0 {
			before = rest[i-1 : i]
		}
		c, b := o.stats.Compression, before[0].stats.Compression
		if got := c.BytesWire - b.BytesWire; got != c.BytesPlain-b.BytesPlain || c.BlocksCompressed != b.BlocksCompressed {
			t.Errorf("%s: the random file took %d bytes on the wire for %d plain, %d blocks compressed", o.d.id, got, c.BytesPlain-b.BytesPlain, c.BlocksCompressed-b.BlocksCompressed)
		}
		if n := formFiles(t, filepath.Join(filepath.Dir(o.d.sock), "store"), randID); n != 0 {
			t.Errorf("%s keeps %d forms of random blocks", o.d.id, n)
		}
	}
	st = sn.waitTrials(t, 7+5)
	if st.Trials != 7+5 || st.Kept != 7 || st.SampleSaysNo+st.TooLittle != 5 {
		t.Errorf("seed compressor %+v: want the 5 random blocks tried once and ruled out", st)
	}
	if n := formFiles(t, filepath.Join(sdir, "store"), randID); n != 0 {
		t.Errorf("the seed keeps %d forms of random blocks", n)
	}
}
