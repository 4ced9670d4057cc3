package chaos

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// progress is the mean fraction of size the daemons' stores hold.
func progress(ds []*daemon, size int64) float64 {
	var sum int64
	for _, d := range ds {
		sum += d.stored()
	}
	return float64(sum) / float64(size) / float64(len(ds))
}

// TestChaosKillPeers: 30% of the peers die by SIGKILL once the swarm is 30%
// through a file. The survivors finish exact, still getting blocks from each
// other, the origin sends at most two copies (the survivors do not fall back
// to it for what the dead held), and the supernode forgets the dead hosts.
// Without failover from dead parents (next parent, then forgetting silent
// hosts) the survivors' blocks assigned to the dead would never arrive.
func TestChaosKillPeers(t *testing.T) {
	size := int64(32*scale()) * mib
	n := 6 * scale()
	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 11}
	url := org.Add("f.bin", c)
	want := c.Digest("sha256")
	sn := startSupernode(t, "8M")
	ds := startDaemons(t, sn, "peer", n, "--upload-rate", "8M")
	k := max(1, (3*n+5)/10) // 30%, rounded
	victims, survivors := ds[:k], ds[k:]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	done := make(chan []result, 1)
	go func() { done <- dfgetAll(ctx, ds, url, t.TempDir()) }()
	var outs []result
	for outs == nil && progress(ds, size) < 0.3 {
		select {
		case outs = <-done:
		case <-time.After(50 * time.Millisecond):
		}
	}
	if outs != nil {
		t.Fatal("the downloads ended before the swarm was 30% through: the kill proves nothing")
	}
	for _, d := range victims {
		d.Kill()
	}
	t.Logf("killed %d of %d peers at %.0f%% progress", len(victims), n, 100*progress(survivors, size))
	outs = <-done
	took := time.Since(began)
	var peers int64
	for _, r := range outs[len(victims):] {
		checkExact(t, r, want)
		peers += r.rep.BytesPeers
	}
	for _, r := range outs[:len(victims)] {
		if r.err == nil {
			t.Errorf("%s: dfget succeeded although its daemon was killed", r.d.id)
		}
	}
	copies := float64(org.BytesSent()) / float64(size)
	if copies > 2 {
		t.Errorf("the origin sent %.2f copies, want ≤ 2", copies)
	}
	if peers == 0 {
		t.Error("the survivors got nothing from each other")
	}
	// Silent hosts expire (3 missed heartbeats of 2 s).
	waitFor(t, 20*time.Second, "the supernode to forget the killed peers", func() bool {
		st, err := sn.state()
		if err != nil {
			return false
		}
		for _, h := range st.Scheduler.Hosts {
			if slices.ContainsFunc(victims, func(d *daemon) bool { return d.id == h.ID }) {
				return false
			}
		}
		return true
	})
	record(t, outcome{Size: size, Peers: n, Took: took, OriginCopies: copies, Refetched: -1, Rejected: -1,
		Note: "killed " + strings.Join(ids(victims), ",") + " at 30%"})
}

func ids(ds []*daemon) []string {
	var s []string
	for _, d := range ds {
		s = append(s, d.id)
	}
	return s
}

