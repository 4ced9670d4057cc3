package mirror

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestKindOf(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{"/v2/app/blobs/sha256:abc", kindBlob},
		{"/v2/org/team/app/blobs/sha256:abc", kindBlob},
		{"/v2/app/manifests/v1", kindManifest},
		{"/v2/org/app/manifests/sha256:abc", kindManifest},
		{"/v2/", kindOther},
		{"/v2", kindOther},
		{"/v2/app/tags/list", kindOther},
		{"/v2/blobs/tags/list", kindOther},
		{"/v2/app/blobs/uploads/1234", kindOther},
		{"/metrics", kindOther},
	} {
		if got := kindOf(tc.path); got != tc.want {
			t.Errorf("kindOf(%q) = %s, want %s", tc.path, got, tc.want)
		}
	}
}

// counts returns every (kind, result) count of m.
func counts(m *Metrics) map[[2]string]float64 {
	out := map[[2]string]float64{}
	for k, c := range m.requests {
		out[k] = testutil.ToFloat64(c)
	}
	return out
}

// TestMirrorMetrics: every kind and result exists at zero from the start,
// and each request is counted once under what the mirror did with it.
func TestMirrorMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	if n := testutil.CollectAndCount(reg, "dfly_mirror_requests_total"); n != 9 {
		t.Fatalf("%d series at start, want 9 (3 kinds × 3 results)", n)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	var nilMetrics *Metrics
	nilMetrics.request(kindBlob, resultP2P) // no-op

	r := startRegistry(t, "", "")
	img := r.push(t, "app", 2<<20, 1)
	f := newFixture(t, r)
	f.mirror.cfg.Metrics = m
	d, _ := layerOf(t, img, 0)
	blob := "/v2/app/blobs/" + d.String()
	want := map[[2]string]float64{}
	step := func(name, method, path string, status int, kind, result string) {
		t.Helper()
		resp, _, _ := f.get(t, method, path, nil)
		if resp.StatusCode != status {
			t.Fatalf("%s: HTTP %d, want %d", name, resp.StatusCode, status)
		}
		want[[2]string{kind, result}]++
		// The client may have the whole answer before the handler returned
		// and counted it: wait for the count.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			got, diff := counts(m), ""
			for k, v := range got {
				if v != want[k] {
					diff += fmt.Sprintf(" %v = %v, want %v;", k, v, want[k])
				}
			}
			if diff == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %s:%s", name, diff)
			}
		}
	}
	step("manifest", http.MethodGet, "/v2/app/manifests/v1", 200, kindManifest, resultPassthrough)
	step("/v2/", http.MethodGet, "/v2/", 200, kindOther, resultPassthrough)
	step("blob", http.MethodGet, blob, 200, kindBlob, resultP2P)
	step("held blob HEAD", http.MethodHead, blob, 200, kindBlob, resultP2P)
	step("push", http.MethodPut, "/v2/app/manifests/v2", http.StatusMethodNotAllowed, kindManifest, resultError)

	other, _ := layerOf(t, r.push(t, "app2", 1<<20, 1), 0)
	r.down.Store(true)
	step("blob the registry refuses", http.MethodGet, "/v2/app2/blobs/"+other.String(), http.StatusServiceUnavailable, kindBlob, resultPassthrough)
	r.srv.Close()
	step("registry gone", http.MethodGet, "/v2/app/manifests/v1", http.StatusBadGateway, kindManifest, resultError)
}

// TestMirrorMetricsCutShort: an answer cut short because the blob failed
// its digest counts as an error.
func TestMirrorMetricsCutShort(t *testing.T) {
	r := startRegistry(t, "", "")
	img := r.push(t, "app", 6<<20, 1)
	f := newFixture(t, r)
	m := NewMetrics(nil)
	f.mirror.cfg.Metrics = m
	d, _ := layerOf(t, img, 0)
	r.corrupt.Store(true)
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, f.srv.URL+"/v2/app/blobs/"+d.String()+"?ns="+r.host, nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body) // cut short
		resp.Body.Close()
	}
	f.srv.Close() // waits for the handler: its count is in
	got := counts(m)
	if got[[2]string{kindBlob, resultError}] != 1 || got[[2]string{kindBlob, resultP2P}] != 0 {
		t.Fatalf("counts %v: want one blob error", got)
	}
}
