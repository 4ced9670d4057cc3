package supernode

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dfly-p2p/dfly/blockstore"
)

func TestCacheResult(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	stored := blockstore.Task{ID: "t", CreatedAt: t0}
	tests := []struct {
		name  string
		found bool
		r     resolved
		want  string
	}{
		{"not in the store", false, resolved{task: blockstore.Task{ID: "t", CreatedAt: t0.Add(time.Second)}, validated: t0}, cacheMiss},
		{"used without asking the origin", true, resolved{task: stored}, cacheHit},
		{"the origin confirmed the copy", true, resolved{task: stored, validated: t0.Add(time.Minute)}, cacheRevalidated},
		{"the copy was retired and created anew", true, resolved{task: blockstore.Task{ID: "t", CreatedAt: t0.Add(time.Minute)}, validated: t0.Add(time.Minute)}, cacheRefetched},
	}
	for _, tc := range tests {
		if got := cacheResult(stored, tc.found, tc.r); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestSeedCacheCounts drives a real seed through each result: a first
// registration misses; registrations within RevalidateAfter hit (Resume
// calls count nothing); after a restart the stored copy is revalidated
// (304); a changed origin is refetched; a failed resolution counts nothing.
func TestSeedCacheCounts(t *testing.T) {
	o := newSeedOrigin(t, randomContent(1<<20+7, 21), `"v1"`)
	store := openStore(t, t.TempDir())
	defer store.Close()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	req := SeedRequest{TaskID: "t", URL: o.url()}
	newSeed := func(revalidateAfter time.Duration) *Seed {
		cfg := (&seedEvents{}).config(store)
		cfg.RevalidateAfter, cfg.RetryAfter, cfg.Metrics = revalidateAfter, time.Nanosecond, m
		return NewSeed(cfg)
	}
	register := func(seed *Seed) {
		t.Helper()
		if _, err := seed.Ensure(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		waitSeed(t, seed, req.TaskID)
	}
	want := map[string]float64{}
	check := func(step string) {
		t.Helper()
		got := scrape(t, reg)
		for _, r := range []string{cacheHit, cacheMiss, cacheRevalidated, cacheRefetched} {
			k := `dfly_seed_cache_total{result="` + r + `"}`
			if got[k] != want[r] {
				t.Errorf("%s: %s = %v, want %v", step, k, got[k], want[r])
			}
		}
	}

	seed := newSeed(time.Hour)
	register(seed)
	want[cacheMiss] = 1
	check("first registration")
	register(seed)
	register(seed)
	seed.Resume(req.TaskID, req.URL)
	want[cacheHit] = 2
	check("registrations within RevalidateAfter")
	seed.Close()

	seed = newSeed(time.Nanosecond) // a restart; every registration revalidates
	defer func() { seed.Close() }()
	register(seed)
	want[cacheRevalidated] = 1
	check("after a restart, origin unchanged")
	o.set(func(o *seedOrigin) { o.content, o.etag = randomContent(1<<20+7, 22), `"v2"` })
	register(seed)
	want[cacheRefetched] = 1
	check("origin changed")
	o.set(func(o *seedOrigin) { o.status = 500 })
	if _, err := seed.Ensure(context.Background(), req); err == nil {
		t.Fatal("a registration while the origin answers 500 succeeded")
	}
	check("origin failing")
}
