package netbench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestOwnerPID(t *testing.T) {
	tests := map[string]int{
		"dfnb123-abcdef-p001": 123,
		"dfnb7-00ff00-br":     7,
		"dfnbx-1-br":          0,
		"other123-a-b":        0,
		"dfnb":                0,
	}
	for ns, want := range tests {
		if got := ownerPID(ns); got != want {
			t.Errorf("ownerPID(%q) = %d, want %d", ns, got, want)
		}
	}
	p := NewPrefix()
	if ownerPID(p+"-origin") != os.Getpid() || NewPrefix() == p {
		t.Errorf("NewPrefix %q: not unique or not owned by this process", p)
	}
}

func TestTbfArgs(t *testing.T) {
	tests := map[int64]string{
		10e9:  "root tbf rate 10gbit burst 5000000 latency 20ms", // 4 ms of the rate
		1e9:   "root tbf rate 1gbit burst 500000 latency 20ms",
		100e6: "root tbf rate 100mbit burst 131072 latency 20ms", // floor: a 64 KiB GSO packet fits
		1e6:   "root tbf rate 1mbit burst 131072 latency 20ms",
	}
	for rate, want := range tests {
		if got := strings.Join(tbfArgs(rate), " "); got != want {
			t.Errorf("tbfArgs(%d) = %q, want %q", rate, got, want)
		}
	}
}

func TestBuildRejectsBadSpecs(t *testing.T) {
	for _, s := range []Spec{
		{Peers: 0, IDCs: 1, PeerRate: 1e8, OriginRate: 1e9},
		{Peers: 2, IDCs: 3, PeerRate: 1e8, OriginRate: 1e9},
		{Peers: 2, IDCs: 1, OriginRate: 1e9},
		{Peers: 2, IDCs: 2, PeerRate: 1e8, OriginRate: 1e9},
	} {
		if _, err := Build(context.Background(), s, nil); err == nil {
			t.Errorf("Build(%+v) accepted", s)
		}
	}
}

