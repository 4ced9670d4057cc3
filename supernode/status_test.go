package supernode

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/internal/p2pstatus"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func TestSeriesIncrease(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	run1, run2 := t0.Add(-time.Hour).UnixMilli(), at(100).UnixMilli()
	smp := func(s int, run int64, peers, origin int64) sample {
		return sample{at: at(s), started: run, c: counters{peers: peers, origin: origin}}
	}
	for _, tc := range []struct {
		name    string
		samples []sample
		from    int // seconds after t0
		peers   int64
		origin  int64
	}{
		{"nothing", nil, 0, 0, 0},
		{"one sample of an old run", []sample{smp(10, run1, 500, 5)}, 0, 0, 0},
		{"base before the window", []sample{smp(0, run1, 100, 1), smp(20, run1, 300, 1), smp(40, run1, 700, 4)}, 10, 600, 3},
		{"base exactly at the window's start", []sample{smp(10, run1, 100, 0), smp(40, run1, 150, 0)}, 10, 50, 0},
		{"whole history in the window, old run", []sample{smp(20, run1, 100, 0), smp(40, run1, 160, 0)}, 10, 60, 0},
		{"the run began in the window", []sample{smp(110, run2, 100, 0), smp(140, run2, 160, 0)}, 50, 160, 0},
		{"restart inside the window", []sample{smp(0, run1, 1000, 0), smp(60, run1, 1200, 0), smp(110, run2, 30, 0), smp(140, run2, 90, 0)}, 30, 200 + 30 + 60, 0},
		{"counter went down in one run", []sample{smp(0, run1, 1000, 0), smp(20, run1, 40, 0), smp(40, run1, 100, 0)}, 0, 40 + 60, 0},
		{"window older than the history", []sample{smp(0, run1, 1000, 0), smp(20, run1, 1100, 0)}, -1000, 100, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s series
			for _, x := range tc.samples {
				s.add(x)
			}
			c := s.increase(at(tc.from))
			if c.peers != tc.peers || c.origin != tc.origin {
				t.Errorf("increase: peers %d origin %d, want %d %d", c.peers, c.origin, tc.peers, tc.origin)
			}
		})
	}
}

func TestSeriesThinAndPrune(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	var s series
	for i := range 100 { // a heartbeat every 2s for 200s
		s.add(sample{at: t0.Add(time.Duration(2*i) * time.Second), started: 1, c: counters{peers: int64(i)}})
	}
	// Kept: the reports at 0s, 16s, 32s, ... 192s (the first one at least
	// 15s after the last kept).
	if n := len(s.kept); n != 13 {
		t.Errorf("%d samples kept of 100 reports, want 13", n)
	}
	if s.latest.c.peers != 99 {
		t.Errorf("latest %+v, want the last report", s.latest)
	}
	// The latest report counts even when thinned away.
	if c := s.increase(t0); c.peers != 99 {
		t.Errorf("increase over everything: %d, want 99", c.peers)
	}
	s.prune(t0.Add(100 * time.Second))
	if s.kept[0].at.After(t0.Add(100*time.Second)) || s.kept[1].at.Before(t0.Add(100*time.Second)) {
		t.Errorf("after prune the first sample is %v: want the newest one at or before the cutoff", s.kept[0].at.Sub(t0))
	}
	if c := s.increase(t0.Add(100 * time.Second)); c.peers != 99-s.kept[0].c.peers {
		t.Errorf("increase after prune: %d", c.peers)
	}
}

