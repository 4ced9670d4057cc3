package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// series returns the value of every series of reg as "name{k=v}" → value
// (a histogram's value is its sample count).
func series(t *testing.T, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			if lp := m.GetLabel(); len(lp) > 0 {
				var kv []string
				for _, l := range lp {
					kv = append(kv, l.GetName()+"="+l.GetValue())
				}
				key += "{" + strings.Join(kv, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// TestMetricsSeriesExistFromStart: every series of the contract exists at
// zero before anything happened, and the metrics pass the Prometheus linter.
func TestMetricsSeriesExistFromStart(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	NewMetrics(reg)
	got := series(t, reg)
	want := []string{
		"dfly_peer_bytes_total{provenance=origin}", "dfly_peer_bytes_total{provenance=seed}",
		"dfly_peer_bytes_total{provenance=peer}", "dfly_peer_bytes_total{provenance=local}",
		"dfly_peer_downloads_total{result=ok}", "dfly_peer_downloads_total{result=error}", "dfly_peer_downloads_total{result=canceled}",
		"dfly_peer_block_fetch_duration_seconds{source=origin}", "dfly_peer_block_fetch_duration_seconds{source=seed}",
		"dfly_peer_block_fetch_duration_seconds{source=peer}",
		"dfly_peer_origin_fallbacks_total", "dfly_peer_upload_bytes_total", "dfly_peer_uploads_in_flight",
		"dfly_peer_uploads_rejected_total{reason=busy}", "dfly_peer_uploads_rejected_total{reason=token}",
		"dfly_peer_uploads_rejected_total{reason=other}",
		"dfly_peer_limiter_wait_seconds_total{limiter=download}", "dfly_peer_limiter_wait_seconds_total{limiter=upload}",
		"dfly_peer_limiter_wait_seconds_total{limiter=preheat}",
		"dfly_peer_tasks_active",
	}
	for _, k := range want {
		v, ok := got[k]
		if !ok {
			t.Errorf("series %s missing at start", k)
		} else if v != 0 {
			t.Errorf("series %s = %v at start, want 0", k, v)
		}
	}
	for k, v := range got { // metrics beyond the contract's start at zero too
		if v != 0 {
			t.Errorf("series %s = %v at start, want 0", k, v)
		}
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	if NewMetrics(nil) == nil {
		t.Error("NewMetrics(nil) = nil; want unregistered collectors")
	}
}

// TestMetricsNil: a nil *Metrics counts nothing and never panics, so
// components built without metrics work unchanged.
func TestMetricsNil(t *testing.T) {
	var m *Metrics
	var n atomic.Int32
	m.delivered(FromPeer, 1)
	m.blockFetched(FromSeed, time.Second)
	m.fallback()
	m.download(context.Background(), nil)
	m.uploaded(1)
	m.uploadStarted()
	m.uploadEnded()
	m.uploadRejected(rejectBusy)
	m.waited(limiterUpload, time.Second)
	m.taskBegin(&n)
	m.taskEnd(&n)
	if n.Load() != 0 {
		t.Fatalf("a nil Metrics changed the task's counter to %d", n.Load())
	}
}

func TestDownloadResult(t *testing.T) {
	live := context.Background()
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithTimeout(context.Background(), -time.Second)
	defer cancel2()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want string
	}{
		{"success", live, nil, resultOK},
		{"success although the caller left at the end", gone, nil, resultOK},
		{"failure", live, errors.New("origin said 500"), resultError},
		{"caller left", gone, fmt.Errorf("fetch block 3: %w", context.Canceled), resultCanceled},
		{"caller's deadline", expired, fmt.Errorf("read: %w", context.DeadlineExceeded), resultCanceled},
		{"an inner timeout is an error", live, fmt.Errorf("origin: %w", context.DeadlineExceeded), resultError},
		{"caller left but the failure is another", gone, errors.New("disk full"), resultError},
	} {
		if got := downloadResult(tc.ctx, tc.err); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

// TestMetricsCounting: each method moves its own series.
func TestMetricsCounting(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	m.delivered(FromSeed, 100)
	m.delivered(FromPeer, 7)
	m.delivered(FromPeer, 0)     // nothing
	m.delivered(From(99), 5)     // not a provenance: ignored
	m.blockFetched(FromLocal, 1) // local blocks are not fetched: ignored
	m.blockFetched(FromOrigin, 30*time.Millisecond)
	m.fallback()
	m.download(context.Background(), errors.New("boom"))
	m.uploaded(4096)
	m.uploadStarted()
	m.uploadStarted()
	m.uploadEnded()
	m.uploadRejected(rejectToken)
	m.uploadRejected("teapot") // unknown: other
	m.waited(limiterPreheat, 1500*time.Millisecond)
	m.waited("nope", time.Second) // unknown limiter: ignored
	var a, b atomic.Int32
	m.taskBegin(&a)
	m.taskBegin(&a) // the same task twice: still one
	m.taskBegin(&b)
	m.taskEnd(&a)
	got := series(t, reg)
	for k, v := range map[string]float64{
		"dfly_peer_bytes_total{provenance=seed}":                 100,
		"dfly_peer_bytes_total{provenance=peer}":                 7,
		"dfly_peer_bytes_total{provenance=origin}":               0,
		"dfly_peer_block_fetch_duration_seconds{source=origin}":  1,
		"dfly_peer_block_fetch_duration_seconds{source=seed}":    0,
		"dfly_peer_origin_fallbacks_total":                       1,
		"dfly_peer_downloads_total{result=error}":                1,
		"dfly_peer_upload_bytes_total":                           4096,
		"dfly_peer_uploads_in_flight":                            1,
		"dfly_peer_uploads_rejected_total{reason=token}":         1,
		"dfly_peer_uploads_rejected_total{reason=other}":         1,
		"dfly_peer_limiter_wait_seconds_total{limiter=preheat}":  1.5,
		"dfly_peer_limiter_wait_seconds_total{limiter=download}": 0,
		"dfly_peer_tasks_active":                                 2,
	} {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	m.taskEnd(&a)
	m.taskEnd(&b)
	if v := testutil.ToFloat64(m.tasks); v != 0 {
		t.Errorf("tasks active %v after every operation ended, want 0", v)
	}
}

// TestEngineMetrics: downloads through the engine count their bytes by
// provenance, their block fetches, their result and the swarm's failures.
func TestEngineMetrics(t *testing.T) {
	const size = 3<<20 + 5
	t.Run("origin, then local", func(t *testing.T) {
		e := newEnv(t, size)
		reg := prometheus.NewPedanticRegistry()
		eng := e.engine(t, Config{Metrics: NewMetrics(reg)})
		for range 2 {
			if _, err := eng.Download(ctx, Request{URL: e.url}, DownloadOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		got := series(t, reg)
		for k, v := range map[string]float64{
			"dfly_peer_bytes_total{provenance=origin}":              size,
			"dfly_peer_bytes_total{provenance=local}":               size,
			"dfly_peer_block_fetch_duration_seconds{source=origin}": 4,
			"dfly_peer_downloads_total{result=ok}":                  2,
			"dfly_peer_origin_fallbacks_total":                      0,
			"dfly_peer_tasks_active":                                0,
		} {
			if got[k] != v {
				t.Errorf("%s = %v, want %v", k, got[k], v)
			}
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := eng.Download(cctx, Request{URL: e.url + "?other"}, DownloadOptions{}); err == nil {
			t.Fatal("download with a cancelled context succeeded")
		}
		if v := series(t, reg)["dfly_peer_downloads_total{result=canceled}"]; v != 1 {
			t.Errorf("cancelled download counted %v times as canceled, want 1", v)
		}
	})
	for _, tc := range []struct {
		name          string
		fail          bool
		peer, origin  float64
		fallbacks     float64
		originFetches float64
	}{
		{"healthy swarm", false, size, 0, 0, 0},
		{"swarm down", true, 0, size, 4, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, size)
			reg := prometheus.NewPedanticRegistry()
			eng := e.engine(t, Config{Swarm: &fakeSwarm{e: e, fail: tc.fail}, Metrics: NewMetrics(reg)})
			if _, err := eng.Download(ctx, Request{URL: e.url}, DownloadOptions{}); err != nil {
				t.Fatal(err)
			}
			got := series(t, reg)
			for k, v := range map[string]float64{
				"dfly_peer_bytes_total{provenance=peer}":                tc.peer,
				"dfly_peer_bytes_total{provenance=origin}":              tc.origin,
				"dfly_peer_origin_fallbacks_total":                      tc.fallbacks,
				"dfly_peer_block_fetch_duration_seconds{source=origin}": tc.originFetches,
				"dfly_peer_block_fetch_duration_seconds{source=peer}":   4 - tc.originFetches,
			} {
				if got[k] != v {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
		})
	}
	t.Run("download rate limit", func(t *testing.T) {
		e := newEnv(t, size)
		reg := prometheus.NewPedanticRegistry()
		// 8 MiB/s with a 1 MiB burst: 3 MiB cannot pass without waiting.
		eng := e.engine(t, Config{DownloadRate: 8 << 20, Concurrency: 1, Metrics: NewMetrics(reg)})
		if _, err := eng.Download(ctx, Request{URL: e.url}, DownloadOptions{}); err != nil {
			t.Fatal(err)
		}
		if v := series(t, reg)["dfly_peer_limiter_wait_seconds_total{limiter=download}"]; v <= 0 {
			t.Errorf("download limiter wait %v, want > 0", v)
		}
	})
}

// TestTaskActiveWhileReading: a task counts as active while a read of it
// is in flight, and no longer afterwards.
func TestTaskActiveWhileReading(t *testing.T) {
	e := newEnv(t, 2<<20)
	release := make(chan struct{})
	sw := &fakeSwarm{e: e, block: release}
	m := NewMetrics(nil)
	eng := e.engine(t, Config{Swarm: sw, Metrics: m})
	task, err := eng.Open(ctx, Request{URL: e.url})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := task.ReadAt(ctx, make([]byte, 10), 0)
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(m.tasks) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("tasks active %v while a read waits, want 1", testutil.ToFloat64(m.tasks))
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(m.tasks); v != 0 {
		t.Fatalf("tasks active %v after the read, want 0", v)
	}
}

// TestUploadMetrics: the upload server counts the bytes it sends, its
// uploads in flight, its refusals by reason and its rate-limit waits.
func TestUploadMetrics(t *testing.T) {
	st, blocks := uploadFixture(t)
	key := newKeyTokens()
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	// 256 KiB/s with one upload at a time: a 1 MiB block is in flight for
	// seconds, long enough to see it and to be refused beside it.
	u := NewUploadServer(UploadConfig{Store: st, Tokens: key, MaxUploads: 1, Rate: 256 << 10, Logger: quietLogger(), Metrics: m})
	srv := httptest.NewServer(u)
	defer srv.Close()
	tok := key.token("task", time.Hour)

	if resp, body := get(t, srv.URL+"/blocks/task/2", tok, "bytes=0-99"); resp.StatusCode != http.StatusPartialContent || len(body) != 100 {
		t.Fatalf("range: HTTP %d, %d bytes", resp.StatusCode, len(body))
	}
	get(t, srv.URL+"/blocks/task/1", tok, "")                           // not held
	get(t, srv.URL+"/blocks/task/0", "", "")                            // no token
	get(t, srv.URL+"/blocks/task/0", key.token("other", time.Hour), "") // another task's token

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/blocks/task/0", nil)
		req.Header.Set(api.TokenHeader, tok)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(m.upInFlight) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the slow upload never showed as in flight")
		}
		time.Sleep(time.Millisecond)
	}
	if resp, _ := get(t, srv.URL+"/blocks/task/2", tok, ""); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second upload: HTTP %d, want 429", resp.StatusCode)
	}
	cancel()
	wg.Wait()
	deadline = time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(m.upInFlight) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("uploads in flight did not return to 0")
		}
		time.Sleep(time.Millisecond)
	}
	got := series(t, reg)
	for k, v := range map[string]float64{
		"dfly_peer_uploads_rejected_total{reason=busy}":  1,
		"dfly_peer_uploads_rejected_total{reason=token}": 2,
		"dfly_peer_uploads_rejected_total{reason=other}": 1,
	} {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	// The cancelled upload sent part of block 0: the counter holds at
	// least the range's 100 bytes and never more than the server counted.
	if v := got["dfly_peer_upload_bytes_total"]; v < 100 || v > float64(u.Stats().BytesServed) || v > float64(100+len(blocks[0])) {
		t.Errorf("upload bytes %v, want within [100, %d]", v, u.Stats().BytesServed)
	}
	if v := got["dfly_peer_limiter_wait_seconds_total{limiter=upload}"]; v <= 0 {
		t.Errorf("upload limiter wait %v, want > 0", v)
	}
}

// TestPreheatLimiterWait: a preheat paced past its limiter's burst counts
// the wait.
func TestPreheatLimiterWait(t *testing.T) {
	m := NewMetrics(nil)
	p := newPreheater(quietLogger(), 4<<20, nil, func(string, string, error) {})
	p.metrics = m
	if err := p.pace(context.Background(), 4<<20+(256<<10)); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(m.waits[limiterPreheat]); v <= 0 {
		t.Fatalf("preheat limiter wait %v, want > 0", v)
	}
}

// TestStoreCollector: the store gauges follow the store.
func TestStoreCollector(t *testing.T) {
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{Quota: 10 << 20, GCInterval: -1, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(StoreCollector(st))
	if _, err := st.CreateTask(context.Background(), blockstore.Task{ID: "a", Length: 3 << 20, BlockSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	got := series(t, reg)
	for k, v := range map[string]float64{"dfly_store_bytes": 3 << 20, "dfly_store_quota_bytes": 10 << 20, "dfly_store_tasks": 1, "dfly_store_evictions_total": 0} {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}
