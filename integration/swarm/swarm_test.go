package swarm

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

const mib = 1 << 20

// totals sums where the bytes of successful downloads came from.
type totals struct{ origin, seed, peers, local int64 }

func sum(outs []outcome) totals {
	var s totals
	for _, o := range outs {
		if o.err == nil {
			s.origin += o.res.BytesOrigin
			s.seed += o.res.BytesSeed
			s.peers += o.res.BytesPeers
			s.local += o.res.BytesLocal
		}
	}
	return s
}

func table(outs []outcome) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %-4s %8s %10s %10s %10s %10s %s\n", "peer", "idc", "time", "origin", "seed", "peers", "uploaded", "result")
	for _, o := range outs {
		r := "ok"
		if o.err != nil {
			r = o.err.Error()
		}
		fmt.Fprintf(&b, "%-8s %-4s %7.1fs %9.1fM %9.1fM %9.1fM %9.1fM %s\n", o.d.id, o.d.idc, o.took.Seconds(),
			float64(o.res.BytesOrigin)/mib, float64(o.res.BytesSeed)/mib, float64(o.res.BytesPeers)/mib, float64(o.served)/mib, r)
		if sw := o.stats.Swarm; sw != nil && testing.Verbose() {
			fmt.Fprintf(&b, "         waited %.1fs for parents, %.1fs transferring, %d empty rounds, %d syncs, %d steals, %d parent errors, %d busy\n",
				sw.WaitSeconds, sw.TransferSeconds, sw.EmptyRounds, sw.Syncs, sw.Steals, sw.ParentErrors, o.stats.Upload.Busy)
		}
	}
	return b.String()
}

