package flow

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"fixed": Fixed, "": Fixed, "auto": Auto} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseMode("Auto!"); err == nil {
		t.Error("ParseMode accepted a bad mode")
	}
	if (Options{}).Active() || !(Options{Mode: Auto}).Active() || !(Options{DiskBackoff: 80}).Active() {
		t.Error("Active is wrong")
	}
}

// fakeProc writes PROC/net/route with eth0 as the default route and eth1
// for 10.77.0.0/16.
func fakeProc(t *testing.T) string {
	t.Helper()
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "net", "route"), []byte(route4), 0o644); err != nil {
		t.Fatal(err)
	}
	return proc
}

func TestNewResolves(t *testing.T) {
	sys, proc := t.TempDir(), fakeProc(t)
	fakeNIC(t, sys, "eth0", 0, 0, "1000")
	fakeNIC(t, sys, "eth1", 0, 0, "-1")
	fakeNIC(t, sys, "tun0", 0, 0, "")
	for _, c := range []struct {
		name     string
		opt      Options
		iface    string
		down, up int64
		err      string
	}{
		{name: "default route and its speed", opt: Options{Mode: Auto},
			iface: "eth0", down: 125_000_000, up: 125_000_000},
		{name: "the supernode's route", opt: Options{Mode: Auto, Target: "10.77.1.9:8002", CeilingDown: 5e6, CeilingUp: 1e6},
			iface: "tun0", down: 5e6, up: 1e6},
		{name: "unresolvable supernode: default route", opt: Options{Mode: Auto, Target: "no-such-host.invalid:8002"},
			iface: "eth0", down: 125_000_000, up: 125_000_000},
		{name: "unknown speed: the fixed limits", opt: Options{Mode: Auto, Iface: "eth1", FixedDown: 3e6, FixedUp: 2e6},
			iface: "eth1", down: 3e6, up: 2e6},
		{name: "unknown speed, no limit: refused", opt: Options{Mode: Auto, Iface: "eth1", FixedDown: 3e6},
			err: "the speed of interface eth1 is unknown, so the upload ceiling is too: pass --flow-ceiling"},
		{name: "download only needs no upload ceiling", opt: Options{Mode: Auto, Iface: "eth1", FixedDown: 3e6, DownloadOnly: true},
			iface: "eth1", down: 3e6, up: 0},
		{name: "explicit ceiling over the speed", opt: Options{Mode: Auto, Iface: "eth0", CeilingDown: 2e6, CeilingUp: 2e6},
			iface: "eth0", down: 2e6, up: 2e6},
		{name: "missing interface", opt: Options{Mode: Auto, Iface: "eth7"}, err: "is --flow-iface right?"},
		{name: "bad disk backoff", opt: Options{DiskBackoff: 120}, err: "want a percentage from 0 (off) to 100"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.opt.Sys, c.opt.Proc = sys, proc
			ctl, err := New(context.Background(), c.opt, Hooks{})
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("New = %v, want an error with %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ctl.Iface() != c.iface || ctl.opt.CeilingDown != c.down || ctl.opt.CeilingUp != c.up {
				t.Fatalf("iface %s ceilings %d/%d, want %s %d/%d", ctl.Iface(), ctl.opt.CeilingDown, ctl.opt.CeilingUp, c.iface, c.down, c.up)
			}
		})
	}
	t.Run("no routing table", func(t *testing.T) {
		_, err := New(context.Background(), Options{Mode: Auto, Sys: sys, Proc: t.TempDir()}, Hooks{})
		if err == nil || !strings.Contains(err.Error(), "pass --flow-iface NAME") {
			t.Fatalf("New = %v, want a hint at --flow-iface", err)
		}
	})
}

// fakeDisk makes a fake sysfs and procfs in which dir's device is a disk
// named "fakedisk", and returns the path of the diskstats file.
func fakeDisk(t *testing.T, sys, proc, dir string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	if unix.Major(st.Dev) == 0 {
		t.Skipf("the test directory %s is on a filesystem without a block device (device 0:%d), so it has no disk to fake", dir, unix.Minor(st.Dev))
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	d := filepath.Join(sys, "devices", "fakedisk")
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(sys, "dev", "block"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(d, filepath.Join(sys, "dev", "block", dev)); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(proc, "diskstats")
}

func writeDiskstats(t *testing.T, path, dir string, ticks uint64) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Error(err)
		return
	}
	line := fmt.Sprintf("%4d %7d fakedisk 1 0 8 1 1 0 8 1 0 %d %d\n", unix.Major(st.Dev), unix.Minor(st.Dev), ticks, ticks)
	if err := os.WriteFile(path+".tmp", []byte(line), 0o644); err != nil {
		t.Error(err)
		return
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Error(err)
	}
}

