package swarm

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/peer"
)

// TestSupernodeRestartMidSwarm: four peers download 128 MiB from a
// rate-limited origin; once the seed holds half of it, the supernode goes
// away and comes back at once on the same store and addresses. Every peer
// finishes exact, and the seed fetches about one copy from the origin
// across its two lives: the restarted seed resumes from the blocks in its
// store instead of starting over.
//
// The peers' own origin fetches are counted and logged apart; within
// peer.SwarmConfig.SupernodeGrace the peers wait for the supernode instead
// of sending their in-flight blocks to the origin, so the origin's total
// stays about one copy too.
func TestSupernodeRestartMidSwarm(t *testing.T) {
	tests := []struct {
		name string
		// stop ends the supernode with SIGTERM instead of SIGKILL.
		stop bool
		// digest downloads by content digest (a content-addressed task)
		// from an origin that sends no validators (no ETag, no
		// Last-Modified), so a resumed copy cannot be revalidated.
		digest bool
	}{
		{name: "kill"},
		{name: "stop", stop: true},
		{name: "kill content-addressed without validators", digest: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			const size = 128 * mib
			org := newThrottledOrigin(t, 32*mib)
			org.hideValidators.Store(tc.digest)
			c := origin.Content{Size: size, Seed: 128}
			url := org.Add("f.bin", c)
			want := c.Digest("sha256")
			req := peer.DownloadRequest{URL: url}
			if tc.digest {
				req.Digest = want
			}
			sn := startSupernode(t, "0")
			var ds []*daemon
			for i := range 4 {
				ds = append(ds, startDaemon(t, sn, fmt.Sprintf("peer%d", i), ""))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			done := make(chan []outcome, 1)
			go func() { done <- downloadRequests(ctx, t, ds, req, nil) }()
			// Go away once half of the content is in the seed's store (the
			// peers are somewhat behind), and come back at once.
			var beforeSeed int64 // the first seed's origin bytes, read just before it went
			for beforeSeed < size/2 {
				select {
				case outs := <-done:
					t.Fatalf("the downloads ended before the seed held half of the content:\n%s", table(outs))
				case <-time.After(20 * time.Millisecond):
				}
				beforeSeed = seedBytes(sn)
			}
			if tc.stop {
				sn.stop()
			} else {
				sn.kill()
			}
			sn2 := startSupernodeAt(t, sn.dir, sn.grpc, sn.upload, "0")
			outs := <-done
			for _, o := range outs {
				checkExact(t, o, want)
			}
			peers := sum(outs).origin
			seed := org.BytesSent() - peers
			t.Logf("origin sent %.3f copies: the seed %.3f (%.1f MiB before the restart as far as it counted, %.1f MiB after), the peers %.3f themselves\n%s",
				float64(org.BytesSent())/size, float64(seed)/size, float64(beforeSeed)/mib, float64(sn2.state(t).Seed.BytesFromOrigin)/mib,
				float64(peers)/size, table(outs))
			if float64(seed)/size > 1.1 {
				t.Errorf("the seed fetched %.3f copies from the origin across a supernode restart, want ≤ 1.1", float64(seed)/size)
			}
			// The peers wait for the restarting supernode (SupernodeGrace)
			// instead of sending their in-flight blocks to the origin.
			if total := float64(org.BytesSent()) / size; total > 1.1 {
				t.Errorf("the origin sent %.3f copies across a supernode restart, want ≤ 1.1", total)
			}
		})
	}
}

// downloadRequests is downloadAll with a whole DownloadRequest (digest,
// headers); each daemon writes its own output.
func downloadRequests(ctx context.Context, t *testing.T, ds []*daemon, req peer.DownloadRequest, progress func(i int, done, total int64)) []outcome {
	t.Helper()
	outDir := t.TempDir()
	res := make([]outcome, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := req
			r.Output = filepath.Join(outDir, d.id+".out")
			began := time.Now()
			got, err := d.client.Download(ctx, r, func(ev peer.DownloadEvent) {
				if progress != nil {
					progress(i, ev.Done, ev.Total)
				}
			})
			res[i] = outcome{d: d, res: got, err: err, out: r.Output, took: time.Since(began)}
		}()
	}
	wg.Wait()
	for i := range res {
		if st, err := res[i].d.client.Stats(ctx); err == nil {
			res[i].served = st.Upload.BytesServed
			res[i].stats = st
		}
	}
	return res
}

// seedBytes is what the supernode's seed fetched from origins so far, or 0
// when its state cannot be read.
func seedBytes(sn *supernode) int64 {
	resp, err := http.Get("http://" + sn.upload + "/debug/state")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var st state
	if json.NewDecoder(resp.Body).Decode(&st) != nil {
		return 0
	}
	return st.Seed.BytesFromOrigin
}