func TestStatusBook(t *testing.T) {
	clk := newClock()
	seedOrigin, seedServed := int64(0), int64(0)
	b := newStatusBook(clk.Now, 6*time.Second, func() (int64, int64) { return seedOrigin, seedServed })
	started := clk.Now().Add(-time.Minute).UnixMilli()
	host := func(id string) *api.Host { return &api.Host{Id: id, UploadAddr: id + ":8003", Idc: "a"} }
	st := func(peers, seed, origin, fb int64) *api.HostStats {
		return &api.HostStats{StartedUnixMs: started, BytesPeers: peers, BytesSeed: seed, BytesOrigin: origin, OriginFallbacks: fb,
			DownloadsOk: 1, TasksActive: 2, Version: "v1.2.3"}
	}
	// Before the window: what every host had already done.
	for _, id := range []string{"good", "bad", "gone", "quiet", "left"} {
		b.report(host(id), st(0, 0, 0, 0))
	}
	b.report(host("old"), nil) // a daemon that does not report counters
	seedOrigin, seedServed = 1000, 5000
	clk.Add(30 * time.Second)
	b.report(host("good"), st(90<<20, 10<<20, 0, 0))
	bad := &api.HostStats{StartedUnixMs: started, BytesOrigin: 80 << 20, BytesPeers: 1 << 20, OriginFallbacks: 40,
		LastError: "swarm failed, used the origin: block 3 of https://o/f?sig=secret: timeout", LastErrorUnixMs: clk.Now().UnixMilli()}
	b.report(host("bad"), bad)
	b.report(host("gone"), st(5<<20, 0, 0, 0))
	b.report(host("left"), st(1<<20, 0, 0, 0))
	b.leave("left")
	clk.Add(10 * time.Second) // "gone" and "left" go silent
	b.report(host("good"), st(90<<20, 10<<20, 0, 0))
	b.report(host("bad"), bad)
	b.report(host("quiet"), st(0, 0, 0, 0))
	b.report(host("old"), nil)
	seedOrigin, seedServed = 1500, 9000

	hosts, seed := b.window(35 * time.Second)
	// The seed's base is its first sample (before the window), its end
	// the counters read now.
	if seed.origin != 1500 || seed.served != 9000 {
		t.Errorf("seed in the window: origin %d served %d, want 1500 9000", seed.origin, seed.served)
	}
	got := map[string]p2pstatus.SwarmHost{}
	var ids []string
	for _, h := range hosts {
		got[h.ID] = h
		ids = append(ids, h.ID)
	}
	if strings.Join(ids, ",") != "bad,gone,good,left,old,quiet" {
		t.Fatalf("hosts %v", ids)
	}
	for _, tc := range []struct {
		id      string
		verdict string
		live    bool
		peers   int64
	}{
		{"good", p2pstatus.Working, true, 90 << 20},
		{"bad", p2pstatus.Degraded, true, 1 << 20},
		{"gone", p2pstatus.NotWorking, false, 5 << 20},
		{"left", p2pstatus.Working, false, 1 << 20},
		{"quiet", p2pstatus.Idle, true, 0},
		{"old", p2pstatus.Idle, true, 0},
	} {
		h := got[tc.id]
		if h.Verdict.P2P != tc.verdict || h.Live != tc.live || h.Bytes.Peers != tc.peers {
			t.Errorf("%s: verdict %q live %v peers %d, want %q %v %d (%v)", tc.id, h.Verdict.P2P, h.Live, h.Bytes.Peers, tc.verdict, tc.live, tc.peers, h.Verdict.Reasons)
		}
	}
	if h := got["good"]; h.Version != "v1.2.3" || h.TasksActive != 2 || !h.Reporting || h.UploadAddr != "good:8003" || h.IDC != "a" || h.Share.Peers != 0.9 {
		t.Errorf("good: %+v", h)
	}
	if h := got["old"]; h.Reporting || h.Version != "" {
		t.Errorf("old: %+v, want a host that does not report", h)
	}
	if h := got["gone"]; h.TasksActive != 0 || !strings.Contains(h.Verdict.Reasons[0], "no heartbeat from this host for 10s") {
		t.Errorf("gone: tasks %d, reasons %v", h.TasksActive, h.Verdict.Reasons)
	}
	if h := got["left"]; !h.Left || !strings.Contains(strings.Join(h.Verdict.Reasons, "; "), "left the swarm 10s ago") {
		t.Errorf("left: %+v", h)
	}
	if h := got["bad"]; h.LastError == nil || strings.Contains(h.LastError.Message, "secret") || h.LastError.Host != "bad" {
		t.Errorf("bad: last error %+v", h.LastError)
	}

	// A short window sees only the last reports' deltas: nothing.
	hosts, _ = b.window(5 * time.Second)
	for _, h := range hosts {
		if h.Bytes.Fetched() != 0 {
			t.Errorf("5s window: %s fetched %d", h.ID, h.Bytes.Fetched())
		}
		if h.ID == "gone" || h.ID == "left" {
			t.Errorf("5s window lists %s, silent for 10s", h.ID)
		}
	}

	// Hosts silent for longer than any window are forgotten.
	clk.Add(p2pstatus.MaxWindow + time.Minute)
	b.report(host("good"), st(90<<20, 10<<20, 0, 0))
	b.mu.Lock()
	n := len(b.hosts)
	b.mu.Unlock()
	if n != 1 {
		t.Errorf("%d hosts kept after an hour of silence, want only the one reporting", n)
	}

	var nilBook *statusBook
	nilBook.report(host("x"), nil)
	nilBook.leave("x")
}

