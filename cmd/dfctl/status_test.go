package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/internal/p2pstatus"
	"github.com/dfly-p2p/dfly/peer"
)

func runDfctl(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestHostWords(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	beat := now.Add(-time.Second)
	old := now.Add(-40 * time.Second)
	up := p2pstatus.Supernode{Configured: true, Address: "127.0.0.1:8002", Reachable: true, LastHeartbeat: &beat}
	for _, tc := range []struct {
		name string
		st   p2pstatus.Host
		want []string
	}{
		{"working", p2pstatus.Host{Time: now, Window: "5m", Supernode: up, TasksInFlight: 2, Version: "v1", HostID: "h1",
			Bytes:   p2pstatus.Bytes{Peers: 94 << 20, Seed: 6 << 20},
			Verdict: p2pstatus.Verdict{P2P: p2pstatus.Working, Reasons: []string{"last 5m: fine"}}},
			[]string{"P2P working: supernode 127.0.0.1:8002 reachable (heartbeat 1s ago); last 5m: 100.0 MiB, 94% from peers, 6% from the seed, 0% from the origin; 2 tasks in flight; no errors.\n",
				"  why: last 5m: fine\n", "  host h1, dfly v1\n"}},
		{"unreachable", p2pstatus.Host{Time: now, Window: "5m", Supernode: p2pstatus.Supernode{Configured: true, Address: "sn:8002", LastHeartbeat: &old},
			TasksInFlight: 1, Bytes: p2pstatus.Bytes{Origin: 1 << 20},
			Errors:  []p2pstatus.Error{{Time: now.Add(-3 * time.Second), Message: "swarm failed", Count: 4}},
			Verdict: p2pstatus.Verdict{P2P: p2pstatus.NotWorking, Reasons: []string{"supernode sn:8002 unreachable"}}},
			[]string{"P2P NOT working: supernode sn:8002 UNREACHABLE (last heartbeat 40s ago); last 5m: 1.0 MiB, 0% from peers, 0% from the seed, 100% from the origin; 1 task in flight; 1 error.",
				"  error 3s ago (4 times): swarm failed\n"}},
		{"never answered", p2pstatus.Host{Time: now, Window: "1m", Supernode: p2pstatus.Supernode{Configured: true, Address: "sn:8002"},
			Verdict: p2pstatus.Verdict{P2P: p2pstatus.NotWorking}},
			[]string{"UNREACHABLE (last heartbeat never); last 1m: nothing fetched; no tasks in flight; no errors."}},
		{"origin mode", p2pstatus.Host{Time: now, Window: "5m", Bytes: p2pstatus.Bytes{Local: 3 << 20}, Verdict: p2pstatus.Verdict{P2P: p2pstatus.Disabled}},
			[]string{"P2P disabled: no supernode configured (origin mode); last 5m: nothing fetched (3.0 MiB from the local store);"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := hostWords(tc.st)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("words:\n%s\nwant them to contain %q", got, w)
				}
			}
		})
	}
}

func testSwarm(now time.Time, verdict string) p2pstatus.Swarm {
	return p2pstatus.Swarm{Time: now, Window: "5m", Version: "v2", HostsSeen: 3, HostsLive: 2, TasksKnown: 4, TasksActive: 1,
		Bytes:     p2pstatus.Bytes{Peers: 90 << 20, Seed: 10 << 20},
		Supernode: p2pstatus.SupernodeRef{Advertise: "10.0.0.1:8001"},
		Seed:      p2pstatus.SeedStatus{ID: "seed", Tasks: 4, Complete: 3, Fetching: 1, OriginBytes: 10 << 20, UploadBytes: 10 << 20, Errors: []string{"task x: HTTP 404"}},
		Hosts: []p2pstatus.SwarmHost{
			{ID: "a", Live: true, Reporting: true, Version: "v2", LastSeen: now.Add(-time.Second), TasksActive: 1,
				Bytes: p2pstatus.Bytes{Peers: 90 << 20, Seed: 10 << 20}, Verdict: p2pstatus.Verdict{P2P: p2pstatus.Working}},
			{ID: "b", LastSeen: now.Add(-30 * time.Second), Reporting: true, Verdict: p2pstatus.Verdict{P2P: p2pstatus.NotWorking}},
			{ID: "c", Live: true, LastSeen: now, Verdict: p2pstatus.Verdict{P2P: p2pstatus.Idle}},
		},
		Errors:  []p2pstatus.Error{{Time: now.Add(-2 * time.Second), Message: "boom", Host: "a"}},
		Verdict: p2pstatus.Verdict{P2P: verdict, Reasons: []string{"host b: not working"}},
	}
}

func TestSwarmWords(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	got := swarmWords(testSwarm(now, p2pstatus.Degraded))
	for _, w := range []string{
		"P2P degraded: 3 hosts seen in the last 5m, 2 live; 100.0 MiB, 90% from peers, 10% from the seed, 0% from the origin; 1 task in flight; 4 tasks known; 1 error.\n",
		"  a            working, live (seen 1s ago); 100.0 MiB, 90% peers / 10% seed / 0% origin; 1 task in flight; dfly v2\n",
		"  b            not working, SILENT (seen 30s ago)\n",
		"  c            idle, live (seen 0s ago); sends no counters\n",
		"  seed seed: 4 tasks (3 complete, 1 fetching, 0 failed); 10.0 MiB from the origin, 10.0 MiB to peers in the last 5m\n",
		"  seed error: task x: HTTP 404\n",
		"  why: host b: not working\n",
		"  error 2s ago on a: boom\n",
		"  supernode 10.0.0.1:8001, dfly v2\n",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("words:\n%s\nwant them to contain %q", got, w)
		}
	}
}

