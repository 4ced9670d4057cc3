package flow

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/netbench"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/peer"
)

// profile is the size of a run: make test runs the short one, make
// bench-flow (DFLY_FLOW_BENCH=1) the long one.
type profile struct {
	size          int64         // bytes each dfly download fetches
	alone         time.Duration // the host's flow measured alone
	link, compete int64         // bit/s: the host's download link, the host's own flow's pace
}

func currentProfile() profile {
	p := profile{size: 16 << 20, alone: 3 * time.Second, link: 40e6, compete: 16e6}
	if os.Getenv("DFLY_FLOW_BENCH") != "" {
		p.size, p.alone = 256<<20, 10*time.Second
	}
	return p
}

const (
	originPort   = 8080
	snPort       = 8002
	snUploadPort = 8001
	daemonPort   = 65001
	flowPort     = 9000
)

// TestFlowAutoYields builds two hosts behind a shaped link (network
// namespaces, tc tbf), runs a steady TCP flow of the host's own from the
// second host to the first at 40% of the link, measures its goodput
// alone, then while the first host's dfdaemon downloads with --flow auto,
// alone again, then while it downloads with --flow fixed (for contrast,
// logged). With --flow auto the host's flow keeps at least 80% of what it
// had alone (the mean of the phases before and after) and dfly completes
// sha256-exact. The baseline is measured in the same run, on the same
// link, so a loaded machine moves both alike.
func TestFlowAutoYields(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the flow-control test runs two hosts in network namespaces for about half a minute")
	}
	if err := netbench.Preflight(); err != nil {
		t.Skipf("the flow-control test needs root, ip and tc (network namespaces, veth, tbf): %v", err)
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		t.Skipf("network namespaces are not available (ip netns list: %v: %s)", err, out)
	}
	prof := currentProfile()
	repo, err := netbench.FindRepo(".")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	bins, err := netbench.BuildBinaries(ctx, repo, filepath.Join(work, "bin"), true)
	if err != nil {
		t.Fatal(err)
	}
	flowpair := filepath.Join(work, "bin", "flowpair")
	build := exec.CommandContext(ctx, "go", "build", "-o", flowpair, "./integration/flow/cmd/flowpair")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build flowpair: %v: %s", err, out)
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	topo, err := netbench.Build(ctx, netbench.Spec{Peers: 2, IDCs: 1, PeerRate: prof.link, OriginRate: 200e6, SupernodeRate: 200e6}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := topo.Teardown(); err != nil {
			t.Error(err)
		}
	}()
	procs := &netbench.Procs{}
	defer func() {
		if _, err := procs.StopAll(5 * time.Second); err != nil {
			t.Error(err)
		}
	}()
	host, other := topo.Peers[0], topo.Peers[1]
	start := func(name string, h *netbench.Host, ready string, argv ...string) *netbench.Proc {
		t.Helper()
		p, err := netbench.StartProc(name, h.NS, filepath.Join(work, name+".log"), nil, ready, argv...)
		if err != nil {
			t.Fatal(err)
		}
		procs.Add(p)
		if ready != "" {
			if err := p.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}

	files := map[string]origin.Content{"auto.bin": {Size: prof.size, Seed: 1}, "fixed.bin": {Size: prof.size, Seed: 2}}
	args := []string{bins.Origin, "--listen", fmt.Sprintf("%s:%d", topo.Origin.IP, originPort)}
	for name, c := range files {
		args = append(args, "--generate", fmt.Sprintf("%s=%d:%d", name, c.Size, c.Seed))
	}
	start("dforigin", topo.Origin, "origin listening", args...)
	sn := topo.Supernode
	start("supernode", sn, "supernode listening", bins.Supernode,
		"--listen", fmt.Sprintf("%s:%d", sn.IP, snPort), "--upload-listen", fmt.Sprintf("%s:%d", sn.IP, snUploadPort),
		"--advertise", fmt.Sprintf("%s:%d", sn.IP, snUploadPort), "--metrics-listen", "", "--store", filepath.Join(work, "sn-store"))
	recvLog := filepath.Join(work, "recv.log")
	start("flowpair-recv", host, "flowpair listening", flowpair, "recv", "--listen", fmt.Sprintf("%s:%d", host.IP, flowPort), "--log", recvLog)
	start("flowpair-send", other, "flowpair sending", flowpair, "send", "--to", fmt.Sprintf("%s:%d", host.IP, flowPort), "--rate", netbench.FormatRate(prof.compete))

	began := time.Now()
	tl := newTimeline(ctx, host.NS, began)
	defer tl.stop()

	// 1. The host's flow alone (after a second to settle).
	time.Sleep(time.Second)
	aloneFrom := time.Now()
	time.Sleep(prof.alone)
	aloneTo := time.Now()

	// 2. and 3. dfly downloads beside it, with --flow auto, then fixed.
	download := func(mode, file string) (from, to time.Time, ok bool) {
		t.Helper()
		dir := filepath.Join(work, mode)
		sock := filepath.Join(dir, "dfdaemon.sock")
		addr := fmt.Sprintf("%s:%d", host.IP, daemonPort)
		dargs := []string{bins.Dfdaemon, "--supernode", fmt.Sprintf("%s:%d", sn.IP, snPort), "--listen", addr, "--advertise", addr,
			"--sock", sock, "--store", filepath.Join(dir, "store"), "--metrics-listen", "", "--mirror-listen", "", "--flow", mode}
		if mode == "auto" {
			dargs = append(dargs, "--flow-ceiling", netbench.FormatRate(prof.link))
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		d := start("dfdaemon-"+mode, host, "dfdaemon ready", dargs...)
		tl.watch(sock)
		time.Sleep(1500 * time.Millisecond) // the controller's first window
		out := filepath.Join(dir, file)
		c := files[file]
		url := fmt.Sprintf("http://%s:%d/%s", topo.Origin.IP, originPort, file)
		g := start("dfget-"+mode, host, "", bins.Dfget, url, "-O", out, "--daemon-sock", sock, "--digest", c.Digest("sha256"))
		if err := g.Wait(ctx); err != nil {
			t.Fatalf("dfget with --flow %s: %v", mode, err)
		}
		tl.watch("")
		d.Stop(5 * time.Second)
		return g.Started(), g.Ended(), fileSHA256(t, out) == strings.TrimPrefix(c.Digest("sha256"), "sha256:")
	}
	autoFrom, autoTo, autoOK := download("auto", "auto.bin")
	// Alone again, before the fixed run (which starves the flow: its TCP
	// then needs seconds to recover from the timeouts): the baseline is the
	// mean of the two phases around the --flow auto run, so a machine whose
	// load changed over the run moves it less.
	time.Sleep(time.Second)
	againFrom := time.Now()
	time.Sleep(prof.alone)
	againTo := time.Now()
	fixedFrom, fixedTo, fixedOK := download("fixed", "fixed.bin")
	time.Sleep(300 * time.Millisecond) // the receiver's log covers the end
	tl.stop()

	b, err := os.ReadFile(recvLog)
	if err != nil {
		t.Fatal(err)
	}
	marks, err := ParseLog(b)
	if err != nil {
		t.Fatal(err)
	}
	goodput := func(from, to time.Time) float64 {
		g, ok := Goodput(marks, from, to)
		if !ok {
			t.Fatalf("the receiver's log does not cover %s..%s", from.Format(time.TimeOnly), to.Format(time.TimeOnly))
		}
		return g / 1e6
	}
	rep := Report{
		Command: "make bench-flow", Finished: time.Now().UTC(), LinkMbit: float64(prof.link) / 1e6,
		CompetingMbit: float64(prof.compete) / 1e6, SizeBytes: prof.size, Load: loadAverage(),
	}
	before, after := goodput(aloneFrom, aloneTo), goodput(againFrom, againTo)
	alone := (before + after) / 2
	rel := func(t time.Time) float64 { return t.Sub(began).Seconds() }
	for _, r := range []struct {
		name     string
		from, to time.Time
		dfly, ok bool
	}{{"alone", aloneFrom, aloneTo, false, false}, {"--flow auto", autoFrom, autoTo, true, autoOK},
		{"alone again", againFrom, againTo, false, false}, {"--flow fixed", fixedFrom, fixedTo, true, fixedOK}} {
		g := goodput(r.from, r.to)
		ph := Phase{Name: r.name, Start: rel(r.from), End: rel(r.to), CompetingMbit: g, Share: g / alone}
		if r.dfly {
			ph.DflySeconds = r.to.Sub(r.from).Seconds()
			ph.DflyMbit, ph.SHA256OK = float64(prof.size)*8/ph.DflySeconds/1e6, r.ok
		}
		rep.Phases = append(rep.Phases, ph)
	}
	rep.Timeline = tl.points(marks)
	var table strings.Builder
	if err := WriteTable(&table, rep); err != nil {
		t.Fatal(err)
	}
	t.Logf("link %s, host's flow paced at %s, dfly downloads %d MiB (load %s):\n%s", netbench.FormatRate(prof.link),
		netbench.FormatRate(prof.compete), prof.size>>20, rep.Load, table.String())
	if dir := os.Getenv("DFLY_FLOW_OUT"); dir != "" {
		if err := writeOutputs(dir, rep, table.String()); err != nil {
			t.Error(err)
		}
	}

	if !autoOK || !fixedOK {
		t.Errorf("dfly's outputs: --flow auto sha256 exact %v, --flow fixed %v", autoOK, fixedOK)
	}
	if alone < 0.5*float64(prof.compete)/1e6 {
		t.Fatalf("the host's flow alone got %.1f Mbit/s (before %.1f, after %.1f) of its %s: the machine or the link, not the controller, is the problem",
			alone, before, after, netbench.FormatRate(prof.compete))
	}
	if auto := rep.Phases[1]; auto.Share < 0.8 {
		t.Errorf("with --flow auto the host's flow kept %.0f%% of its share alone (%.1f of %.1f Mbit/s), want at least 80%%", 100*auto.Share, auto.CompetingMbit, alone)
	}
}

func writeOutputs(dir string, rep Report, table string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := WriteJSON(filepath.Join(dir, "flow.json"), rep); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "flow.md"), []byte(table), 0o644); err != nil {
		return err
	}
	return Plot(filepath.Join(dir, "flow.png"), rep)
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// timeline samples the host's interface and the running daemon's flow
// state every 250 ms; its goroutine is stopped by stop.
type timeline struct {
	ns    string
	began time.Time
	stopc chan struct{}
	done  chan struct{}
	once  sync.Once

	mu      sync.Mutex
	sock    string
	samples []tlSample
}