// TestSwarm256MiB is the loopback swarm: 1 origin, 1 supernode, 8
// dfdaemons, a 256 MiB file. Every host (the seed included) uploads at most
// 24 MiB/s, so the seed alone would need 8×256/24 ≈ 85 s to serve everyone;
// the peers together upload 8× more. All outputs must be exact, the origin
// must send about one copy, and most bytes must come from non-seed peers.
// The downloads are real `dfget --daemon-sock` processes.
func TestSwarm256MiB(t *testing.T) {
	const size = 256 * mib
	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 256}
	url := org.Add("big.bin", c)
	want := c.Digest("sha256")
	sn := startSupernode(t, "24M")
	var ds []*daemon
	for i := range 8 {
		ds = append(ds, startDaemon(t, sn, fmt.Sprintf("peer%d", i), "", "--upload-rate", "24M"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	outs := dfgetAll(ctx, t, ds, url)
	took := time.Since(began)
	for _, o := range outs {
		checkExact(t, o, want)
	}
	s := sum(outs)
	received := s.origin + s.seed + s.peers
	egress := float64(org.BytesSent()) / size
	peerShare := float64(s.peers) / float64(received)
	t.Logf("256 MiB to 8 peers in %.1fs; origin egress %.3f copies; bytes received: %.1f%% from peers, %.1f%% from the seed, %.1f%% from the origin\n%s",
		took.Seconds(), egress, 100*peerShare, 100*float64(s.seed)/float64(received), 100*float64(s.origin)/float64(received), table(outs))
	if egress > 1.05 {
		t.Errorf("origin sent %.3f copies of the file, want ≤ 1.05", egress)
	}
	if peerShare < 0.5 {
		t.Errorf("%.1f%% of the bytes came from non-seed peers, want ≥ 50%%", 100*peerShare)
	}
}

// TestKillThreeOfEight kills 3 of 8 peers mid-swarm; the other 5 finish exact.
func TestKillThreeOfEight(t *testing.T) {
	const size = 64 * mib
	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 3}
	url := org.Add("f.bin", c)
	want := c.Digest("sha256")
	sn := startSupernode(t, "8M")
	var ds []*daemon
	for i := range 8 {
		ds = append(ds, startDaemon(t, sn, fmt.Sprintf("peer%d", i), "", "--upload-rate", "8M"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pt := newProgressTracker(len(ds), 0.3)
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		select {
		case <-pt.reached:
		case <-ctx.Done():
			return
		}
		for _, d := range ds[:3] {
			d.kill()
		}
	}()
	outs := downloadAll(ctx, t, ds, url, pt.update)
	<-killed
	t.Logf("after killing peer0-2 at 30%% progress:\n%s", table(outs))
	for _, o := range outs[3:] {
		checkExact(t, o, want)
	}
	if s := sum(outs[3:]); s.peers == 0 {
		t.Errorf("the surviving peers got nothing from each other: %+v", s)
	}
}

// TestLyingPeer: a peer that serves corrupted blocks (the dfdaemon test hook
// --debug-corrupt-uploads) is caught by its first victim, reported, and
// blocked by the supernode; no output is wrong.
func TestLyingPeer(t *testing.T) {
	const size = 32 * mib
	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 4}
	url := org.Add("f.bin", c)
	want := c.Digest("sha256")
	sn := startSupernode(t, "16M")
	liar := startDaemon(t, sn, "liar", "", "--debug-corrupt-uploads")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The liar downloads honestly first, so it holds every block.
	checkExact(t, downloadAll(ctx, t, []*daemon{liar}, url, nil)[0], want)

	var ds []*daemon
	for i := range 4 {
		ds = append(ds, startDaemon(t, sn, fmt.Sprintf("peer%d", i), ""))
	}
	outs := downloadAll(ctx, t, ds, url, nil)
	t.Logf("with a lying peer:\n%s", table(outs))
	for _, o := range outs {
		checkExact(t, o, want)
	}
	var bad int64
	for _, d := range ds {
		st, err := d.client.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		bad += st.Swarm.BadBlocks
		// Isolation is immediate: a peer fetches at most one round of
		// parallel blocks (8) from the liar before its report lands.
		if st.Swarm.BadBlocks > 8 {
			t.Errorf("%s received %d bad blocks; the liar was not isolated after the first", d.id, st.Swarm.BadBlocks)
		}
	}
	if bad == 0 {
		t.Error("nobody fetched from the liar: the test proves nothing")
	}
	blocked := false
	for _, task := range sn.state(t).Scheduler.Tasks {
		if slices.Contains(task.Blocked, "liar") {
			blocked = true
			if n := task.Holders["liar"]; n != 0 {
				t.Errorf("the supernode still lists the liar as holder of %d blocks", n)
			}
		}
	}
	if !blocked {
		t.Error("the supernode's /debug/state does not show the liar blocked")
	}
	t.Logf("bad blocks received in total: %d", bad)
}

// TestSupernodeKilled: the supernode dies mid-swarm; every download still
// finishes exact, falling back to the origin.
func TestSupernodeKilled(t *testing.T) {
	const size = 64 * mib
	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 5}
	url := org.Add("f.bin", c)
	want := c.Digest("sha256")
	sn := startSupernode(t, "8M")
	var ds []*daemon
	for i := range 4 {
		ds = append(ds, startDaemon(t, sn, fmt.Sprintf("peer%d", i), "", "--upload-rate", "8M"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pt := newProgressTracker(len(ds), 0.2)
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		select {
		case <-pt.reached:
			sn.kill()
		case <-ctx.Done():
		}
	}()
	outs := downloadAll(ctx, t, ds, url, pt.update)
	<-killed
	t.Logf("supernode killed at 20%% progress:\n%s", table(outs))
	for _, o := range outs {
		checkExact(t, o, want)
	}
	if s := sum(outs); s.origin == 0 {
		t.Errorf("no bytes came from the origin after the supernode died: %+v", s)
	}
}

// TestLocality: two idcs of 4 peers; the scheduler keeps most peer-to-peer
// bytes inside each idc. With random parent choice 4 of a peer's 7 possible
// peer parents are in the other idc (57% of the bytes).
func TestLocality(t *testing.T) {
	const size = 64 * mib
	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 6}
	url := org.Add("f.bin", c)
	want := c.Digest("sha256")
	sn := startSupernode(t, "16M")
	var ds []*daemon
	idcOf := map[string]string{}
	for i := range 8 {
		idc := []string{"east", "west"}[i%2]
		d := startDaemon(t, sn, fmt.Sprintf("peer%d", i), idc, "--upload-rate", "16M")
		ds = append(ds, d)
		idcOf[d.id] = idc
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	outs := downloadAll(ctx, t, ds, url, nil)
	for _, o := range outs {
		checkExact(t, o, want)
	}
	var same, cross int64
	for _, d := range ds {
		st, err := d.client.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for parent, n := range st.Swarm.BytesByParent {
			switch pidc, ok := idcOf[parent]; {
			case !ok: // the seed
			case pidc == d.idc:
				same += n
			default:
				cross += n
			}
		}
	}
	frac := float64(cross) / float64(same+cross)
	t.Logf("peer-to-peer bytes: %.1f MiB inside an idc, %.1f MiB across (%.1f%% cross; random choice ≈ 57%%)\n%s",
		float64(same)/mib, float64(cross)/mib, 100*frac, table(outs))
	if same+cross == 0 {
		t.Fatal("no peer-to-peer bytes at all")
	}
	if frac > 0.3 {
		t.Errorf("%.1f%% of peer-to-peer bytes crossed idcs, want well below random choice (57%%): ≤ 30%%", 100*frac)
	}
}

// TestCleanShutdownLeaves: SIGTERM makes a dfdaemon leave the swarm (the
// supernode forgets it at once instead of after missed heartbeats) and exit 0.
func TestCleanShutdownLeaves(t *testing.T) {
	sn := startSupernode(t, "0")
	d := startDaemon(t, sn, "leaver", "")
	hosts := func() []string {
		var ids []string
		for _, h := range sn.state(t).Scheduler.Hosts {
			ids = append(ids, h.ID)
		}
		return ids
	}
	if !slices.Contains(hosts(), "leaver") {
		t.Fatalf("the supernode does not know the daemon: hosts %v", hosts())
	}
	d.stop()
	if d.Err() != nil {
		t.Fatalf("dfdaemon exited with %v after SIGTERM, want a clean exit", d.Err())
	}
	if slices.Contains(hosts(), "leaver") {
		t.Fatalf("the daemon did not leave: hosts %v", hosts())
	}
}

// TestSupernodeRestart: after a supernode restart (same store and address),
// peers re-announce what they hold, so a newcomer gets the content from them.
func TestSupernodeRestart(t *testing.T) {
	const size = 16 * mib
	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 8}
	url := org.Add("f.bin", c)
	want := c.Digest("sha256")
	sn := startSupernode(t, "0")
	a := startDaemon(t, sn, "holder", "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	checkExact(t, downloadAll(ctx, t, []*daemon{a}, url, nil)[0], want)

	sn.kill()
	time.Sleep(3 * time.Second) // the holder's heartbeats fail meanwhile
	sn2 := startSupernodeAt(t, sn.dir, sn.grpc, sn.upload, "0")
	deadline := time.Now().Add(30 * time.Second)
	for {
		held := 0
		for _, task := range sn2.state(t).Scheduler.Tasks {
			held += task.Holders["holder"]
		}
		if held == size/mib {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted supernode learned %d of the holder's %d blocks", held, size/mib)
		}
		time.Sleep(100 * time.Millisecond)
	}
	b := startDaemon(t, sn2, "newcomer", "")
	o := downloadAll(ctx, t, []*daemon{b}, url, nil)[0]
	t.Logf("after the restart:\n%s", table([]outcome{o}))
	checkExact(t, o, want)
	if o.res.BytesPeers == 0 {
		t.Errorf("the newcomer got nothing from the holder: %+v", o.res)
	}
}

// TestEmbeddedDfget: dfget without a daemon joins the swarm with an embedded
// leech peer (--supernode) and gets the content from the daemons that hold it.
func TestEmbeddedDfget(t *testing.T) {
	const size = 16 * mib
	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 9}
	url := org.Add("f.bin", c)
	want := c.Digest("sha256")
	sn := startSupernode(t, "0")
	ds := []*daemon{startDaemon(t, sn, "peer0", ""), startDaemon(t, sn, "peer1", "")}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, o := range downloadAll(ctx, t, ds, url, nil) {
		checkExact(t, o, want)
	}
	out := filepath.Join(t.TempDir(), "embedded.out")
	res, err := dfget(ctx, out, "--supernode", sn.grpc, "--store", filepath.Join(t.TempDir(), "store"), url)
	if err != nil {
		t.Fatal(err)
	}
	if got := fileSHA256(t, out); got != want {
		t.Fatalf("embedded dfget output %s, want %s", got, want)
	}
	if res.BytesPeers == 0 || res.BytesOrigin != 0 {
		t.Fatalf("embedded dfget bytes %+v: want them from the daemons, none from the origin", res)
	}
	t.Logf("embedded dfget: %.1f MiB from peers, %.1f MiB from the seed", float64(res.BytesPeers)/mib, float64(res.BytesSeed)/mib)
}
