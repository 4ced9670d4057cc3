package netbench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestProc(t *testing.T) {
	requireNet(t)
	ctx := context.Background()
	topo, err := Build(ctx, Spec{Peers: 1, IDCs: 1, PeerRate: 100e6, OriginRate: 1e9}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer topo.Teardown()
	dir := t.TempDir()
	h := topo.Peers[0]

	t.Run("ready line, runs inside the namespace, stop", func(t *testing.T) {
		p, err := StartProc("svc", h.NS, filepath.Join(dir, "svc.log"), []string{"NB_X=42"}, "svc ready",
			"sh", "-c", `ip -o -4 addr show dev eth0; echo "  svc ready (indented: not the ready line)"; echo "svc ready $NB_X"; exec sleep 300`)
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := p.WaitReady(wctx); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(p.Tail(), h.IP.String()) || !strings.Contains(p.Tail(), "svc ready 42") {
			t.Errorf("process did not run in %s with its env: %q", h.NS, p.Tail())
		}
		start := time.Now()
		p.Stop(5 * time.Second)
		if alive(p.PID()) || time.Since(start) > 4*time.Second {
			t.Errorf("SIGTERM did not stop the process promptly")
		}
		log, _ := os.ReadFile(p.LogPath)
		if !strings.Contains(string(log), "svc ready 42") {
			t.Errorf("log lacks the output: %q", log)
		}
	})

	t.Run("exit before ready is an error with the output", func(t *testing.T) {
		p, err := StartProc("bad", h.NS, filepath.Join(dir, "bad.log"), nil, "never", "sh", "-c", "echo boom; exit 3")
		if err != nil {
			t.Fatal(err)
		}
		err = p.WaitReady(ctx)
		if err == nil || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), "exit status 3") {
			t.Errorf("WaitReady = %v", err)
		}
		if err := p.Wait(ctx); err == nil {
			t.Error("Wait of a failed process returned nil")
		}
		if !p.Ended().After(p.Started()) {
			t.Error("end time not after start time")
		}
	})

	t.Run("CPU time of a busy process is counted", func(t *testing.T) {
		var ps Procs
		p, err := StartProc("busy", h.NS, filepath.Join(dir, "busy.log"), nil, "",
			"sh", "-c", `i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done`)
		if err != nil {
			t.Fatal(err)
		}
		ps.Add(p)
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		cpu, err := ps.StopAll(time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(cpu) != 1 || cpu["busy"] <= 0 || cpu["busy"] != p.CPU() {
			t.Errorf("CPU = %v (proc %v), want busy > 0 and equal", cpu, p.CPU())
		}
	})

	t.Run("SIGTERM ignored: SIGKILL after grace; Procs stops the group", func(t *testing.T) {
		var ps Procs
		p, err := StartProc("stubborn", h.NS, filepath.Join(dir, "st.log"), nil, "up",
			"sh", "-c", `trap "" TERM; echo up; sleep 300 & wait`)
		if err != nil {
			t.Fatal(err)
		}
		ps.Add(p)
		if err := p.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := ps.StopAll(300 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		out, _ := run(ctx, "ip", "netns", "pids", h.NS)
		if s := strings.TrimSpace(string(out)); s != "" {
			t.Errorf("processes left in %s: %s", h.NS, s)
		}
	})
}

// TestProcOutput: Output holds the first lines and the last ones, each line
// once, with "..." where lines were left out.
func TestProcOutput(t *testing.T) {
	for _, tc := range []struct {
		lines int
		want  string
	}{
		{2, "l1 l2"},
		{20, "l1 … l20"},
		{21, "l1 l2 … l21"},
		{23, "l1 l2 l3 l4 … l23"},
		{24, "l1 l2 l3 ... l5 … l24"},
		{60, "l1 l2 l3 ... l41 … l60"},
	} {
		p := &Proc{}
		for i := 1; i <= tc.lines; i++ {
			p.record(fmt.Sprintf("l%d", i))
		}
		got := strings.Fields(p.Output())
		want := strings.Fields(tc.want)
		// "…" stands for the consecutive lines between its neighbours.
		var expanded []string
		for i, w := range want {
			if w != "…" {
				expanded = append(expanded, w)
				continue
			}
			var a, b int
			fmt.Sscanf(want[i-1], "l%d", &a)
			fmt.Sscanf(want[i+1], "l%d", &b)
			for k := a + 1; k < b; k++ {
				expanded = append(expanded, fmt.Sprintf("l%d", k))
			}
		}
		if strings.Join(got, " ") != strings.Join(expanded, " ") {
			t.Errorf("%d lines: Output = %q, want %q", tc.lines, got, expanded)
		}
	}
}
