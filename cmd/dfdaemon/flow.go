package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/internal/flow"
)

// flowFlags are the flow-control flags (docs/flow.md).
type flowFlags struct {
	mode, ceiling, iface string
	diskBackoff          int
}

func addFlowFlags(fs *pflag.FlagSet) *flowFlags {
	f := &flowFlags{}
	fs.StringVar(&f.mode, "flow", "fixed", "flow control: fixed (only --download-rate and --upload-rate) or auto (dfly takes only what the host's own traffic, read from the interface's counters, leaves under --flow-ceiling; see docs/flow.md)")
	fs.StringVar(&f.ceiling, "flow-ceiling", "", "with --flow auto: what dfly and the host's own traffic together stay under, RATE or DOWN,UP, in bits (100mbit, 1gbit) or bytes/s (12M) (default: the interface's speed, else --download-rate and --upload-rate)")
	fs.StringVar(&f.iface, "flow-iface", "", "with --flow auto: the network interface to watch (default: the one of the route to --supernode, else of the default route)")
	fs.IntVar(&f.diskBackoff, "disk-backoff", 0, "slow down background writes (preheats) while the disk under --store is busy more than this percentage of the time (/proc/diskstats), e.g. 80; 0 = off")
	return f
}

// options turns the flags into flow.Options (the daemon fills the rest).
func (f *flowFlags) options() (flow.Options, error) {
	var o flow.Options
	var err error
	if o.Mode, err = flow.ParseMode(f.mode); err != nil {
		return o, fmt.Errorf("--flow: %w", err)
	}
	if o.Mode != flow.Auto && (f.ceiling != "" || f.iface != "") {
		return o, errors.New("--flow-ceiling and --flow-iface need --flow auto")
	}
	if f.ceiling != "" {
		if o.CeilingDown, o.CeilingUp, err = parseCeiling(f.ceiling); err != nil {
			return o, fmt.Errorf("--flow-ceiling: %w", err)
		}
	}
	if f.diskBackoff < 0 || f.diskBackoff > 100 {
		return o, fmt.Errorf("--disk-backoff %d: want a percentage from 0 (off) to 100", f.diskBackoff)
	}
	o.Iface, o.DiskBackoff = f.iface, f.diskBackoff
	return o, nil
}

// parseCeiling parses "RATE" (both directions) or "DOWN,UP"; a rate is in
// bits ("100mbit") or, like --download-rate, bytes/s ("12M").
func parseCeiling(s string) (down, up int64, err error) {
	parts := strings.Split(s, ",")
	if len(parts) > 2 {
		return 0, 0, fmt.Errorf("%q: want RATE or DOWN,UP", s)
	}
	rates := make([]int64, len(parts))
	for i, p := range parts {
		v, ok, err := flow.ParseBitRate(p)
		if !ok {
			v, err = cli.ParseSize(p)
		}
		if err != nil {
			return 0, 0, err
		}
		if v <= 0 {
			return 0, 0, fmt.Errorf("%q: a ceiling must be above 0", p)
		}
		rates[i] = v
	}
	if len(rates) == 1 {
		return rates[0], rates[0], nil
	}
	return rates[0], rates[1], nil
}
