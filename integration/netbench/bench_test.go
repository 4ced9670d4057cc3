package netbench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// requireNet skips the test when the facilities of the harness are absent.
func requireNet(t *testing.T) {
	t.Helper()
	if err := Preflight(); err != nil {
		t.Skipf("netbench smoke test needs root, ip and tc: %v", err)
	}
}

// rootLinks returns the interface names of the root network namespace.
func rootLinks(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip link: %v", err)
	}
	var names []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			names = append(names, f[1])
		}
	}
	return strings.Join(names, " ")
}

// assertClean checks that no namespace of this process is left and that the
// root namespace's links are unchanged.
func assertClean(t *testing.T, linksBefore string) {
	t.Helper()
	left, err := ListNamespaces(context.Background(), NamePrefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range left {
		if ownerPID(ns) == os.Getpid() {
			t.Errorf("namespace %s left behind", ns)
		}
	}
	if after := rootLinks(t); after != linksBefore {
		t.Errorf("root namespace links changed:\nbefore %s\nafter  %s", linksBefore, after)
	}
}

// TestSmoke runs every scenario at N=4, S=32 MB end to end on real
// namespaces, real tc limits and real binaries, and checks correctness:
// every output sha256-exact, the dfly run's origin egress ≤ 1.2 copies, and
// nothing left behind.
func TestSmoke(t *testing.T) {
	requireNet(t)
	repo, err := FindRepo(".")
	if err != nil {
		t.Fatal(err)
	}
	scenarios := []string{Native, BitTorrent}
	if ok, missing := DflyAvailable(repo); ok {
		scenarios = append(scenarios, Dfly, Locality)
	} else {
		t.Logf("dfly and locality scenarios not run: the repository has no %s yet", strings.Join(missing, ", "))
	}
	for _, b := range []string{"aria2c", "opentracker", "mktorrent", "curl"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("netbench smoke test needs %s (apt-get install aria2 opentracker mktorrent curl): %v", b, err)
		}
	}
	linksBefore := rootLinks(t)
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	const size = 32_000_000
	b, err := New(ctx, Config{
		Repo: repo, BinDir: filepath.Join(work, "bin"), WorkDir: filepath.Join(work, "runs"),
		Size: size, Seed: 7, Ns: []int{4}, Scenarios: scenarios,
		PeerRate: 100e6, OriginRate: 1e9, InterIDCRate: 200e6,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	results, err := b.Sweep(ctx, nil)
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	if len(results) != len(scenarios) {
		t.Fatalf("sweep returned %d results for %d scenarios", len(results), len(scenarios))
	}
	assertClean(t, linksBefore)
	if procs := processesMentioning(t, work); len(procs) > 0 {
		t.Errorf("processes of the benchmark survive: %v", procs)
	}
	for i, s := range scenarios {
		r := results[i]
		t.Run(s, func(t *testing.T) {
			if r.Scenario != s || r.N != 4 {
				t.Fatalf("result %d is %s N=%d, want %s N=4", i, r.Scenario, r.N, s)
			}
			t.Logf("%s: p50 %.2fs p99 %.2fs max %.2fs (bound %.2fs) origin egress %.3f copies cross-idc %.3f copies cpu %.0f%% sources %+v",
				s, r.P50, r.P99, r.Max, r.BoundSeconds, r.OriginEgressCopies, r.CrossIDCCopies, 100*r.CPU, r.Sources)
			if r.Completed != 4 || !r.SHA256OK || len(r.Errors) > 0 {
				t.Errorf("%s: %d of 4 completed, sha256 ok %v, errors %v", s, r.Completed, r.SHA256OK, r.Errors)
			}
			if len(r.Times) != 4 || r.P50 <= 0 || r.P50 > r.P99 || r.P99 > r.Max {
				t.Errorf("%s: inconsistent times %v p50 %v p99 %v max %v", s, r.Times, r.P50, r.P99, r.Max)
			}
			// Every host got the file, through the origin or not: the
			// origin sent at least one copy (counters include headers).
			if r.OriginEgressCopies < 0.99 {
				t.Errorf("%s: origin egress %.3f copies: less than the one copy that must leave it", s, r.OriginEgressCopies)
			}
			switch s {
			case Native:
				if r.OriginEgressCopies < 3.9 {
					t.Errorf("native: origin egress %.3f copies, want ≥ 4 (one per host)", r.OriginEgressCopies)
				}
			case Dfly:
				if r.OriginEgressCopies > 1.2 {
					t.Errorf("dfly: origin egress %.3f copies, want ≤ 1.2", r.OriginEgressCopies)
				}
			case Locality:
				if r.CrossIDCBytes <= 0 {
					t.Errorf("locality: no bytes crossed the inter-idc link; the second idc cannot have got the file")
				}
			}
		})
	}
}

// processesMentioning returns the PIDs and command lines of processes whose
// command line contains s.
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Error(err)
		return nil
	}
	var out []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// newTwoHostBench returns a Bench of two peers working in work, with the
// default rates and cfg's size, scenarios and daemon flags.
func newTwoHostBench(t *testing.T, work string, cfg Config) *Bench {
	t.Helper()
	repo, err := FindRepo(".")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Repo, cfg.BinDir, cfg.WorkDir = repo, filepath.Join(work, "bin"), filepath.Join(work, "runs")
	cfg.Ns, cfg.PeerRate, cfg.OriginRate, cfg.InterIDCRate = []int{2}, 100e6, 1e9, 200e6
	b, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRunCancelled cancels a run in the middle of its downloads (what Ctrl-C
// does in the command) and checks that Run returns promptly and leaves no
// namespace, link or process behind.
func TestRunCancelled(t *testing.T) {
	requireNet(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skipf("needs curl: %v", err)
	}
	linksBefore := rootLinks(t)
	work := t.TempDir()
	b := newTwoHostBench(t, work, Config{Size: 100e6, Scenarios: []string{Native}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		// Cancel once the downloads run: a curl writing into work shows up in /proc.
		for ctx.Err() == nil {
			if n := len(processesMentioning(t, filepath.Join(work, "runs"))); n >= 2 { // both curls
				time.Sleep(300 * time.Millisecond)
				cancel()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	r, err := b.Run(ctx, Native, 2)
	cancel()
	<-watcherDone
	if err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("cancelled run returned %v, want a context cancellation error", err)
	}
	if r.Completed != 0 {
		t.Errorf("an 8 s download completed in a run cancelled after 0.3 s: %+v", r)
	}
	assertClean(t, linksBefore)
	if procs := processesMentioning(t, work); len(procs) > 0 {
		t.Errorf("processes survive the cancelled run: %v", procs)
	}
}

// TestDaemonArgsReachDaemons: Config.DaemonArgs are appended to every
// dfdaemon's command line; a flag dfdaemon rejects fails the run with
// dfdaemon's own message and leaves nothing behind.
func TestDaemonArgsReachDaemons(t *testing.T) {
	requireNet(t)
	linksBefore := rootLinks(t)
	work := t.TempDir()
	b := newTwoHostBench(t, work, Config{Size: 1e6, Scenarios: []string{Dfly},
		DaemonArgs: []string{"--no-such-flag-for-the-test"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := b.Run(ctx, Dfly, 2)
	msg := fmt.Sprint(err, r.Errors)
	if (err == nil && len(r.Errors) == 0) || !strings.Contains(msg, "no-such-flag-for-the-test") || r.Completed != 0 {
		t.Errorf("run with a bad dfdaemon flag: %+v, %v; want an error naming the flag", r, err)
	}
	assertClean(t, linksBefore)
	if procs := processesMentioning(t, work); len(procs) > 0 {
		t.Errorf("processes survive the failed run: %v", procs)
	}
}
