package p2pstatus

import (
	"strings"
	"testing"
	"time"
)

const mib = 1 << 20

func TestDecide(t *testing.T) {
	up := Input{Configured: true, Reachable: true, Window: 5 * time.Minute}
	with := func(f func(*Input)) Input { in := up; f(&in); return in }
	for _, tc := range []struct {
		name    string
		in      Input
		want    string
		reasons []string // substrings, in order, one per reason
	}{
		{"origin mode", Input{Window: time.Minute, Bytes: Bytes{Origin: mib}},
			Disabled, []string{"no supernode configured (origin mode)"}},
		{"origin mode beats unreachable", Input{Reachable: false, Unreachable: "x"},
			Disabled, []string{"origin mode"}},
		{"supernode unreachable", with(func(in *Input) {
			in.Reachable = false
			in.Unreachable = "supernode 1.2.3.4:8002 unreachable: last heartbeat 12s ago"
		}),
			NotWorking, []string{"supernode 1.2.3.4:8002 unreachable: last heartbeat 12s ago"}},
		{"unreachable without words", with(func(in *Input) { in.Reachable = false }),
			NotWorking, []string{"supernode unreachable"}},
		{"unreachable beats good bytes", with(func(in *Input) { in.Reachable = false; in.Bytes = Bytes{Peers: 10 * mib} }),
			NotWorking, []string{"supernode unreachable", "last 5m: 10.0 MiB fetched, 100% from peers, 0% from the seed, 0% from the origin"}},
		{"no bytes", up, Idle, []string{"nothing fetched in the last 5m"}},
		{"only local bytes", with(func(in *Input) { in.Bytes = Bytes{Local: 3 * mib} }),
			Idle, []string{"nothing fetched in the last 5m; 3.0 MiB served from the local store"}},
		{"idle with fallbacks but no bytes", with(func(in *Input) { in.Fallbacks = 2 }), Idle, []string{"nothing fetched"}},
		{"all from peers", with(func(in *Input) { in.Bytes = Bytes{Peers: 94 * mib, Seed: 6 * mib} }),
			Working, []string{"last 5m: 100.0 MiB fetched, 94% from peers, 6% from the seed, 0% from the origin"}},
		{"all from the seed", with(func(in *Input) { in.Bytes = Bytes{Seed: mib} }), Working, []string{"100% from the seed"}},
		{"origin-heavy with fallbacks", with(func(in *Input) { in.Bytes = Bytes{Origin: 80 * mib, Peers: 20 * mib}; in.Fallbacks = 14 }),
			Degraded, []string{"only 20% of the 100.0 MiB fetched in the last 5m came from the swarm (peers and seed)", "14 swarm failures fell back to the origin"}},
		{"one fallback", with(func(in *Input) { in.Bytes = Bytes{Origin: mib}; in.Fallbacks = 1 }),
			Degraded, []string{"only 0% of", "1 swarm failure fell back"}},
		{"origin-heavy without fallbacks", with(func(in *Input) { in.Bytes = Bytes{Origin: 80 * mib, Peers: 20 * mib} }),
			Working, []string{"80% from the origin"}},
		{"exactly half from the swarm", with(func(in *Input) { in.Bytes = Bytes{Origin: 50 * mib, Peers: 50 * mib}; in.Fallbacks = 3 }),
			Working, []string{"50% from peers", "3 swarm failures fell back"}},
		{"just under half", with(func(in *Input) { in.Bytes = Bytes{Origin: 51, Peers: 49}; in.Fallbacks = 1 }),
			Degraded, []string{"only 49%", "1 swarm failure"}},
		{"failed downloads are mentioned", with(func(in *Input) { in.Bytes = Bytes{Peers: mib}; in.DownloadsFailed = 2 }),
			Working, []string{"100% from peers", "2 downloads failed in the last 5m"}},
		{"a failed download while idle", with(func(in *Input) { in.DownloadsFailed = 1 }),
			Idle, []string{"nothing fetched", "1 download failed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Decide(tc.in)
			if v.P2P != tc.want {
				t.Errorf("verdict %q, want %q (%v)", v.P2P, tc.want, v.Reasons)
			}
			if len(v.Reasons) != len(tc.reasons) {
				t.Fatalf("reasons %q, want %d like %q", v.Reasons, len(tc.reasons), tc.reasons)
			}
			for i, r := range tc.reasons {
				if !strings.Contains(v.Reasons[i], r) {
					t.Errorf("reason %d %q, want it to contain %q", i, v.Reasons[i], r)
				}
			}
		})
	}
}