// TestTopology builds a two-idc topology with real namespaces, veths,
// bridges and tbf qdiscs, checks its shape and connectivity, and that
// Teardown leaves nothing behind.
func TestTopology(t *testing.T) {
	requireNet(t)
	ctx := context.Background()
	linksBefore := rootLinks(t)
	topo, err := Build(ctx, Spec{Peers: 3, IDCs: 2, PeerRate: 100e6, OriginRate: 1e9, InterIDCRate: 200e6}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer topo.Teardown()
	names, err := ListNamespaces(ctx, topo.Spec.Prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	want := []string{topo.BridgeNS}
	for _, h := range topo.Hosts() {
		want = append(want, h.NS)
	}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("namespaces %v, want %v", names, want)
	}
	if got := []string{topo.Peers[0].IDC, topo.Peers[1].IDC, topo.Peers[2].IDC}; !slices.Equal(got, []string{"idc-a", "idc-a", "idc-b"}) {
		t.Errorf("peer idcs %v", got)
	}
	// The root namespace gets nothing; the bridge namespace no addresses.
	if after := rootLinks(t); after != linksBefore {
		t.Errorf("root namespace links changed: %s -> %s", linksBefore, after)
	}
	out, err := exec.Command("ip", "-n", topo.BridgeNS, "-o", "-4", "addr", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.TrimSpace(string(out)); strings.Count(s, "\n")+1 != 1 || !strings.Contains(s, " lo ") {
		t.Errorf("bridge namespace has addresses besides lo:\n%s", s)
	}
	// Rate limits on both directions of every host.
	for _, h := range topo.Hosts() {
		up, _ := exec.Command("tc", "-n", h.NS, "qdisc", "show", "dev", "eth0").Output()
		down, _ := exec.Command("tc", "-n", topo.BridgeNS, "qdisc", "show", "dev", h.Port).Output()
		rate := "rate " + strings.TrimSuffix(FormatRate(h.Rate), "bit")
		for _, q := range []string{string(up), string(down)} {
			if !strings.Contains(q, "tbf") || !strings.Contains(strings.ToLower(q), strings.ToLower(rate)) {
				t.Errorf("%s: qdisc %q lacks tbf %s", h.Name, q, rate)
			}
		}
	}
	// Static neighbour entries for every other host, with its MAC.
	for _, h := range topo.Hosts() {
		out, err := exec.Command("ip", "-n", h.NS, "neigh", "show", "dev", "eth0").Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range topo.Hosts() {
			if o == h {
				continue
			}
			if want := o.IP.String() + " lladdr " + o.MAC + " PERMANENT"; !strings.Contains(string(out), want) {
				t.Errorf("%s: neighbours lack %q:\n%s", h.Name, want, out)
			}
		}
	}
	// Across the inter-idc link: origin (idc-a) reaches the idc-b peer, and
	// the link's counters see it.
	c0, err := Counters(ctx, topo.BridgeNS, InterIDCPort)
	if err != nil {
		t.Fatal(err)
	}
	// TCP connection attempts to a closed port: the SYNs cross the link one
	// way and the peer's RSTs the other (an unreachable host would send none).
	for range 3 {
		b, _ := exec.Command("ip", "netns", "exec", topo.Origin.NS, "curl", "-sS", "--max-time", "3",
			"http://"+topo.Peers[2].IP.String()+":9/").CombinedOutput()
		if !strings.Contains(string(b), "refused") && !strings.Contains(string(b), "Couldn't connect") {
			t.Fatalf("origin cannot reach the idc-b peer: %s", b)
		}
	}
	c1, err := Counters(ctx, topo.BridgeNS, InterIDCPort)
	if err != nil {
		t.Fatal(err)
	}
	if c1.TxBytes-c0.TxBytes < 3*74 || c1.RxBytes-c0.RxBytes < 3*54 {
		t.Errorf("inter-idc counters %+v -> %+v did not see 3 SYNs and RSTs", c0, c1)
	}
	if err := topo.Teardown(); err != nil {
		t.Fatal(err)
	}
	if left, _ := ListNamespaces(ctx, topo.Spec.Prefix); len(left) != 0 {
		t.Errorf("teardown left %v", left)
	}
}

// TestDynamicARP: with Spec.DynamicARP the hosts get no static neighbour
// entries, and still reach each other (through ARP).
func TestDynamicARP(t *testing.T) {
	requireNet(t)
	topo, err := Build(context.Background(), Spec{Peers: 1, IDCs: 1, PeerRate: 100e6, OriginRate: 1e9, DynamicARP: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer topo.Teardown()
	out, err := exec.Command("ip", "-n", topo.Peers[0].NS, "neigh", "show").Output()
	if err != nil || strings.Contains(string(out), "PERMANENT") {
		t.Fatalf("neighbours with DynamicARP: %q %v", out, err)
	}
	b, _ := exec.Command("ip", "netns", "exec", topo.Peers[0].NS, "curl", "-sS", "--max-time", "3",
		"http://"+topo.Origin.IP.String()+":9/").CombinedOutput()
	if !strings.Contains(string(b), "refused") && !strings.Contains(string(b), "Couldn't connect") {
		t.Fatalf("peer cannot reach the origin with ARP: %s", b)
	}
}

// TestLeftoverDetection checks that a namespace of a dead run is reported
// (with the cleanup command) and that Cleanup removes it and its processes.
func TestLeftoverDetection(t *testing.T) {
	requireNet(t)
	ctx := context.Background()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("%s%d-test00-p001", NamePrefix, dead.Process.Pid)
	if alive(dead.Process.Pid) {
		t.Skip("the pid of a finished process was reused at once; cannot fake a dead owner")
	}
	if _, err := run(ctx, "ip", "netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	defer Cleanup(ctx, []string{ns})
	sleeper := exec.Command("ip", "netns", "exec", ns, "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()

	err := CheckLeftovers(ctx)
	if !errors.Is(err, ErrLeftover) || !strings.Contains(err.Error(), ns) || !strings.Contains(err.Error(), "--cleanup") {
		t.Fatalf("CheckLeftovers = %v, want ErrLeftover naming %s and the cleanup command", err, ns)
	}
	// A live run's namespaces (this process's) are not leftovers.
	own := NewPrefix() + "-br"
	if _, err := run(ctx, "ip", "netns", "add", own); err != nil {
		t.Fatal(err)
	}
	defer Cleanup(ctx, []string{own})
	left, err := Leftovers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(left, own) || !slices.Contains(left, ns) {
		t.Errorf("Leftovers = %v: want %s and not %s", left, ns, own)
	}
	if err := Cleanup(ctx, []string{ns, own}); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err == nil {
		t.Error("the process inside the leftover namespace was not killed")
	}
	if err := CheckLeftovers(ctx); err != nil {
		t.Errorf("after cleanup: %v", err)
	}
}
