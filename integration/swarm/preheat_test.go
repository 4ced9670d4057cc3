package swarm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/peer"
	"github.com/dfly-p2p/dfly/supernode/preheat"
)

// submitPreheat posts a job to the supernode's preheat API (loopback: no token).
func submitPreheat(t *testing.T, sn *supernode, req preheat.Request) preheat.Job {
	t.Helper()
	b, _ := json.Marshal(req)
	resp, err := http.Post("http://"+sn.upload+"/api/v1/preheat", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /api/v1/preheat: HTTP %d: %s", resp.StatusCode, body)
	}
	var j preheat.Job
	if err := json.Unmarshal(body, &j); err != nil {
		t.Fatal(err)
	}
	return j
}

func getJob(t *testing.T, sn *supernode, id string) (preheat.Job, error) {
	t.Helper()
	resp, err := http.Get("http://" + sn.upload + "/api/v1/preheat/" + id)
	if err != nil {
		return preheat.Job{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return preheat.Job{}, fmt.Errorf("GET job: HTTP %d", resp.StatusCode)
	}
	var j preheat.Job
	return j, json.NewDecoder(resp.Body).Decode(&j)
}

// waitJob polls until the job ends (or until cond, if given, holds).
func waitJob(t *testing.T, sn *supernode, id string, timeout time.Duration, cond func(preheat.Job) bool) preheat.Job {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		j, err := getJob(t, sn, id)
		if err == nil && ((cond == nil && j.Done()) || (cond != nil && cond(j))) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: %+v (err %v) after %v", id, j, err, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPreheatToIDC: a preheat job with the selector idc=a puts the content
// into the store of every dfdaemon in idc a (status N/N) and of none in idc
// b, through the heartbeats the hosts already send; the origin serves one copy.
func TestPreheatToIDC(t *testing.T) {
	o := newOrigin(t)
	c := origin.Content{Size: 20 << 20, Seed: 131}
	url := o.Add("model.bin", c)
	sn := startSupernode(t, "0")
	a1 := startDaemon(t, sn, "pa-1", "a")
	a2 := startDaemon(t, sn, "pa-2", "a")
	b1 := startDaemon(t, sn, "pb-1", "b")
	time.Sleep(500 * time.Millisecond) // every host announced (the first heartbeat is synchronous)

	j := submitPreheat(t, sn, preheat.Request{Type: preheat.TypeURL, URL: url, Digest: c.Digest("sha256"), Hosts: &preheat.Selector{IDC: "a"}})
	j = waitJob(t, sn, j.ID, 2*time.Minute, nil)
	if j.State != preheat.StateSucceeded {
		t.Fatalf("job %+v", j)
	}
	if len(j.Hosts) != 2 || j.Hosts[0].Host != "pa-1" || j.Hosts[1].Host != "pa-2" {
		t.Fatalf("job hosts %+v, want pa-1 and pa-2", j.Hosts)
	}
	for _, h := range j.Hosts {
		if h.State != preheat.StateSucceeded || h.Done != 1 || h.Total != 1 || h.Bytes != c.Size {
			t.Errorf("host %+v, want 1/1", h)
		}
	}
	id, _ := blockstore.TaskIDForURL(url, "", "")
	ctx := context.Background()
	for _, tc := range []struct {
		d    *daemon
		want bool
	}{{a1, true}, {a2, true}, {b1, false}} {
		ts, err := tc.d.client.Tasks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := false
		for _, tk := range ts {
			if tk.ID == id && tk.State == blockstore.StateComplete {
				got = true
			}
		}
		if got != tc.want {
			t.Errorf("%s holds the preheated task: %v, want %v", tc.d.id, got, tc.want)
		}
	}
	if copies := float64(o.BytesSent()) / float64(c.Size); copies > 1.05 {
		t.Errorf("origin served %.2f copies for a preheat to 2 hosts, want 1", copies)
	}
	// A download on a preheated host is local.
	res, err := a1.client.Download(ctx, peer.DownloadRequest{URL: url}, nil)
	if err != nil || res.BytesLocal != c.Size {
		t.Fatalf("download after preheat: %+v, %v; want every byte local", res, err)
	}
}

// TestPreheatJobResumesAfterSupernodeKill: a supernode killed with -9 in the
// middle of a preheat finds the job in its store at restart and finishes
// it, fetching only what it did not have (the origin serves ~1 copy).
func TestPreheatJobResumesAfterSupernodeKill(t *testing.T) {
	o := newOrigin(t)
	c := origin.Content{Size: 24 << 20, Seed: 132}
	url := o.Add("slow.bin", c)
	o.SetRate(6 << 20)
	sn := startSupernode(t, "0")
	j := submitPreheat(t, sn, preheat.Request{Type: preheat.TypeURL, URL: url})
	mid := waitJob(t, sn, j.ID, time.Minute, func(j preheat.Job) bool {
		return len(j.Layers) == 1 && j.Layers[0].Blocks > 0 && j.Layers[0].Stored >= j.Layers[0].Blocks/3
	})
	if mid.Done() {
		t.Fatalf("the job ended before the kill: %+v", mid)
	}
	sn.kill()
	o.SetRate(0)
	sn2 := startSupernodeAt(t, sn.dir, sn.grpc, sn.upload, "0")
	done := waitJob(t, sn2, j.ID, 2*time.Minute, nil)
	if done.State != preheat.StateSucceeded || done.ID != j.ID || !done.Created.Equal(mid.Created) {
		t.Fatalf("after the restart: %+v", done)
	}
	if copies := float64(o.BytesSent()) / float64(c.Size); copies > 1.2 {
		t.Errorf("origin served %.2f copies: the job restarted instead of resuming", copies)
	}
	t.Logf("killed at %d/%d blocks; origin served %.3f copies in all", mid.Layers[0].Stored, mid.Layers[0].Blocks, float64(o.BytesSent())/float64(c.Size))
}
