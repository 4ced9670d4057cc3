package supernode

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func TestAdvertiseAddr(t *testing.T) {
	tests := []struct {
		listen string
		check  func(string) bool
	}{
		{"127.0.0.1:8001", func(a string) bool { return a == "127.0.0.1:8001" }},
		{"[::1]:9", func(a string) bool { return a == "[::1]:9" }},
		{"10.1.2.3:80", func(a string) bool { return a == "10.1.2.3:80" }},
		// Every interface: a concrete, dialable IPv4 address with the port.
		{"0.0.0.0:8001", func(a string) bool {
			h, p, err := net.SplitHostPort(a)
			ip := net.ParseIP(h)
			return err == nil && p == "8001" && ip != nil && ip.To4() != nil && !ip.IsUnspecified()
		}},
		{"[::]:8001", func(a string) bool { return strings.HasSuffix(a, ":8001") && !strings.HasPrefix(a, "[::]") }},
	}
	for _, tc := range tests {
		addr, err := net.ResolveTCPAddr("tcp", tc.listen)
		if err != nil {
			t.Fatal(err)
		}
		if got := advertiseAddr(addr); !tc.check(got) {
			t.Errorf("advertiseAddr(%s) = %q", tc.listen, got)
		}
	}
}

func TestSupernodeRestart(t *testing.T) {
	o := startOrigin(t)
	content := origin.Content{Size: 5<<20 + 1000, Seed: 12}
	url := o.Add("f.bin", content)
	id, _ := blockstore.TaskIDForURL(url, "", "")
	dir := t.TempDir()

	sn := startSupernode(t, dir, SchedulerConfig{})
	c := dial(t, sn)
	a := newPeer(t, c, "peer-a", "")
	a.announce(false)
	tok := a.register(id, url).Token
	a.syncUntil(id, []int32{0, 1, 2})
	a.held[id] = blockstore.Bitmap{0b0000_0111}
	a.sync(&api.SyncRequest{TaskId: id, Have: []int32{0, 1, 2}})
	waitSeedComplete(t, sn, id)
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	o.ResetCounters()

	sn = startSupernode(t, dir, SchedulerConfig{})
	defer sn.Close()
	c = dial(t, sn)
	a.c = c
	// The old token stays valid: the key persisted.
	if _, err := api.VerifyToken([]ed25519.PublicKey{sn.TokenPublicKey()}, tok, id, time.Now()); err != nil {
		t.Fatalf("a token issued before the restart: %v", err)
	}
	// A re-announces its holdings and, without registering again, Syncs:
	// the task is known from the announcement and the seed resumes.
	a.announce(true)
	resp := a.sync(&api.SyncRequest{TaskId: id, Want: []int32{4}})
	if len(resp.Digests) != 1 || len(resp.Assignments) != 1 || !slices.Equal(parentsOf(resp.Assignments[0]), []string{"seed"}) {
		t.Fatalf("A's first Sync after the restart: %+v", resp)
	}
	a.sync(&api.SyncRequest{TaskId: id, Results: []*api.BlockResult{{Block: 4, ParentId: "seed", Ok: true}}})
	// B joins and gets A as a parent.
	b := newPeer(t, c, "peer-b", "")
	b.announce(false)
	if reg := b.register(id, url); reg.Meta.Length != content.Size {
		t.Fatalf("register after restart: %+v", reg)
	} else if c, err := api.VerifyToken([]ed25519.PublicKey{sn.TokenPublicKey()}, reg.Token, id, time.Now()); err != nil || c.Host != "peer-b" {
		t.Fatalf("B's token after the restart: %+v, %v", c, err)
	}
	digests, assigned := b.syncUntil(id, []int32{1, 4})
	if got := parentsOf(assigned[1]); !slices.Equal(got, []string{"peer-a", "seed"}) {
		t.Fatalf("block 1 parents after restart: %v, want [peer-a seed]", got)
	}
	if got := parentsOf(assigned[4]); !slices.Equal(got, []string{"seed"}) {
		t.Fatalf("block 4 parents after restart: %v, want [seed]", got)
	}
	if len(digests) != 2 {
		t.Fatalf("digests after restart: %d, want 2", len(digests))
	}
	// The seed revalidated (one HEAD) instead of fetching again.
	if o.BytesSent() != 0 {
		t.Fatalf("origin sent %d bytes after the restart; the seed's copy should have been revalidated", o.BytesSent())
	}
	status, body, _ := b.fetch(sn.Advertise(), id, 4, tok)
	sum := sha256.Sum256(body)
	if status != 200 || string(sum[:]) != string(digests[4]) {
		t.Fatalf("fetch after restart with the old token: HTTP %d", status)
	}
}