type tlSample struct {
	at      time.Time
	rx      int64
	allowed int64 // bytes/s; 0: no controller
}

func newTimeline(ctx context.Context, ns string, began time.Time) *timeline {
	tl := &timeline{ns: ns, began: began, stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tl.done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tl.stopc:
				return
			case <-tick.C:
			}
			before := time.Now()
			c, err := netbench.Counters(ctx, ns, "eth0") // runs ip: the counter is read some time in between
			if err != nil {
				continue
			}
			s := tlSample{at: before.Add(time.Since(before) / 2), rx: c.RxBytes}
			tl.mu.Lock()
			sock := tl.sock
			tl.mu.Unlock()
			if sock != "" {
				s.allowed = allowed(ctx, sock)
			}
			tl.mu.Lock()
			tl.samples = append(tl.samples, s)
			tl.mu.Unlock()
		}
	}()
	return tl
}

// allowed asks the daemon on sock for its download allowance (0: none).
func allowed(ctx context.Context, sock string) int64 {
	ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	c, err := peer.DialDaemon(ctx, sock)
	if err != nil {
		return 0
	}
	defer c.Close()
	st, err := c.Stats(ctx)
	if err != nil || st.Flow == nil || st.Flow.Download == nil {
		return 0
	}
	return st.Flow.Download.Allowed
}

func (tl *timeline) watch(sock string) {
	tl.mu.Lock()
	tl.sock = sock
	tl.mu.Unlock()
}

func (tl *timeline) stop() {
	tl.once.Do(func() { close(tl.stopc) })
	<-tl.done
}

// points turns the samples into rates, with the host's flow from its
// receiver's log over the same intervals.
func (tl *timeline) points(marks []Mark) []Point {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var out []Point
	for i := 1; i < len(tl.samples); i++ {
		a, b := tl.samples[i-1], tl.samples[i]
		dt := b.at.Sub(a.at).Seconds()
		if dt <= 0 {
			continue
		}
		p := Point{T: b.at.Sub(tl.began).Seconds(), Link: float64(b.rx-a.rx) * 8 / dt / 1e6, Allowed: float64(b.allowed) * 8 / 1e6}
		if g, ok := Goodput(marks, a.at, b.at); ok {
			p.Competing = g / 1e6
		}
		out = append(out, p)
	}
	return out
}
