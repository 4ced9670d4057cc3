package flow

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const diskstats = `   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 582403 66028 203144322 428300 1156765 557776 506428176 2479549 0 610456 3289185 682025 82 528359728 219476 216743 161857
 254       1 vda1 1000 0 2000 30 4000 0 8000 90 0 1234 120
 253       0 dm-0 1 2 3 4 5 6 7 8 9 777 11
 259       3 nvme0n1 1 2 3 4 5 6 7 8 9 notanumber 11
   8       0 sda 1 2 3
garbage line
`

func TestDiskTicks(t *testing.T) {
	for _, c := range []struct {
		name     string
		maj, min uint32
		want     uint64
		ok       bool
	}{
		{"kernel 6 line with discard and flush fields", 254, 0, 610456, true},
		{"partition line of the 2.6 format", 254, 1, 1234, true},
		{"device mapper", 253, 0, 777, true},
		{"idle loop device", 7, 0, 0, true},
		{"unparsable io_ticks", 259, 3, 0, false},
		{"truncated line", 8, 0, 0, false},
		{"absent device", 9, 9, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ok := DiskTicks([]byte(diskstats), c.maj, c.min)
			if got != c.want || ok != c.ok {
				t.Fatalf("DiskTicks(%d:%d) = %d, %v; want %d, %v", c.maj, c.min, got, ok, c.want, c.ok)
			}
		})
	}
}

// fakeSysfs makes SYS/dev/block links like the kernel's: a disk vda
// (254:0) with a partition vda1 (254:1), and dm-0 (253:0).
func fakeSysfs(t *testing.T) string {
	t.Helper()
	sys := t.TempDir()
	mk := func(dir, dev string, partition bool) {
		d := filepath.Join(sys, dir)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "dev"), []byte(dev+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if partition {
			if err := os.WriteFile(filepath.Join(d, "partition"), []byte("1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		link := filepath.Join(sys, "dev", "block", dev)
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			t.Fatal(err)
		}
		rel, err := filepath.Rel(filepath.Dir(link), d)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(rel, link); err != nil {
			t.Fatal(err)
		}
	}
	mk("devices/pci0000:00/virtio1/block/vda", "254:0", false)
	mk("devices/pci0000:00/virtio1/block/vda/vda1", "254:1", true)
	mk("devices/virtual/block/dm-0", "253:0", false)
	return sys
}

func TestSysfsDisk(t *testing.T) {
	sys := fakeSysfs(t)
	for _, c := range []struct {
		name     string
		maj, min uint32
		want     Device
		err      error
	}{
		{"whole disk", 254, 0, Device{254, 0, "vda"}, nil},
		{"partition: its disk", 254, 1, Device{254, 0, "vda"}, nil},
		{"device mapper as it is", 253, 0, Device{253, 0, "dm-0"}, nil},
		{"unknown device", 8, 16, Device{}, ErrNoDisk},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := sysfsDisk(sys, c.maj, c.min)
			if !errors.Is(err, c.err) || got != c.want {
				t.Fatalf("sysfsDisk(%d:%d) = %v, %v; want %v, %v", c.maj, c.min, got, err, c.want, c.err)
			}
		})
	}
}

func TestStoreDiskOfThisMachine(t *testing.T) {
	dir := t.TempDir()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	d, err := StoreDisk("/sys", dir)
	if unix.Major(st.Dev) == 0 {
		if !errors.Is(err, ErrNoDisk) {
			t.Fatalf("a directory on device 0:%d: StoreDisk = %v, %v; want ErrNoDisk", unix.Minor(st.Dev), d, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("StoreDisk(%s) on %d:%d: %v", dir, unix.Major(st.Dev), unix.Minor(st.Dev), err)
	}
	b, err := os.ReadFile("/proc/diskstats")
	if err != nil {
		t.Skipf("no /proc/diskstats on this machine: %v", err)
	}
	if _, ok := DiskTicks(b, d.Major, d.Minor); !ok {
		t.Fatalf("the store's disk %s is not in /proc/diskstats", d)
	}
}

func TestDecideDisk(t *testing.T) {
	p := DefaultDiskParams(80)
	t0 := time.Unix(500, 0)
	sample := func(sec float64, ticks, written uint64) DiskSample {
		return DiskSample{At: t0.Add(time.Duration(sec * float64(time.Second))), IOTicks: ticks, Written: written}
	}
	for _, c := range []struct {
		name   string
		start  int64 // background rate before (0 = unlimited)
		ticks  uint64
		wrote  uint64 // bytes dfly wrote in the 1 s interval
		want   int64
		busy   bool
		reason string
	}{
		{"idle disk, no limit", 0, 100, 50 << 20, 0, false, "below the threshold nothing is limited"},
		{"busy disk halves what dfly writes", 0, 900, 40 << 20, 20 << 20, true, "multiplicative back-off from the actual rate"},
		{"busy again halves the limit", 20 << 20, 950, 20 << 20, 10 << 20, true, "the limit halves once more"},
		{"busy with dfly idle: floor", 0, 1000, 0, 1 << 20, true, "the host's own I/O: background work starts at the floor"},
		{"busy, limit not used: halve what is written", 30 << 20, 850, 4 << 20, 2 << 20, true, "an unused allowance does not protect the disk"},
		{"at the floor stays there", 1 << 20, 990, 1 << 20, 1 << 20, true, "never below the floor: preheats complete"},
		{"hysteresis band holds", 10 << 20, 750, 10 << 20, 10 << 20, false, "between 70% and 80% the rate holds"},
		{"quiet disk grows a quarter a second", 8 << 20, 200, 8 << 20, 10 << 20, false, "slow ramp-up"},
		{"grown past the maximum: unlimited", 900 << 20, 10, 900 << 20, 0, false, "a limit above 1 GiB/s is dropped"},
		{"ticks beyond the interval count as 100%", 0, 5000, 8 << 20, 4 << 20, true, "utilisation is capped at 1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := DecideDisk(p, DiskState{Background: c.start}, sample(0, 1000, 1<<30))
			st = DecideDisk(p, st, sample(1, 1000+c.ticks, 1<<30+c.wrote))
			if st.Background != c.want || st.Busy != c.busy {
				t.Fatalf("background %d busy %v (util %.2f), want %d busy %v: %s", st.Background, st.Busy, st.Utilisation, c.want, c.busy, c.reason)
			}
		})
	}
	t.Run("counter reset restarts the interval", func(t *testing.T) {
		st := DecideDisk(p, DiskState{Background: 5 << 20}, sample(0, 1_000_000, 1<<30))
		st = DecideDisk(p, st, sample(1, 10, 1<<30))
		if st.Background != 5<<20 || st.Last.IOTicks != 10 {
			t.Fatalf("after a reset: %+v, want the rate kept and the new baseline", st)
		}
		st = DecideDisk(p, st, sample(2, 1010, 1<<30+(4<<20)))
		if st.Background != 2<<20 || !st.Busy {
			t.Fatalf("busy interval after the reset: %+v, want 2 MiB/s", st)
		}
	})
	t.Run("clock not advancing", func(t *testing.T) {
		st := DecideDisk(p, DiskState{}, sample(1, 0, 0))
		st2 := DecideDisk(p, st, sample(1, 1000, 0))
		if st2 != st {
			t.Fatalf("a repeated timestamp changed the state: %+v", st2)
		}
	})
}
