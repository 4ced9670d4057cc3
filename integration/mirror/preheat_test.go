package mirror

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/supernode/preheat"
)

// TestPushPreheatsThenPullsHitTheSeed: a real docker-registry configured
// with notifications tells the supernode about every push; the seed holds
// every layer before any pull (the jobs say so); then 3 hosts pull through
// their dfly mirrors with containerd and the registry serves no blob byte.
func TestPushPreheatsThenPullsHitTheSeed(t *testing.T) {
	RequireRoot(t)
	if _, err := ContainerdBinDir("2"); err != nil {
		t.Skip(err.Error())
	}
	bins := dflyBins(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := shortTempDir(t, "dfly-preheat-")
	const secret = "notify-secret-0123456789abcdef"
	secretFile := filepath.Join(dir, "notify.secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	upload, regAddr := freeLoopback(t), freeLoopback(t)
	sn, f := startReady(t, dir, "supernode", "supernode listening", filepath.Join(bins, "supernode"),
		"--listen", "127.0.0.1:0", "--upload-listen", upload, "--metrics-listen", "127.0.0.1:0", "--store", filepath.Join(dir, "sn"),
		"--notify-secret-file", secretFile, "--log-level", "debug")
	_ = sn
	s := &dflySwarm{dir: dir, grpc: f["grpc"], upload: upload}
	s.reg = StartRegistry(t, RegistryOptions{Addr: regAddr, Notify: "http://" + upload + "/api/v1/notifications/registry", NotifySecret: secret})
	img, err := BuildImage(ctx, s.reg, "test/app", "1", quickImage())
	if err != nil {
		t.Fatal(err)
	}
	s.img = img

	// Every layer (and the config) is in a succeeded job before any pull.
	want := map[string]bool{}
	for _, l := range img.Layers {
		want[l.Digest] = true
	}
	var jobs []preheat.Job
	deadline := time.Now().Add(2 * time.Minute)
	for {
		jobs = listJobs(t, upload)
		held := map[string]bool{}
		for _, j := range jobs {
			for _, l := range j.Layers {
				if l.State == preheat.StateSucceeded && l.Blocks > 0 && l.Stored == l.Blocks {
					held[l.Digest] = true
				}
			}
		}
		missing := 0
		for d := range want {
			if !held[d] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d layers not preheated after the push; jobs: %+v", missing, len(want), jobs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var sources []string
	for _, j := range jobs {
		sources = append(sources, j.Request.Source+":"+j.Request.Type+":"+j.State)
		if j.Request.Source != "registry" {
			t.Errorf("job %s came from %q, want registry", j.ID, j.Request.Source)
		}
	}
	t.Logf("%d jobs from the push: %s", len(jobs), strings.Join(sources, " "))

	// Three hosts pull through their mirrors: the registry serves manifests only.
	s.reg.ResetStats()
	for i := range 3 {
		h := &dflyHost{name: fmt.Sprintf("h%d", i)}
		hd := filepath.Join(dir, h.name)
		var df map[string]string
		h.daemon, df = startReady(t, dir, h.name+"-dfdaemon", "dfdaemon ready", filepath.Join(bins, "dfdaemon"),
			"--supernode", s.grpc, "--listen", "127.0.0.1:0", "--sock", filepath.Join(hd, "d.sock"), "--store", filepath.Join(hd, "store"),
			"--host-id", h.name, "--mirror-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log-level", "debug")
		h.mirror = df["mirror"]
		h.hosts = filepath.Join(hd, "certs.d")
		if _, err := WriteHostsToml(h.hosts, s.reg.Host(), h.mirror); err != nil {
			t.Fatal(err)
		}
		h.ctrd = StartContainerd(t, ContainerdOptions{Version: "2", ConfigPath: h.hosts})
		s.hosts = append(s.hosts, h)
	}
	s.pullAll(t, func(h *dflyHost) (string, error) { return h.ctrd.CtrPull(ctx, s.img.Ref, PullOptions{}) })
	st := s.reg.Stats()
	if n := st.TotalBlobBytes(); n != 0 {
		t.Fatalf("the registry served %d blob bytes during the pulls (GETs per blob %v), want 0: the seed had every layer", n, st.BlobGets)
	}
	t.Logf("registry during the pulls: 0 blob bytes, %d manifest GETs, %d blob HEADs", st.ManifestGets, st.BlobHeads)
	s.runAll(t)

	// A sender without the secret is refused.
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+upload+"/api/v1/notifications/registry", strings.NewReader(`{"events":[]}`))
	req.Header.Set("Authorization", "Bearer wrong")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("notification with a wrong secret: HTTP %d, want 401", resp.StatusCode)
	}
}

func listJobs(t *testing.T, upload string) []preheat.Job {
	t.Helper()
	resp, err := http.Get("http://" + upload + "/api/v1/preheat")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var jobs []preheat.Job
	if err := json.NewDecoder(resp.Body).Decode(&jobs); err != nil {
		t.Fatalf("GET /api/v1/preheat: HTTP %d: %v", resp.StatusCode, err)
	}
	return jobs
}

func freeLoopback(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
