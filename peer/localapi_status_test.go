package peer

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/p2pstatus"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func TestSupernodeView(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	ago := func(d time.Duration) int64 { return now.Add(-d).UnixNano() }
	for _, tc := range []struct {
		name      string
		last      int64
		every     time.Duration
		reachable bool
		why       string
	}{
		{"never answered", 0, 2 * time.Second, false, "supernode sn:8002 unreachable: it never answered a heartbeat"},
		{"fresh", ago(time.Second), 2 * time.Second, true, ""},
		{"three intervals", ago(6 * time.Second), 2 * time.Second, true, ""},
		{"more than three intervals", ago(7 * time.Second), 2 * time.Second, false, "supernode sn:8002 unreachable: last heartbeat 7s ago (heartbeats every 2s)"},
		{"unknown interval is 2s", ago(7 * time.Second), 0, false, "heartbeats every 2s"},
		{"long interval", ago(20 * time.Second), 10 * time.Second, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sn, why := supernodeView("sn:8002", tc.last, tc.every, now)
			if !sn.Configured || sn.Address != "sn:8002" || sn.Reachable != tc.reachable {
				t.Errorf("view %+v, want reachable %v", sn, tc.reachable)
			}
			if (sn.LastHeartbeat == nil) != (tc.last == 0) {
				t.Errorf("last heartbeat %v for last=%d", sn.LastHeartbeat, tc.last)
			}
			if tc.why != "" && !strings.Contains(why, tc.why) {
				t.Errorf("why %q, want it to contain %q", why, tc.why)
			}
		})
	}
}

// TestDaemonStatus: a swarm download shows in GET /v1/status (bytes from
// the seed, "working") and in the heartbeats' HostStats.
func TestDaemonStatus(t *testing.T) {
	const size = 3<<20 + 7
	fx := newSeedFixture(t, size)
	d := startTestDaemon(t, fx.addr)
	ctx := context.Background()
	c, err := DialDaemon(ctx, d.SockPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	st, err := c.Status(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Verdict.P2P != p2pstatus.Idle || st.Window != "5m" || !st.Supernode.Configured || !st.Supernode.Reachable ||
		st.Supernode.LastHeartbeat == nil || st.Version == "" || st.HostID == "" || st.Errors == nil {
		t.Errorf("before any download: %+v", st)
	}

	if _, err := c.Download(ctx, DownloadRequest{URL: fx.url}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Download(ctx, DownloadRequest{URL: fx.origin.URL + "/missing.bin"}, nil); err == nil {
		t.Fatal("a download of a missing file succeeded")
	}
	st, err = c.Status(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if st.Verdict.P2P != p2pstatus.Working || st.Bytes.Seed != size || st.Bytes.Origin != 0 || st.Share.Seed != 1 ||
		st.Downloads.OK != 1 || st.Downloads.Failed != 1 || st.TasksInFlight != 0 || st.Window != "1m" {
		t.Errorf("after a download from the seed: %+v", st)
	}
	// The fake scheduler does not know the missing file: its resolution fell
	// back to the origin, which answered 404.
	if len(st.Errors) != 2 || !strings.Contains(st.Errors[0].Message, "missing.bin") || !strings.Contains(st.Errors[0].Message, "404") ||
		!strings.HasPrefix(st.Errors[1].Message, "swarm failed, used the origin: ") || st.OriginFallbacks != 1 {
		t.Errorf("errors %+v, fallbacks %d: want the failed download after the swarm's failure", st.Errors, st.OriginFallbacks)
	}

	// The next heartbeats carry the same counters.
	deadline := time.Now().Add(10 * time.Second)
	var hs *api.HostStats
	for hs.GetBytesSeed() != size && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		fx.sched.mu.Lock()
		hs = fx.sched.announce[len(fx.sched.announce)-1].GetStats()
		fx.sched.mu.Unlock()
	}
	if hs.GetBytesSeed() != size || hs.GetDownloadsOk() != 1 || hs.GetDownloadsFailed() != 1 || hs.GetVersion() == "" ||
		hs.GetStartedUnixMs() == 0 || !strings.Contains(hs.GetLastError(), "missing.bin") {
		t.Errorf("heartbeat stats %+v", hs)
	}

	// A bad window is the caller's mistake.
	api := (&localAPI{d: d, log: quietLogger()}).handler()
	w := httptest.NewRecorder()
	api.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v1/status?window=soon", nil))
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "window") {
		t.Errorf("bad window: HTTP %d %s", w.Code, w.Body)
	}
}

// TestDaemonStatusOriginMode: without a supernode P2P is "disabled" and
// the origin's bytes are counted.
func TestDaemonStatusOriginMode(t *testing.T) {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	u := o.Add("f.bin", origin.Content{Size: 1<<20 + 3, Seed: 9})
	d := startTestDaemon(t, "")
	c, err := DialDaemon(context.Background(), d.SockPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Download(context.Background(), DownloadRequest{URL: u}, nil); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(context.Background(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.Verdict.P2P != p2pstatus.Disabled || st.Supernode.Configured || st.Bytes.Origin != 1<<20+3 || st.Downloads.OK != 1 || st.HostID != "" {
		t.Errorf("origin mode: %+v", st)
	}
	if hs := d.hostStats(); hs.GetBytesOrigin() != 1<<20+3 || hs.GetDownloadsOk() != 1 {
		t.Errorf("host stats %+v", hs)
	}
}