func TestStartErrors(t *testing.T) {
	if _, err := Start(Config{}); err == nil {
		t.Fatal("Start without a store directory succeeded")
	}
	dir := t.TempDir()
	sn := startSupernode(t, dir, SchedulerConfig{})
	defer sn.Close()
	// A second supernode on the same store fails with a clear error and leaks nothing.
	_, err := Start(Config{StoreDir: dir, GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0", Logger: quietLogger()})
	if err == nil {
		t.Fatal("second supernode on the same store started")
	}
	// Occupied port.
	_, err = Start(Config{StoreDir: t.TempDir(), GRPCListen: sn.GRPCAddr(), UploadListen: "127.0.0.1:0", Logger: quietLogger()})
	if err == nil {
		t.Fatal("supernode started on a busy gRPC port")
	}
}

// TestSeedRepairsCorruptBlock corrupts a block inside the seed's store while
// the supernode is down; after the restart, serving that block fails
// verification, the seed stops being listed as its holder, refetches it and
// serves it intact again.
func TestSeedRepairsCorruptBlock(t *testing.T) {
	o := startOrigin(t)
	content := origin.Content{Size: 3 << 20, Seed: 13}
	url := o.Add("f.bin", content)
	id, _ := blockstore.TaskIDForURL(url, "", "")
	dir := t.TempDir()
	sn := startSupernode(t, dir, SchedulerConfig{})
	c := dial(t, sn)
	p := newPeer(t, c, "p", "")
	p.announce(false)
	tok := p.register(id, url).Token
	digests, _ := p.syncUntil(id, []int32{0, 1, 2})
	waitSeedComplete(t, sn, id)
	sn.Close()

	block1 := make([]byte, 1<<20)
	content.ReadAt(block1, 1<<20)
	files, _ := filepath.Glob(filepath.Join(dir, "blocks", "data", "*"))
	corrupted := false
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if i := bytes.Index(b, block1[5000:5064]); i >= 0 {
			b[i+10] ^= 0xff
			if err := os.WriteFile(f, b, 0o644); err != nil {
				t.Fatal(err)
			}
			corrupted = true
		}
	}
	if !corrupted {
		t.Fatal("block 1 not found in the store's data files")
	}

	sn = startSupernode(t, dir, SchedulerConfig{})
	defer sn.Close()
	p.c = dial(t, sn)
	p.announce(false)
	p.register(id, url)
	// Whoever finds the corruption first (this read, or the seed's own
	// verification after revalidating), the corrupt bytes are never served.
	if status, body, _ := p.fetch(sn.Advertise(), id, 1, tok); status != http.StatusNotFound && !(status == 200 && bytes.Equal(body, block1)) {
		t.Fatalf("block 1: HTTP %d, intact %v; want 404 or the intact block", status, bytes.Equal(body, block1))
	}
	// The seed refetches block 1; once it has, it is assigned and served
	// intact. (A read racing with the repair may still see it missing once.)
	for attempt := 0; ; attempt++ {
		got, assigned := p.syncUntil(id, []int32{1})
		if !slices.Equal(parentsOf(assigned[1]), []string{"seed"}) || !bytes.Equal(got[1], digests[1]) {
			t.Fatalf("after repair: parents %v", parentsOf(assigned[1]))
		}
		status, body, _ := p.fetch(sn.Advertise(), id, 1, tok)
		if status == 200 && bytes.Equal(body, block1) {
			return
		}
		if status != http.StatusNotFound || attempt == 4 {
			t.Fatalf("repaired block: HTTP %d, intact %v", status, bytes.Equal(body, block1))
		}
	}
}

// TestSupernodeForgetsIdleTasks: a task only the seed holds is forgotten
// when idle and fully usable again after the next RegisterTask.
func TestSupernodeForgetsIdleTasks(t *testing.T) {
	o := startOrigin(t)
	url := o.Add("f.bin", origin.Content{Size: 2 << 20, Seed: 14})
	id, _ := blockstore.TaskIDForURL(url, "", "")
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{HeartbeatInterval: 20 * time.Millisecond, TaskIdle: 50 * time.Millisecond})
	defer sn.Close()
	p := newPeer(t, dial(t, sn), "p", "")
	p.announce(false)
	p.register(id, url)
	waitSeedComplete(t, sn, id)
	deadline := time.Now().Add(10 * time.Second)
	for _, known := sn.Scheduler().Task(id); known; _, known = sn.Scheduler().Task(id) {
		if time.Now().After(deadline) {
			t.Fatal("idle task never forgotten")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.announce(false)
	p.register(id, url)
	resp := p.sync(&api.SyncRequest{TaskId: id, Want: []int32{0, 1}})
	if len(resp.Digests) != 2 || len(resp.Assignments) != 2 || resp.SeedBlocks != 2 {
		t.Fatalf("after re-registering a forgotten task: %+v", resp)
	}
}
