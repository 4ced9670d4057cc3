package chaos

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// dfget's exit code for an origin unreachable or failing (5xx).
const exitOrigin = 3

// The supernode's defaults: a failed seed task is retried this long after
// its failure (supernode.SeedConfig.RetryAfter), with this many parallel
// origin requests (--seed-concurrency).
const (
	seedRetryAfter  = 5 * time.Second
	seedConcurrency = 6
)

// TestChaosOrigin5xx: the origin starts answering 500 a third of the way
// into the content. A short outage (1 s, within the retries' backoff) is
// ridden out: the outputs are exact. A lasting one fails every download
// with exit code 3 and an error naming HTTP 500, leaving no file at -O
// (nor a temporary one); once the origin heals, the same command completes
// exact and the seed resumes: the origin sends about the part it had not
// sent before. Without retries the
// short outage fails; without whole-content verification or the atomic
// output a cut body could leave a wrong or partial file.
func TestChaosOrigin5xx(t *testing.T) {
	size := int64(32*scale()) * mib
	org := newOrigin(t)
	org.SetRate(16 * mib)
	sn := startSupernode(t, "0")
	ds := startDaemons(t, sn, "peer", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()

	// A short outage: healed after a second.
	c1 := origin.Content{Size: size, Seed: 21}
	url1 := org.Add("short.bin", c1)
	org.FailAfter(size/3, http.StatusInternalServerError)
	done := make(chan []result, 1)
	go func() { done <- dfgetAll(ctx, ds, url1, t.TempDir()) }()
	waitFor(t, time.Minute, "the origin to fail", func() bool { return org.Failures() > 0 })
	time.Sleep(time.Second)
	org.FailAfter(-1, 0)
	for _, r := range <-done {
		checkExact(t, r, c1.Digest("sha256"))
	}
	short := org.Failures()
	t.Logf("short outage: %d requests failed or cut; downloads exact", short)

	// A lasting outage, half-way through.
	c2 := origin.Content{Size: size, Seed: 22}
	url2 := org.Add("long.bin", c2)
	org.ResetCounters()
	org.FailAfter(size/2, http.StatusInternalServerError)
	dir := t.TempDir()
	for _, r := range dfgetAll(ctx, ds, url2, dir) {
		if r.err == nil {
			t.Errorf("%s: dfget succeeded although the origin failed for good", r.d.id)
			continue
		}
		t.Logf("%s: dfget exit %d: %s", r.d.id, r.code, r.msg)
		if r.code != exitOrigin || !strings.Contains(r.msg, "500") {
			t.Errorf("%s: dfget exit %d, %q: want exit %d and an error naming HTTP 500", r.d.id, r.code, r.msg, exitOrigin)
		}
		checkNoOutput(t, r.out)
	}
	sent := org.BytesSent()
	org.FailAfter(-1, 0)
	org.ResetCounters()
	// The seed retries a failed task seedRetryAfter after its failure (a
	// peer asking sooner goes to the origin itself); the retry resumes
	// from the blocks in the seed's store.
	time.Sleep(seedRetryAfter)
	for _, r := range dfgetAll(ctx, ds, url2, dir) {
		checkExact(t, r, c2.Digest("sha256"))
	}
	again := org.BytesSent()
	t.Logf("lasting outage: the origin sent %.1f MiB before failing, %.1f MiB after healing",
		float64(sent)/mib, float64(again)/mib)
	// Bodies cut by the failure (one per seed fetch in flight) are lost.
	if slack := int64(seedConcurrency) * mib; again > size-sent+slack {
		t.Errorf("after healing the origin sent %.1f MiB, want at most the %.1f MiB it had not sent (+%d MiB cut in flight): the seed did not resume",
			float64(again)/mib, float64(size-sent)/mib, slack/mib)
	}
	record(t, outcome{Size: size, Peers: len(ds), Took: time.Since(began), OriginCopies: float64(sent+again) / float64(size), Refetched: -1, Rejected: -1,
		Note: "500 from 1/3 for 1 s: ridden out; from 1/2 for good: exit 3, then the seed resumed"})
}

// TestChaosOriginVanishes: the origin disappears (listener closed,
// connections cut) a third of the way into a download. dfget fails with
// exit code 3 and an error saying the origin is unreachable, leaving no
// output; once the origin is back on its address (and the seed's retry
// delay has passed) the same command completes exact from the blocks the
// stores kept: the origin sends at most the part the daemon lacked.
func TestChaosOriginVanishes(t *testing.T) {
	size := int64(32*scale()) * mib
	org := newOrigin(t)
	org.SetRate(16 * mib)
	c := origin.Content{Size: size, Seed: 23}
	url := org.Add("f.bin", c)
	sn := startSupernode(t, "0")
	d := startDaemon(t, sn, "peer0", "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	out := filepath.Join(t.TempDir(), "f.out")
	done := make(chan result, 1)
	go func() { done <- dfget(ctx, d, url, out) }()
	var held int64
	waitFor(t, time.Minute, "the daemon to hold a third of the content", func() bool {
		held = d.stored()
		return held >= size/3
	})
	if err := org.Vanish(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	sent := org.BytesSent()
	if r.err == nil {
		t.Fatal("dfget succeeded although the origin vanished")
	}
	t.Logf("dfget exit %d: %s", r.code, r.msg)
	if r.code != exitOrigin || !strings.Contains(r.msg, "unreachable") {
		t.Errorf("dfget exit %d, %q: want exit %d and an error saying the origin is unreachable", r.code, r.msg, exitOrigin)
	}
	checkNoOutput(t, out)
	if err := org.Return(); err != nil {
		t.Fatal(err)
	}
	org.ResetCounters()
	// Retry once the seed retries its failed task (see TestChaosOrigin5xx):
	// sooner, the daemon fetches what it lacks from the origin itself while
	// the seed, retrying meanwhile, fetches its own missing part too.
	time.Sleep(seedRetryAfter)
	r = dfget(ctx, d, url, out)
	checkExact(t, r, c.Digest("sha256"))
	again := org.BytesSent()
	t.Logf("the origin sent %.1f MiB before vanishing, %.1f MiB after its return; the daemon reused %.1f MiB",
		float64(sent)/mib, float64(again)/mib, float64(r.rep.BytesLocal)/mib)
	if r.rep.BytesLocal < held {
		t.Errorf("the retry reused %.1f MiB of the daemon's store, which held %.1f MiB when the origin vanished", float64(r.rep.BytesLocal)/mib, float64(held)/mib)
	}
	// The seed held at least what the daemon held; its bodies cut in flight are lost.
	if slack := int64(seedConcurrency) * mib; again > size-held+slack {
		t.Errorf("after its return the origin sent %.1f MiB, want at most the %.1f MiB the daemon lacked (+%d MiB cut in flight): the download did not resume",
			float64(again)/mib, float64(size-held)/mib, slack/mib)
	}
	record(t, outcome{Size: size, Peers: 1, Took: time.Since(began), OriginCopies: float64(sent+again) / float64(size), Refetched: -1, Rejected: -1,
		Note: "vanished at 1/3: exit 3, then resumed"})
}