func TestDecideSwarm(t *testing.T) {
	w := 5 * time.Minute
	host := func(id string, live bool, b Bytes, fb int64) SwarmHost {
		h := SwarmHost{ID: id, Live: live, Bytes: b, OriginFallbacks: fb}
		h.Verdict = Decide(Input{Configured: true, Reachable: live, Unreachable: "no heartbeat for 40s", Window: w, Bytes: b, Fallbacks: fb})
		return h
	}
	good := Bytes{Peers: 90 * mib, Seed: 10 * mib}
	for _, tc := range []struct {
		name    string
		hosts   []SwarmHost
		want    string
		reasons []string
	}{
		{"no hosts", nil, Idle, []string{"no dfdaemon announced in the last 5m"}},
		{"all working", []SwarmHost{host("a", true, good, 0), host("b", true, good, 0)},
			Working, []string{"200.0 MiB fetched, 90% from peers, 10% from the seed"}},
		{"all idle", []SwarmHost{host("a", true, Bytes{}, 0)}, Idle, []string{"nothing fetched"}},
		{"none live", []SwarmHost{host("a", false, good, 0), host("b", false, Bytes{}, 0)},
			NotWorking, []string{"none of the 2 hosts seen in the last 5m announces any more"}},
		{"all left cleanly", []SwarmHost{{ID: "a", Left: true, Bytes: good, Verdict: Verdict{P2P: Working}}},
			Working, []string{"100.0 MiB fetched"}},
		{"one host left, one gone", []SwarmHost{{ID: "a", Left: true, Verdict: Verdict{P2P: Idle}}, host("b", false, Bytes{}, 0)},
			NotWorking, []string{"none of the 2 hosts"}},
		{"one host gone", []SwarmHost{host("a", true, good, 0), host("b", false, Bytes{}, 0)},
			Degraded, []string{"100.0 MiB fetched", "host b: not working (no heartbeat for 40s)"}},
		{"one host degraded, swarm fine", []SwarmHost{host("a", true, good, 0), host("b", true, Bytes{Origin: 10 * mib}, 5)},
			Degraded, []string{"110.0 MiB fetched", "5 swarm failures", "host b: degraded (only 0% of the 10.0 MiB"}},
		{"swarm degraded", []SwarmHost{host("a", true, Bytes{Origin: 10 * mib}, 5), host("b", true, Bytes{Origin: 10 * mib}, 5)},
			Degraded, []string{"only 0% of the 20.0 MiB", "10 swarm failures", "host a: degraded", "host b: degraded"}},
		{"many bad hosts", []SwarmHost{host("a", true, good, 0), host("b1", false, Bytes{}, 0), host("b2", false, Bytes{}, 0),
			host("b3", false, Bytes{}, 0), host("b4", false, Bytes{}, 0), host("b5", false, Bytes{}, 0), host("b6", false, Bytes{}, 0), host("b7", false, Bytes{}, 0)},
			Degraded, []string{"fetched", "host b1", "host b2", "host b3", "host b4", "host b5", "and 2 more hosts"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := DecideSwarm(w, tc.hosts)
			if v.P2P != tc.want {
				t.Errorf("verdict %q, want %q (%v)", v.P2P, tc.want, v.Reasons)
			}
			if len(v.Reasons) != len(tc.reasons) {
				t.Fatalf("reasons %q, want %d like %q", v.Reasons, len(tc.reasons), tc.reasons)
			}
			for i, r := range tc.reasons {
				if !strings.Contains(v.Reasons[i], r) {
					t.Errorf("reason %d %q, want it to contain %q", i, v.Reasons[i], r)
				}
			}
		})
	}
}

func TestVerdictOK(t *testing.T) {
	for p, want := range map[string]bool{Working: true, Idle: true, Disabled: true, Degraded: false, NotWorking: false, "": false} {
		if got := (Verdict{P2P: p}).OK(); got != want {
			t.Errorf("%q.OK() = %v, want %v", p, got, want)
		}
	}
}

func TestFormatting(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{Percent(0), "0%"}, {Percent(1), "100%"}, {Percent(0.944), "94%"}, {Percent(0.001), "1%"}, {Percent(0.999), "99%"}, {Percent(0.5), "50%"},
		{HumanBytes(0), "0 B"}, {HumanBytes(1023), "1023 B"}, {HumanBytes(1536), "1.5 KiB"}, {HumanBytes(1288490189), "1.2 GiB"},
		{FormatWindow(5 * time.Minute), "5m"}, {FormatWindow(time.Hour), "1h"}, {FormatWindow(90 * time.Minute), "1h30m"},
		{FormatWindow(45 * time.Second), "45s"}, {FormatWindow(150 * time.Second), "2m30s"}, {FormatWindow(0), "0s"},
		{Ago(time.Time{}, time.Now()), "never"}, {Ago(time.Unix(100, 0), time.Unix(112, 400e6)), "12s ago"},
		{Ago(time.Unix(100, 0), time.Unix(99, 0)), "0s ago"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
