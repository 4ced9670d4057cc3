package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func TestBodyLength(t *testing.T) {
	tests := []struct {
		name    string
		enc     string
		length  int64
		asked   bool
		want    int64
		encoded bool
		ok      bool
	}{
		{"plain", "", 1000, false, 1000, false, true},
		{"plain, length unknown", "", -1, true, 1000, false, true},
		{"plain, identity", "identity", 1000, true, 1000, false, true},
		{"plain of the wrong length", "", 999, false, 0, false, false},
		{"a form", "zstd", 400, true, 400, true, true},
		{"a form not asked for", "zstd", 400, false, 0, false, false},
		{"another encoding", "gzip", 400, true, 0, false, false},
		{"a form without a length", "zstd", -1, true, 0, false, false},
		{"a form as large as the block", "zstd", 1000, true, 0, false, false},
		{"an empty form", "zstd", 0, true, 0, false, false},
	}
	for _, tc := range tests {
		resp := &http.Response{Header: http.Header{}, ContentLength: tc.length}
		if tc.enc != "" {
			resp.Header.Set("Content-Encoding", tc.enc)
		}
		n, enc, err := bodyLength(resp, tc.asked, 1000)
		if (err == nil) != tc.ok || n != tc.want || enc != tc.encoded {
			t.Errorf("%s: %d, %v, %v; want %d, %v, ok %v", tc.name, n, enc, err, tc.want, tc.encoded, tc.ok)
		}
	}
}

// compressFixture is a fake supernode whose seed holds a compressible file
// and, when forms is set, the compressed form of every block.
type compressFixture struct {
	sched  *fakeScheduler
	addr   string
	url    string
	taskID string
	digest string
	size   int64
	seed   *compress.Host // nil: the seed keeps no forms
}