// TestStatusEndpoint: GET /api/v1/status on the upload server and on
// --api-listen, guarded like the preheat API, fed by real Announce calls.
func TestStatusEndpoint(t *testing.T) {
	dir := t.TempDir()
	sn, err := Start(Config{
		StoreDir: dir, GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0", APIListen: "127.0.0.1:0",
		Source: testSource(), Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	c := dial(t, sn)
	p := newPeer(t, c, "peer-a", "a")
	if _, err := c.Announce(t.Context(), &api.AnnounceRequest{Host: p.host, Stats: &api.HostStats{StartedUnixMs: time.Now().UnixMilli(),
		BytesPeers: 3 << 20, BytesSeed: 1 << 20, DownloadsOk: 2, TasksActive: 1, Version: "test"}}); err != nil {
		t.Fatal(err)
	}

	for _, base := range []string{"http://" + sn.UploadAddr(), "http://" + sn.APIAddr()} {
		resp, err := http.Get(base + "/api/v1/status?window=1m")
		if err != nil {
			t.Fatal(err)
		}
		var st p2pstatus.Swarm
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: HTTP %d, %v", base, resp.StatusCode, err)
		}
		if st.HostsSeen != 1 || st.HostsLive != 1 || len(st.Hosts) != 1 || st.Hosts[0].ID != "peer-a" || st.Window != "1m" ||
			st.Bytes.Peers != 3<<20 || st.TasksActive != 1 || st.Verdict.P2P != p2pstatus.Working || st.Seed.ID != "seed" || st.Version == "" {
			t.Errorf("%s: status %+v", base, st)
		}

		resp, err = http.Get(base + "/api/v1/status?window=soon")
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Error, "window") {
			t.Errorf("%s: bad window: HTTP %d %q", base, resp.StatusCode, e.Error)
		}
	}
	// The preheat API still answers on --api-listen beside the status.
	if resp, err := http.Get("http://" + sn.APIAddr() + "/api/v1/preheat"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("preheat list on --api-listen: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// From another host: only with the admin token.
	tok, err := os.ReadFile(filepath.Join(dir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		auth string
		want int
	}{
		{"", http.StatusUnauthorized},
		{"Bearer wrong-token-wrong-token", http.StatusUnauthorized},
		{"Bearer " + strings.TrimSpace(string(tok)), http.StatusOK},
	} {
		req := httptest.NewRequest(http.MethodGet, "/api/v1/status", nil)
		req.RemoteAddr = "192.0.2.7:40000"
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		for name, h := range map[string]http.Handler{"upload server": sn.upload, "api listener": sn.api} {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != tc.want {
				t.Errorf("%s, remote caller, Authorization %q: HTTP %d, want %d", name, tc.auth, w.Code, tc.want)
			}
		}
	}

	// A host that leaves is no longer live, and no sign of trouble.
	if _, err := c.Leave(t.Context(), &api.LeaveRequest{HostId: "peer-a"}); err != nil {
		t.Fatal(err)
	}
	st := sn.SwarmStatus(time.Minute)
	if len(st.Hosts) != 1 || st.Hosts[0].Live || !st.Hosts[0].Left || st.Verdict.P2P != p2pstatus.Working {
		t.Errorf("after leave: %+v", st)
	}
}