// TestChaosDaemonRestartResumes: a dfdaemon dies by SIGKILL mid-download
// and comes back on the same store. Its store is consistent (every block it
// marks present reads back as the origin's bytes, checked offline before the
// restart), nothing committed before the kill is lost, and the re-run
// dfget refetches none of the blocks the store held: it fetches exactly
// the blocks the store lacked. Without resuming (a pending task dropped or
// its blocks distrusted on restart) it would fetch the whole file again.
func TestChaosDaemonRestartResumes(t *testing.T) {
	size := int64(32*scale()) * mib
	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 12}
	url := org.Add("f.bin", c)
	want := c.Digest("sha256")
	sn := startSupernode(t, "8M")
	d := startDaemon(t, sn, "victim", "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "f.out")
	began := time.Now()
	done := make(chan result, 1)
	go func() { done <- dfget(ctx, d, url, out) }()
	var before int64
	waitFor(t, time.Minute, "the victim to hold 40% of the file", func() bool {
		before = d.stored()
		return before >= size*4/10
	})
	d.Kill()
	r := <-done
	if r.err == nil {
		t.Fatal("dfget succeeded although its daemon was killed mid-download")
	}
	t.Logf("dfget after the daemon died (exit %d): %s", r.code, r.msg)
	if !strings.Contains(r.msg, "daemon") {
		t.Errorf("dfget's error does not say the daemon went away: %q", r.msg)
	}
	// The daemon died holding the temporary output: the next download of
	// the same output removes it (its lock died with the daemon).
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a download whose daemon was killed left %s", out)
	}

	sc := inspectStore(t, d.store(), taskID(t, url), c)
	t.Logf("after the kill the store holds %v (%.1f MiB reported stored just before)", sc, float64(before)/mib)
	if int64(sc.present)*sc.bs < before {
		t.Errorf("the store lost blocks it had committed: %d MiB before the kill, %d MiB after", before/mib, int64(sc.present)*sc.bs/mib)
	}
	if sc.present == sc.total {
		t.Fatal("the store already held the whole file: the restart proves nothing")
	}
	d.restart(t)
	r = dfget(ctx, d, url, out)
	checkExact(t, r, want)
	checkNoTemp(t, filepath.Dir(out))
	took := time.Since(began)
	missing := size - int64(sc.present)*sc.bs
	refetched := int((r.rep.fetched() - missing) / sc.bs)
	t.Logf("after the restart: %.1f MiB local, %.1f MiB fetched (%.1f MiB were missing)",
		float64(r.rep.BytesLocal)/mib, float64(r.rep.fetched())/mib, float64(missing)/mib)
	if r.rep.fetched() != missing || r.rep.BytesLocal != int64(sc.present)*sc.bs {
		t.Errorf("the resumed download fetched %d bytes and reused %d, want exactly the %d missing fetched and the %d held reused",
			r.rep.fetched(), r.rep.BytesLocal, missing, int64(sc.present)*sc.bs)
	}
	record(t, outcome{Size: size, Peers: 1, Took: took, OriginCopies: float64(org.BytesSent()) / float64(size), Refetched: refetched, Rejected: -1,
		Note: sc.String() + " kept across kill -9"})
}

// TestChaosSupernodeRestart: the supernode dies by SIGKILL while several
// peers are mid-transfer and comes back 2 s later on its store and
// addresses. Every output is exact; the peers wait for it (using the
// parents they know) instead of turning to the origin, and the restarted
// seed resumes from its store, so the origin sends about one copy; the
// restarted supernode relearns every peer's holdings.
func TestChaosSupernodeRestart(t *testing.T) {
	size := int64(48*scale()) * mib
	n := 4 * scale()
	org := newOrigin(t)
	org.SetRate(16 * mib)
	c := origin.Content{Size: size, Seed: 13}
	url := org.Add("f.bin", c)
	want := c.Digest("sha256")
	sn := startSupernode(t, "8M")
	ds := startDaemons(t, sn, "peer", n, "--upload-rate", "8M")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	done := make(chan []result, 1)
	go func() { done <- dfgetAll(ctx, ds, url, t.TempDir()) }()
	waitFor(t, time.Minute, "the peers to be 25% through", func() bool { return progress(ds, size) >= 0.25 })
	sn.Kill()
	at := progress(ds, size)
	time.Sleep(2 * time.Second)
	sn2 := restartSupernode(t, sn)
	outs := <-done
	took := time.Since(began)
	for _, r := range outs {
		checkExact(t, r, want)
	}
	copies := float64(org.BytesSent()) / float64(size)
	t.Logf("supernode killed at %.0f%% progress, back after 2 s; origin sent %.2f copies", 100*at, copies)
	if copies > 1.15 {
		t.Errorf("the origin sent %.2f copies across the supernode's restart, want ≤ 1.15", copies)
	}
	blocks := int(size / mib)
	waitFor(t, 30*time.Second, "the restarted supernode to know every peer's blocks", func() bool {
		st, err := sn2.state()
		if err != nil {
			return false
		}
		if len(st.Scheduler.Tasks) != 1 {
			return false
		}
		for _, d := range ds {
			if st.Scheduler.Tasks[0].Holders[d.id] != blocks {
				return false
			}
		}
		return true
	})
	record(t, outcome{Size: size, Peers: n, Took: took, OriginCopies: copies, Refetched: -1, Rejected: -1,
		Note: "supernode kill -9 at 25%, back after 2 s"})
}