func TestNewDisk(t *testing.T) {
	sys, proc, store := t.TempDir(), t.TempDir(), t.TempDir()
	_, err := New(context.Background(), Options{DiskBackoff: 80, StoreDir: store, Sys: sys, Proc: proc}, Hooks{})
	if err == nil || !strings.Contains(err.Error(), "pass --disk-backoff 0") {
		t.Fatalf("no such disk: New = %v, want an error pointing at --disk-backoff 0", err)
	}
	stats := fakeDisk(t, sys, proc, store)
	_, err = New(context.Background(), Options{DiskBackoff: 80, StoreDir: store, Sys: sys, Proc: proc}, Hooks{})
	if err == nil || !strings.Contains(err.Error(), "read disk statistics") {
		t.Fatalf("no diskstats: New = %v", err)
	}
	writeDiskstats(t, stats, store, 5)
	ctl, err := New(context.Background(), Options{DiskBackoff: 80, StoreDir: store, Sys: sys, Proc: proc}, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if s := ctl.Status(); s.Mode != "fixed" || s.Download != nil || s.Disk == nil || s.Disk.Device != "fakedisk" || s.Disk.Threshold != 80 {
		t.Fatalf("status %+v (disk %+v)", s, s.Disk)
	}
}

// writeCounter replaces a fake counter file atomically.
func writeCounter(t *testing.T, path string, v uint64) {
	if err := os.WriteFile(path+".tmp", []byte(fmt.Sprintf("%d\n", v)), 0o644); err != nil {
		t.Error(err)
		return
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Error(err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunAppliesLimits runs the loop on fake kernel files: an idle link
// gives dfly the ceiling (less headroom), a flood of the host's own
// traffic pushes it to the floor, a busy disk slows background writes to
// their floor, and a vanished interface keeps the limits.
func TestRunAppliesLimits(t *testing.T) {
	sys, proc, store := t.TempDir(), fakeProc(t), t.TempDir()
	fakeNIC(t, sys, "eth0", 0, 0, "40") // 40 Mbit/s: 5 MB/s
	stats := fakeDisk(t, sys, proc, store)
	writeDiskstats(t, stats, store, 0)

	var down, up, bg atomic.Int64
	var mu sync.Mutex
	var bgSeen []int64
	ctl, err := New(context.Background(), Options{Mode: Auto, DiskBackoff: 80, StoreDir: store, Sys: sys, Proc: proc,
		Interval: 10 * time.Millisecond, DiskInterval: 100 * time.Millisecond,
		Params: Params{Window: 100 * time.Millisecond, TauFall: 50 * time.Millisecond, RampUp: 5}}, Hooks{
		SetLimits: func(d, u int64) { down.Store(d); up.Store(u) },
		SetBackground: func(b int64) {
			bg.Store(b)
			mu.Lock()
			bgSeen = append(bgSeen, b)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ctl.Run(ctx) }()
	defer func() { cancel(); <-done }()

	idle := idleLim
	eventually(t, "an idle link gives dfly the ceiling less the headroom", func() bool {
		return near(down.Load(), idle, 0.01) && near(up.Load(), idle, 0.01)
	})

	// The host floods its download direction (20 times the ceiling) and
	// its disk (io_ticks twice as fast as the clock: 100% busy).
	flood, stop := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(flood)
		start := time.Now()
		rxPath := filepath.Join(sys, "class/net/eth0/statistics/rx_bytes")
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			el := time.Since(start)
			writeCounter(t, rxPath, uint64(el.Seconds()*100e6))
			writeDiskstats(t, stats, store, uint64(2*el.Milliseconds()))
		}
	}()
	eventually(t, "the host's flood pushes dfly's download to the floor", func() bool { return down.Load() == 1<<20 })
	eventually(t, "the busy disk slows background writes to their floor", func() bool { return bg.Load() == 1<<20 })
	if u := up.Load(); !near(u, idle, 0.01) {
		t.Errorf("the upload limit moved to %d with no upload traffic", u)
	}
	eventually(t, "the status shows the flood and the busy disk", func() bool {
		s := ctl.Status()
		return s.Mode == "auto" && s.Iface == "eth0" && s.Download != nil && s.Download.Ceiling == 5e6 && s.Download.Others >= 5e6 &&
			s.Download.Allowed == 1<<20 && s.Disk != nil && s.Disk.Busy && s.Disk.Device == "fakedisk"
	})
	close(stop)
	<-flood

	// The interface vanishes: the limits stay as they were.
	if err := os.RemoveAll(filepath.Join(sys, "class/net/eth0")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // a sample read before the removal may still apply
	kept := down.Load()
	time.Sleep(200 * time.Millisecond)
	if d := down.Load(); d != kept {
		t.Fatalf("after the interface vanished the limit moved from %d to %d, want it kept", kept, d)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, b := range bgSeen {
		if b != 0 && b < 1<<20 {
			t.Fatalf("background rates %v went below the floor", bgSeen)
		}
	}
}
