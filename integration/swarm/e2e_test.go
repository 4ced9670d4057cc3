package swarm

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/peer"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// TestEndToEndEncryption: dfget --e2e through one daemon, then two more
// daemons at once through the local API with e2e: every output is
// sha256-exact, the later ones fed by the first daemon and the seed. Every
// block answer any host's upload server (the seed's included) sent — taps
// on the wire — and every file of every store holds none of 32-byte pieces
// of the content: the swarm relays and keeps only ciphertext. A restarted
// daemon gets the key again and serves its stored copy in the clear,
// fetching nothing; with the supernode gone the key cannot be had and
// dfget --e2e still succeeds, from the origin in the clear.
func TestEndToEndEncryption(t *testing.T) {
	const size = 20 << 20
	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 4242}
	url := org.Add("e2e.bin", c)
	want := c.Digest("sha256")

	snTap := newTapProxy(t)
	snDir := t.TempDir()
	snUpload := freeAddr(t)
	snTap.target.Store(snUpload)
	p, line := start(t, "supernode", "supernode", "supernode listening",
		"--listen", "127.0.0.1:0", "--upload-listen", snUpload, "--advertise", snTap.addr(), "--metrics-listen", "127.0.0.1:0",
		"--store", filepath.Join(snDir, "store"), "--log-level", "info")
	sn := &supernode{proc: p, dir: snDir, grpc: field(line, "grpc"), upload: snUpload}

	var ds []*daemon
	var taps []*tapProxy
	var dirs []string
	for _, id := range []string{"e2e-a", "e2e-b", "e2e-c"} {
		tap := newTapProxy(t)
		listen := freeAddr(t)
		tap.target.Store(listen)
		dir := t.TempDir()
		d := startDaemonIn(t, sn, id, dir, "--listen", listen, "--advertise", tap.addr())
		ds, taps, dirs = append(ds, d), append(taps, tap), append(dirs, dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	outDir := t.TempDir()

	dfgetE2E := func(d *daemon, name string) {
		t.Helper()
		out := filepath.Join(outDir, name)
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "dfget"), "--daemon-sock", d.sock, "--e2e", "-O", out, url)
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("dfget --e2e through %s: %v: %s", d.id, err, b)
		}
		if got := fileSHA256(t, out); got != want {
			t.Fatalf("dfget --e2e through %s: output %s, want %s", d.id, got, want)
		}
	}
	dfgetE2E(ds[0], "a.out")
	res := downloadRequests(ctx, t, ds[1:], peer.DownloadRequest{URL: url, E2E: true}, nil)
	var fromPeers int64
	for _, r := range res {
		checkExact(t, r, want)
		fromPeers += r.res.BytesPeers
		t.Logf("%s: origin %d, seed %d, peers %d", r.d.id, r.res.BytesOrigin, r.res.BytesSeed, r.res.BytesPeers)
		if r.res.BytesOrigin != 0 {
			t.Errorf("%s fetched %d bytes from the origin", r.d.id, r.res.BytesOrigin)
		}
	}
	if fromPeers == 0 {
		t.Fatal("B and C took nothing from peers: nothing was relayed, the test proves nothing")
	}

	ms := markers(c)
	var answered int
	for i, tp := range append(taps, snTap) {
		got := tp.answered()
		answered += len(got)
		for _, m := range ms {
			if bytes.Contains(got, m) {
				t.Fatalf("tap %d: an upload server sent plaintext of the content (%x…)", i, m[:8])
			}
		}
	}
	if answered < size {
		t.Fatalf("the taps saw %d bytes of answers, less than the content (%d): the test proves nothing", answered, size)
	}
	for _, dir := range append([]string{filepath.Join(snDir, "store")}, filepath.Join(dirs[0], "store"), filepath.Join(dirs[1], "store"), filepath.Join(dirs[2], "store")) {
		hits, files := grepTree(t, dir, ms)
		if files == 0 {
			t.Fatalf("no files under %s", dir)
		}
		if len(hits) > 0 {
			t.Fatalf("plaintext of the content under %s: %v", dir, hits)
		}
	}
	t.Logf("%d bytes of block answers on the wire and 4 stores: no plaintext marker (of %d)", answered, len(ms))

	// Restart A on its store: the key comes again from the supernode; the
	// copy is read in the clear from the store, nothing fetched.
	ds[0].stop()
	a := startDaemonIn(t, sn, "e2e-a", dirs[0], "--listen", freeAddr(t))
	res = downloadRequests(ctx, t, []*daemon{a}, peer.DownloadRequest{URL: url, E2E: true}, nil)
	checkExact(t, res[0], want)
	if r := res[0].res; r.BytesLocal != size {
		t.Fatalf("restarted A: local %d, origin %d, seed %d, peers %d; want all %d local", r.BytesLocal, r.BytesOrigin, r.BytesSeed, r.BytesPeers, size)
	}

	// No supernode, no key: the download falls back to the origin, in the clear.
	sn.kill()
	dfgetE2E(ds[1], "b-no-supernode.out")
}

