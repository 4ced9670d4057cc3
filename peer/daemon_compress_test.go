package peer

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/compress"
)

func TestOpenCompression(t *testing.T) {
	dir := t.TempDir()
	st, err := blockstore.Open(dir, blockstore.Options{Logger: quietLogger(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, cfg := range []DaemonConfig{
		{StoreDir: dir, Supernode: "sn:8002", Compress: compress.Off},
		{StoreDir: dir, Compress: compress.Auto}, // origin mode
	} {
		c, err := openCompression(cfg, st)
		if err != nil || c != nil || c.Host() != nil {
			t.Fatalf("%+v: %v, %v; want no compression", cfg, c, err)
		}
		c.close()
	}
	if _, err := os.Stat(filepath.Join(dir, FormsDir)); !os.IsNotExist(err) {
		t.Fatal("a side store was made without compression")
	}

	// Forms of a task the store no longer holds go at start.
	ctx := context.Background()
	if _, err := st.CreateTask(ctx, blockstore.Task{ID: "held", Length: 1 << 20, BlockSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	codec, _ := compress.NewCodec(1)
	defer codec.Close()
	forms, err := compress.OpenForms(filepath.Join(dir, FormsDir), compress.FormsOptions{Codec: codec, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	block := compressibleBlocks(1)[0]
	sum := sha256.Sum256(block)
	for _, task := range []string{"held", "gone"} {
		if err := forms.Put(task, 0, sum[:], 1<<20, codec.Compress(block)); err != nil {
			t.Fatal(err)
		}
	}
	c, err := openCompression(DaemonConfig{StoreDir: dir, Supernode: "sn:8002", Compress: compress.Auto, Logger: quietLogger(), Quota: 1 << 30}, st)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	h := c.Host()
	if h.Mode() != compress.Auto {
		t.Fatalf("mode %v", h.Mode())
	}
	if h.Forms().Lookup("held", 0, sum[:]) != compress.Compressed || h.Forms().Lookup("gone", 0, sum[:]) != compress.Unknown {
		t.Fatal("the forms of a task the store lost were not pruned at start")
	}
	c.close()
	c.close()
}

func TestDaemonStatsCompression(t *testing.T) {
	fx := newSeedFixture(t, 2<<20)
	dir := t.TempDir()
	d, err := StartDaemon(context.Background(), DaemonConfig{Supernode: fx.addr, Listen: "127.0.0.1:0", Sock: filepath.Join(dir, "d.sock"),
		StoreDir: filepath.Join(dir, "store"), Logger: quietLogger(), Compress: compress.Always})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Download(context.Background(), DownloadRequest{URL: fx.url}, nil, nil); err != nil {
		t.Fatal(err)
	}
	s := d.Stats().Compression
	if s == nil || s.Mode != "always" || s.BytesPlain != 2<<20 || s.BytesWire != 2<<20 || s.Asked == 0 {
		t.Fatalf("compression stats %+v: want the plain seed's 2 MiB counted (asked, but no forms)", s)
	}
	d2, err := StartDaemon(context.Background(), DaemonConfig{Supernode: fx.addr, Listen: "127.0.0.1:0", Sock: filepath.Join(dir, "d2.sock"),
		StoreDir: filepath.Join(dir, "store2"), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if d2.Stats().Compression != nil {
		t.Fatal("a daemon configured without compression reports compression")
	}
}
