package main

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dfly-p2p/dfly/integration/netbench"
)

func TestReplot(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "results.json")
	var results []netbench.Result
	for _, s := range []string{netbench.Native, netbench.Dfly, netbench.BitTorrent} {
		for _, n := range []int{5, 10} {
			b := netbench.Bound(64e6, n, 1e9, 100e6).Seconds()
			results = append(results, netbench.Result{Scenario: s, N: n, SizeBytes: 64e6, PeerRate: 100e6, OriginRate: 1e9,
				BoundSeconds: b, P50: b * 1.2, P99: b * 1.5, Max: b * 1.6, Completed: n, SHA256OK: true})
		}
	}
	if err := netbench.WriteJSON(path, netbench.Report{Results: results}); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"--replot", path}, &out, &errOut); err != nil {
		t.Fatalf("replot: %v\n%s", err, errOut.String())
	}
	if got := strings.Count(out.String(), "\n"); got != 7 || !strings.Contains(out.String(), "bittorrent") {
		t.Errorf("table has %d lines, want header + 6:\n%s", got, out.String())
	}
	f, err := os.Open(filepath.Join(dir, "results.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Errorf("replot did not write a PNG: %v", err)
	}
}

func TestBadArguments(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--n", "5,x"}, "bad count"},
		{[]string{"--size", "big"}, "bad size"},
		{[]string{"--peer-rate", "fast"}, "bad rate"},
		{[]string{"--inter-idc-rate", "1mbps"}, "bad rate"},
		{[]string{"--no-such-flag"}, "unknown flag"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--replot", "/nonexistent/results.json"}, "read results"},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		err := run(context.Background(), tt.args, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("run(%q) = %v, want an error with %q", tt.args, err, tt.want)
		}
	}
}

// TestCleanup removes a namespace of a dead run with --cleanup.
func TestCleanup(t *testing.T) {
	if err := netbench.Preflight(); err != nil {
		t.Skipf("--cleanup needs root, ip and tc: %v", err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("%s%d-cmdtst-p001", netbench.NamePrefix, dead.Process.Pid)
	if err := exec.Command("ip", "netns", "add", ns).Run(); err != nil {
		t.Fatal(err)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	// A sweep refuses to start over it, naming the cleanup command.
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"--n", "2", "--size", "1MB", "--scenarios", "native", "--out", t.TempDir()}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), ns) || !strings.Contains(err.Error(), "--cleanup") {
		t.Fatalf("run over a leftover = %v, want a refusal naming %s and --cleanup", err, ns)
	}
	out.Reset()
	if err := run(context.Background(), []string{"--cleanup"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), ns) {
		t.Errorf("--cleanup output %q does not name %s", out.String(), ns)
	}
	left, err := netbench.ListNamespaces(context.Background(), ns)
	if err != nil || len(left) != 0 {
		t.Errorf("after --cleanup: %v %v", left, err)
	}
}