// TestEndToEndPrivate: a daemon with --e2e-private downloads private
// content (credentials) end-to-end encrypted: exact, and its store holds
// no plaintext. The supernode hands the task key only to a host whose own
// credentials the origin accepts: a host with wrong ones, or none, gets no
// token and no key.
func TestEndToEndPrivate(t *testing.T) {
	const secret = "Bearer e2e-private-credential"
	o := newOrigin(t)
	c := origin.Content{Size: 6 << 20, Seed: 78}
	o.Add("private-e2e.bin", c)
	ao := newAuthOrigin(t, o, secret)
	url := ao.srv.URL + "/private-e2e.bin"
	want := c.Digest("sha256")

	sn := startSupernode(t, "0")
	dir := t.TempDir()
	a := startDaemonIn(t, sn, "e2e-priv-a", dir, "--e2e-private")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res := downloadRequests(ctx, t, []*daemon{a}, peer.DownloadRequest{URL: url, Headers: map[string]string{"Authorization": secret}}, nil)
	checkExact(t, res[0], want)
	plainID, _ := blockstore.TaskIDForURL(url, "", "")
	if res[0].res.TaskID != blockstore.E2ETaskID(plainID) {
		t.Fatalf("--e2e-private stored task %s, want the end-to-end one %s", res[0].res.TaskID, blockstore.E2ETaskID(plainID))
	}
	if hits, _ := grepTree(t, filepath.Join(dir, "store"), markers(c)); len(hits) > 0 {
		t.Fatalf("plaintext under the daemon's store: %v", hits)
	}

	cc := controlClient(t, sn.grpc)
	if _, err := cc.Announce(ctx, &api.AnnounceRequest{Host: &api.Host{Id: "intruder", UploadAddr: "127.0.0.1:1"}}); err != nil {
		t.Fatal(err)
	}
	for _, hdr := range [][]*api.Header{nil, {{Name: "Authorization", Value: "Bearer wrong"}}} {
		resp, err := cc.RegisterTask(ctx, &api.RegisterTaskRequest{HostId: "intruder", Url: url, Headers: hdr, E2E: true})
		if status.Code(err) != codes.PermissionDenied || len(resp.GetTaskKey()) != 0 {
			t.Fatalf("RegisterTask with %v: key of %d bytes, %v; want PermissionDenied and no key", hdr, len(resp.GetTaskKey()), err)
		}
	}
	resp, err := cc.RegisterTask(ctx, &api.RegisterTaskRequest{HostId: "intruder", Url: url, E2E: true,
		Headers: []*api.Header{{Name: "Authorization", Value: secret}}})
	if err != nil || len(resp.GetTaskKey()) != blockstore.E2EKeySize || !resp.GetMeta().GetE2E() || resp.GetToken() == "" {
		t.Fatalf("RegisterTask with the right credentials: %v, %v; want a token and a 32-byte key", resp, err)
	}
}