func TestStatusFlags(t *testing.T) {
	if code, _, errs := runDfctl("status", "--help"); code != 0 || !strings.Contains(errs, "Exit codes: 0 working, idle or disabled; 1 degraded or not working") {
		t.Errorf("--help: %d %q", code, errs)
	}
	for _, bad := range [][]string{
		{"status", "--window", "0s"},
		{"status", "--window", "soon"},
		{"status", "--timeout", "-1s"},
		{"status", "extra"},
		{"status", "--admin-token-file", "/x"},
		{"status", "--bogus"},
	} {
		if code, _, _ := runDfctl(bad...); code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, code)
		}
	}
	if code, _, errs := runDfctl("--help"); code != 0 || !strings.Contains(errs, "dfctl status [--supernode URL]") {
		t.Errorf("dfctl --help: %d, does not mention status: %q", code, errs)
	}
}

// TestStatusOfHost: `dfctl status` asks the daemon on --sock; one that
// does not answer is named, with exit 1.
func TestStatusOfHost(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "nobody.sock")
	code, out, errs := runDfctl("status", "--sock", sock)
	if code != 1 || out != "" || !strings.Contains(errs, "no dfdaemon answers on "+sock) {
		t.Errorf("no daemon: %d %q %q", code, out, errs)
	}

	d, err := peer.StartDaemon(context.Background(), peer.DaemonConfig{Sock: filepath.Join(dir, "d.sock"), StoreDir: filepath.Join(dir, "store"),
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	code, out, errs = runDfctl("status", "--sock", d.SockPath(), "--window", "1m")
	if code != 0 || !strings.HasPrefix(out, "P2P disabled: no supernode configured (origin mode); last 1m: nothing fetched; no tasks in flight; no errors.\n") {
		t.Errorf("origin-mode daemon: %d %q %q", code, out, errs)
	}
	code, out, _ = runDfctl("status", "--sock", d.SockPath(), "--json")
	var st p2pstatus.Host
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Verdict.P2P != p2pstatus.Disabled || st.Window != "5m" {
		t.Errorf("--json: %d %v %+v", code, err, st)
	}
}

// TestStatusOfSwarm: `dfctl status --supernode` asks GET /api/v1/status
// with the admin token, and exits by the swarm's verdict.
func TestStatusOfSwarm(t *testing.T) {
	const token = "0123456789abcdef0123"
	verdict := p2pstatus.Working
	var gotWindow string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/status" {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		gotWindow = r.URL.Query().Get("window")
		_ = json.NewEncoder(w).Encode(testSwarm(time.Now(), verdict))
	}))
	defer srv.Close()
	tokFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DFLY_ADMIN_TOKEN", "")

	code, out, errs := runDfctl("status", "--supernode", srv.URL, "--admin-token-file", tokFile, "--window", "2m")
	if code != 0 || !strings.HasPrefix(out, "P2P working: 3 hosts seen") || gotWindow != "2m0s" {
		t.Errorf("working swarm: %d %q %q (window %q)", code, out, errs, gotWindow)
	}
	verdict = p2pstatus.Degraded
	// host:port without a scheme works too.
	if code, out, _ := runDfctl("status", "--supernode", strings.TrimPrefix(srv.URL, "http://"), "--admin-token-file", tokFile); code != 1 || !strings.HasPrefix(out, "P2P degraded") {
		t.Errorf("degraded swarm: %d %q", code, out)
	}
	code, out, _ = runDfctl("status", "--supernode", srv.URL, "--admin-token-file", tokFile, "--json")
	var st p2pstatus.Swarm
	if err := json.Unmarshal([]byte(out), &st); code != 1 || err != nil || len(st.Hosts) != 3 {
		t.Errorf("--json: %d %v %+v", code, err, st)
	}
	if code, _, errs := runDfctl("status", "--supernode", srv.URL); code != 1 || !strings.Contains(errs, "--admin-token-file") {
		t.Errorf("without the token: %d %q", code, errs)
	}
	t.Setenv("DFLY_ADMIN_TOKEN", token)
	if code, _, errs := runDfctl("status", "--supernode", srv.URL); code != 1 || errs != "" {
		t.Errorf("token from $DFLY_ADMIN_TOKEN: %d %q", code, errs)
	}
	if code, _, errs := runDfctl("status", "--supernode", srv.URL+"/elsewhere"); code != 1 || !strings.Contains(errs, "no /api/v1/status") {
		t.Errorf("wrong URL: %d %q", code, errs)
	}
	srv.Close()
	if code, _, errs := runDfctl("status", "--supernode", srv.URL); code != 1 || !strings.Contains(errs, "does not answer") {
		t.Errorf("supernode down: %d %q", code, errs)
	}
	if code, _, _ := runDfctl("status", "--supernode", srv.URL, "--admin-token-file", "/nonexistent/token"); code != 2 {
		t.Errorf("missing token file: exit %d, want 2", code)
	}
}