func newCompressFixture(t *testing.T, nblocks int, forms bool) *compressFixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	blocks := compressibleBlocks(nblocks)
	content := bytes.Join(blocks, nil)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "file.txt"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	org, err := origin.Start(origin.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	url := org.URL + "/file.txt"
	id, _ := blockstore.TaskIDForURL(url, "", "")
	sum := sha256.Sum256(content)
	fx := &compressFixture{url: url, taskID: id, digest: "sha256:" + hex.EncodeToString(sum[:]), size: int64(len(content))}
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	meta, err := st.CreateTask(ctx, blockstore.Task{ID: id, Source: url, Length: fx.size, BlockSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if forms {
		fx.seed = newCompressHost(t, compress.Always)
	}
	codec, _ := compress.NewCodec(1)
	defer codec.Close()
	digests := make([][]byte, nblocks)
	all := blockstore.NewBitmap(nblocks)
	for i, b := range blocks {
		s := sha256.Sum256(b)
		digests[i] = s[:]
		all.Set(i)
		if err := st.PutBlock(ctx, id, i, b); err != nil {
			t.Fatal(err)
		}
		if forms {
			if err := fx.seed.Forms().Put(id, i, s[:], int64(len(b)), codec.Compress(b)); err != nil {
				t.Fatal(err)
			}
		}
	}
	f := newFakeScheduler()
	fx.sched = f
	up := NewUploadServer(UploadConfig{Store: st, Tokens: fakeTokens{f}, Logger: quietLogger(), Compress: fx.seed})
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.hosts["seed"] = &api.Host{Id: "seed", UploadAddr: upLn.Addr().String()}
	f.tasks[id] = &fakeTask{
		meta:    &api.TaskMeta{TaskId: id, Length: fx.size, BlockSize: meta.BlockSize, Url: url, Digest: fx.digest},
		digests: digests, holders: map[string]blockstore.Bitmap{"seed": all},
	}
	gs := grpc.NewServer()
	api.RegisterSchedulerServer(gs, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fx.addr = ln.Addr().String()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = gs.Serve(ln) }()
	go func() { defer wg.Done(); _ = up.Serve(ctx, upLn) }()
	t.Cleanup(func() {
		gs.Stop()
		cancel()
		wg.Wait()
		st.Close()
		org.Close()
	})
	return fx
}

// addHost makes the fake supernode rank a host (an upload server at addr)
// first for every block of the task.
func (fx *compressFixture) addHost(id, addr string) {
	f := fx.sched
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hosts[id] = &api.Host{Id: id, UploadAddr: addr}
	all := blockstore.NewBitmap(len(f.tasks[fx.taskID].digests))
	for i := range len(f.tasks[fx.taskID].digests) {
		all.Set(i)
	}
	f.tasks[fx.taskID].holders[id] = all
}

// newCompressPeer is an in-process peer whose swarm and upload server share
// c (nil: no compression).
func newCompressPeer(t *testing.T, fx *compressFixture, id string, c *compress.Host) *testPeer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &testPeer{store: st}
	p.upload = NewUploadServer(UploadConfig{Store: st, Logger: quietLogger(), Compress: c})
	p.swarm, err = NewSwarm(ctx, SwarmConfig{Supernode: fx.addr, Store: st, HostID: id, UploadAddr: ln.Addr().String(),
		BlockTimeout: 10 * time.Second, RPCTimeout: 2 * time.Second, Logger: quietLogger(), Compress: c})
	if err != nil {
		t.Fatal(err)
	}
	p.upload.cfg.Tokens = p.swarm
	p.engine, err = New(Config{Store: st, Source: source.New(source.Options{Logger: quietLogger(), Retries: -1}), Swarm: p.swarm, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = p.upload.Serve(ctx, ln) }()
	t.Cleanup(func() {
		p.swarm.Close()
		cancel()
		wg.Wait()
		st.Close()
	})
	return p
}

func TestSwarmCompressedOnceForTheWholeDownload(t *testing.T) {
	fx := newCompressFixture(t, 4, true)
	ctx := context.Background()
	ca, cb := newCompressHost(t, compress.Always), newCompressHost(t, compress.Always)
	a := newCompressPeer(t, fx, "A", ca)
	if _, err := a.engine.Download(ctx, Request{URL: fx.url}, DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := storeSHA256(t, a.store, fx.taskID); got != fx.digest {
		t.Fatalf("A's content %s, want %s", got, fx.digest)
	}
	sa := ca.Stats()
	if sa.BlocksCompressed != 4 || sa.BytesPlain != fx.size || sa.BytesWire >= fx.size/2 || sa.KeptForms != 4 || sa.SideStore.Forms != 4 {
		t.Fatalf("A's compression %+v: want all 4 blocks compressed and kept", sa)
	}
	// B gets every block from A (ranked first), in the form A kept.
	b := newCompressPeer(t, fx, "B", cb)
	res, err := b.engine.Download(ctx, Request{URL: fx.url}, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := storeSHA256(t, b.store, fx.taskID); got != fx.digest || res.Stats.BytesPeers != fx.size {
		t.Fatalf("B's content %s from %+v, want %s from peer A", got, res.Stats, fx.digest)
	}
	if sb, sa := cb.Stats(), ca.Stats(); sb.BlocksCompressed != 4 || sb.BytesWire != sa.BytesWire || sa.BlocksServedCompressed != 4 {
		t.Fatalf("B %+v, A %+v: want A to serve its 4 forms to B", sb, sa)
	}
	if up := a.upload.Stats(); up.BytesServed != ca.Stats().BytesWire {
		t.Fatalf("A's upload server counted %d bytes, want the %d on the wire", up.BytesServed, ca.Stats().BytesWire)
	}
	// C did not ask: plain blocks, though its parents hold forms.
	c := newCompressPeer(t, fx, "C", nil)
	if _, err := c.engine.Download(ctx, Request{URL: fx.url}, DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := storeSHA256(t, c.store, fx.taskID); got != fx.digest {
		t.Fatalf("C's content %s, want %s", got, fx.digest)
	}
	if served := ca.Stats().BlocksServedCompressed + cb.Stats().BlocksServedCompressed + fx.seed.Stats().BlocksServedCompressed; served != 4+4 {
		t.Fatalf("%d forms served in all, want 8 (none to C, which did not ask)", served)
	}
}

func TestSwarmCorruptCompressedBodyIsABadBlock(t *testing.T) {
	tests := []struct {
		name  string
		asks  bool
		liar  http.HandlerFunc
		check func(t *testing.T, s compress.Stats)
	}{
		{"a form that does not decode", true, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "zstd")
			w.Header().Set("Content-Length", strconv.Itoa(1000))
			_, _ = w.Write(bytes.Repeat([]byte{0x28}, 1000))
		}, func(t *testing.T, s compress.Stats) {
			if s.CorruptBodies == 0 {
				t.Errorf("no corrupt body counted: %+v", s)
			}
		}},
		{"zstd to a receiver that did not ask", false, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "zstd")
			w.Header().Set("Content-Length", strconv.Itoa(1000))
			_, _ = w.Write(make([]byte, 1000))
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fx := newCompressFixture(t, 2, false)
			liar := httptest.NewServer(tc.liar)
			defer liar.Close()
			fx.addHost("zliar", liar.Listener.Addr().String())
			var c *compress.Host
			if tc.asks {
				c = newCompressHost(t, compress.Always)
			}
			p := newCompressPeer(t, fx, "R", c)
			if _, err := p.engine.Download(context.Background(), Request{URL: fx.url}, DownloadOptions{}); err != nil {
				t.Fatal(err)
			}
			if got := storeSHA256(t, p.store, fx.taskID); got != fx.digest {
				t.Fatalf("content %s, want %s", got, fx.digest)
			}
			fx.sched.mu.Lock()
			blocked := fx.sched.blocked["zliar"]
			fx.sched.mu.Unlock()
			if !blocked {
				t.Fatal("the liar was not reported for a bad block")
			}
			if s := p.swarm.Stats(); s.BadBlocks == 0 {
				t.Fatalf("swarm stats %+v: no bad block counted", s)
			}
			if tc.check != nil {
				tc.check(t, c.Stats())
			}
		})
	}
}
