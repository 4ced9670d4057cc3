package flow

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The disk rule (--disk-backoff PERCENT): the utilisation of the disk
// under the block store, Δio_ticks / Δtime from /proc/diskstats (the share
// of time the device had I/O in flight), decides the pace of background
// writes (preheats): at or above the threshold the background rate halves
// (from what dfly actually wrote, down to a floor, so the work still
// completes); below the threshold minus a hysteresis it grows by a quarter
// per second until it no longer limits anything. Foreground work (dfget,
// the mirror, readers) is never slowed by it.

// Device names a block device by its numbers.
type Device struct {
	Major, Minor uint32
	Name         string // as in /proc/diskstats, e.g. "vda"
}

func (d Device) String() string { return fmt.Sprintf("%s (%d:%d)", d.Name, d.Major, d.Minor) }

// ErrNoDisk: the store is not on a block device with I/O statistics.
var ErrNoDisk = errors.New("no block device with I/O statistics")

// StoreDisk finds the disk holding dir: the device of dir's st_dev, or the
// whole disk when that is a partition (SYS/dev/block/MAJ:MIN/partition
// exists; the disk is its parent in sysfs). Device-mapper and md devices
// are used as they are (they keep their own statistics).
func StoreDisk(sys, dir string) (Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return Device{}, fmt.Errorf("find the disk of %s: %w", dir, err)
	}
	maj, mnr := unix.Major(st.Dev), unix.Minor(st.Dev)
	if maj == 0 {
		return Device{}, fmt.Errorf("%s is on device %d:%d, a filesystem without a block device of its own (overlay, tmpfs, btrfs, NFS): %w", dir, maj, mnr, ErrNoDisk)
	}
	return sysfsDisk(sys, maj, mnr)
}

// sysfsDisk resolves MAJ:MIN through SYS/dev/block to its disk.
func sysfsDisk(sys string, maj, mnr uint32) (Device, error) {
	link := filepath.Join(sys, "dev", "block", fmt.Sprintf("%d:%d", maj, mnr))
	target, err := filepath.EvalSymlinks(link)
	if err != nil {
		return Device{}, fmt.Errorf("device %d:%d is not in %s: %w", maj, mnr, filepath.Dir(link), errors.Join(ErrNoDisk, err))
	}
	if _, err := os.Stat(filepath.Join(target, "partition")); err == nil {
		parent := filepath.Dir(target)
		b, err := os.ReadFile(filepath.Join(parent, "dev"))
		if err != nil {
			return Device{}, fmt.Errorf("the disk of partition %d:%d: %w", maj, mnr, errors.Join(ErrNoDisk, err))
		}
		pmaj, pmin, ok := parseMajMin(strings.TrimSpace(string(b)))
		if !ok {
			return Device{}, fmt.Errorf("the disk of partition %d:%d: bad %s: %q: %w", maj, mnr, filepath.Join(parent, "dev"), b, ErrNoDisk)
		}
		return Device{Major: pmaj, Minor: pmin, Name: filepath.Base(parent)}, nil
	}
	return Device{Major: maj, Minor: mnr, Name: filepath.Base(target)}, nil
}

func parseMajMin(s string) (uint32, uint32, bool) {
	a, b, ok := strings.Cut(s, ":")
	maj, err1 := strconv.ParseUint(a, 10, 32)
	mnr, err2 := strconv.ParseUint(b, 10, 32)
	return uint32(maj), uint32(mnr), ok && err1 == nil && err2 == nil
}

// DiskTicks returns the io_ticks (milliseconds spent with I/O in flight) of
// device maj:min in the text of /proc/diskstats: "major minor name" then
// the statistics, of which io_ticks is the tenth. Malformed lines are
// skipped; false when the device is not listed.
func DiskTicks(diskstats []byte, maj, mnr uint32) (uint64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(diskstats))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 13 {
			continue
		}
		ma, err1 := strconv.ParseUint(f[0], 10, 32)
		mi, err2 := strconv.ParseUint(f[1], 10, 32)
		if err1 != nil || err2 != nil || uint32(ma) != maj || uint32(mi) != mnr {
			continue
		}
		ticks, err := strconv.ParseUint(f[12], 10, 64)
		if err != nil {
			continue
		}
		return ticks, true
	}
	return 0, false
}

// DiskParams tune DecideDisk. Rates are bytes/s.
type DiskParams struct {
	// Threshold is the utilisation (0..1) at which background writes back off.
	Threshold float64
	// Hysteresis: they speed up again only below Threshold − Hysteresis.
	Hysteresis float64
	// Floor is the background rate they never go below (they complete).
	Floor float64
	// Growth is the share by which the background rate grows per second
	// while the disk is not busy.
	Growth float64
	// Max: a background rate grown past it is no limit any more.
	Max float64
}

// DefaultDiskParams returns the defaults for a threshold of percent.
func DefaultDiskParams(percent int) DiskParams {
	return DiskParams{Threshold: float64(percent) / 100, Hysteresis: 0.1, Floor: 1 << 20, Growth: 0.25, Max: 1 << 30}
}

// DiskSample is one reading: the disk's io_ticks and the bytes dfly wrote
// so far (its downloads' bytes).
type DiskSample struct {
	At      time.Time
	IOTicks uint64 // milliseconds
	Written uint64
}

// DiskState is what DecideDisk carries from one sample to the next.
type DiskState struct {
	Last        DiskSample
	Started     bool
	Utilisation float64 // of the last interval, 0..1
	Busy        bool    // the last interval was at or above the threshold
	// Background is the rate background writes may use; 0 = unlimited.
	Background int64
}

// DecideDisk folds one sample into the state; the new state's Background
// is the background rate to apply. It does no I/O.
func DecideDisk(p DiskParams, st DiskState, s DiskSample) DiskState {
	if !st.Started {
		st.Last, st.Started = s, true
		return st
	}
	dt := s.At.Sub(st.Last.At).Seconds()
	if dt <= 0 {
		return st
	}
	if s.IOTicks < st.Last.IOTicks || s.Written < st.Last.Written {
		st.Last = s // the device was re-created, or a counter reset: start over
		return st
	}
	util := min(float64(s.IOTicks-st.Last.IOTicks)/(dt*1000), 1)
	written := float64(s.Written-st.Last.Written) / dt
	st.Utilisation, st.Last = util, s
	st.Busy = util >= p.Threshold
	switch {
	case st.Busy:
		base := float64(st.Background)
		if base == 0 || written < base {
			base = written // halve what dfly actually writes, not an allowance it does not use
		}
		st.Background = int64(math.Round(max(base/2, p.Floor)))
	case st.Background > 0 && util < p.Threshold-p.Hysteresis:
		next := float64(st.Background) * math.Pow(1+p.Growth, dt)
		if next > p.Max {
			next = 0
		}
		st.Background = int64(math.Round(next))
	}
	return st
}
