package flow

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Mode is dfdaemon's --flow.
type Mode int

const (
	// Fixed: only the fixed limits (--download-rate, --upload-rate).
	Fixed Mode = iota
	// Auto: dfly gets what the host's own traffic leaves under the ceiling.
	Auto
)

func (m Mode) String() string {
	if m == Auto {
		return "auto"
	}
	return "fixed"
}

// ParseMode parses "fixed" or "auto".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "fixed", "":
		return Fixed, nil
	case "auto":
		return Auto, nil
	}
	return Fixed, fmt.Errorf("invalid flow mode %q: want fixed or auto", s)
}

// Options configure a Controller (dfdaemon's --flow, --flow-ceiling,
// --flow-iface, --disk-backoff). Rates are bytes/s.
type Options struct {
	Mode Mode
	// Iface is the interface to watch; "" = the one of the route to Target,
	// else of the default route.
	Iface string
	// Target is the address ("HOST:PORT" or "HOST") whose route picks the
	// interface: the supernode's.
	Target string
	// CeilingDown, CeilingUp cap dfly plus the host's own traffic, in wire
	// bytes/s; 0 = the interface's speed, else FixedDown/FixedUp; with
	// neither, New refuses Auto.
	CeilingDown, CeilingUp int64
	// FixedDown, FixedUp are --download-rate and --upload-rate (0 = none):
	// the controller never gives dfly more.
	FixedDown, FixedUp int64
	// DownloadOnly leaves the upload direction alone (a daemon without an
	// upload server: origin mode); it needs no upload ceiling.
	DownloadOnly bool
	// DiskBackoff is the disk utilisation, in percent, at which background
	// writes back off; 0 = off.
	DiskBackoff int
	// StoreDir is the block store directory (its disk is watched).
	StoreDir string
	// Interval between samples of the interface (default 200ms) and of the
	// disk (DiskInterval, default 1s).
	Interval, DiskInterval time.Duration
	// Sys and Proc are where sysfs and procfs are ("/sys", "/proc"; tests
	// point them at fakes).
	Sys, Proc string
	// Params tune the network rule (zero: DefaultParams); the ceilings and
	// caps in it are set by New from the fields above.
	Params Params
	// Disk tunes the disk rule (zero: DefaultDiskParams(DiskBackoff)).
	Disk   DiskParams
	Logger *slog.Logger
}

// Active reports whether the options ask for any flow control.
func (o Options) Active() bool { return o.Mode == Auto || o.DiskBackoff > 0 }

// Hooks connect a Controller to the daemon it controls.
type Hooks struct {
	// Own returns dfly's cumulative bytes: Rx received by its downloads,
	// Tx sent by its upload server. Required with Auto and DiskBackoff.
	Own func() Counters
	// SetLimits applies new download and upload limits (payload bytes/s,
	// 0 = unlimited). Called by Run only, with Auto.
	SetLimits func(down, up int64)
	// SetBackground applies the rate of background writes (bytes/s, 0 =
	// unlimited). Called by Run only, with DiskBackoff.
	SetBackground func(bps int64)
}

// Status is the controller's state, for dfdaemon's /v1/stats. Rates are bytes/s.
type Status struct {
	Mode     string      `json:"mode"`
	Iface    string      `json:"iface,omitempty"`
	Download *DirStatus  `json:"download,omitempty"`
	Upload   *DirStatus  `json:"upload,omitempty"`
	Disk     *DiskStatus `json:"disk,omitempty"`
	// Skipped counts intervals ignored because a counter reset or jumped.
	Skipped int `json:"skipped_intervals,omitempty"`
}

// DirStatus is one direction of the network rule.
type DirStatus struct {
	Ceiling int64 `json:"ceiling_bytes_per_second"`
	Others  int64 `json:"others_bytes_per_second"`  // the host's own traffic (estimate)
	Own     int64 `json:"own_bytes_per_second"`     // dfly's (smoothed)
	Allowed int64 `json:"allowed_bytes_per_second"` // dfly's limit now
}

// DiskStatus is the disk rule's state.
type DiskStatus struct {
	Device      string  `json:"device"`
	Threshold   int     `json:"threshold_percent"`
	Utilisation float64 `json:"utilisation"`
	Busy        bool    `json:"busy"`
	Background  int64   `json:"background_bytes_per_second"` // 0 = unlimited
}

// Controller samples the interface and the disk and applies the rules'
// limits through Hooks. Its owner runs Run in one goroutine and stops it
// by cancelling Run's context.
type Controller struct {
	opt   Options
	hooks Hooks
	log   *slog.Logger
	disk  Device

	mu     sync.Mutex
	net    State
	dstate DiskState
	// nicErr, diskErr: the last read failed (logged once until it works again).
	nicErr, diskErr bool
}

// New resolves the interface, the ceilings and the disk, and returns a
// controller, or an error saying which option is missing.
func New(ctx context.Context, opt Options, h Hooks) (*Controller, error) {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Sys == "" {
		opt.Sys = "/sys"
	}
	if opt.Proc == "" {
		opt.Proc = "/proc"
	}
	if opt.Interval <= 0 {
		opt.Interval = 200 * time.Millisecond
	}
	if opt.DiskInterval <= 0 {
		opt.DiskInterval = time.Second
	}
	if opt.DiskBackoff < 0 || opt.DiskBackoff > 100 {
		return nil, fmt.Errorf("disk backoff %d%%: want a percentage from 0 (off) to 100", opt.DiskBackoff)
	}
	if h.Own == nil {
		h.Own = func() Counters { return Counters{} }
	}
	c := &Controller{opt: opt, hooks: h, log: opt.Logger.With("component", "flow")}
	if opt.Mode == Auto {
		if err := c.resolveNIC(ctx); err != nil {
			return nil, fmt.Errorf("--flow auto: %w", err)
		}
		c.net = Initial(c.opt.Params)
	}
	if opt.DiskBackoff > 0 {
		d, err := StoreDisk(opt.Sys, opt.StoreDir)
		if err == nil {
			_, err = c.readDisk(d)
		}
		if err != nil {
			return nil, fmt.Errorf("--disk-backoff: %w (pass --disk-backoff 0 to run without it)", err)
		}
		c.disk = d
		if c.opt.Disk == (DiskParams{}) {
			c.opt.Disk = DefaultDiskParams(opt.DiskBackoff)
		}
	}
	return c, nil
}

// resolveNIC picks the interface and the ceilings.
func (c *Controller) resolveNIC(ctx context.Context) error {
	o := &c.opt
	if o.Iface == "" {
		iface, err := c.routeIface(ctx)
		if err != nil {
			return fmt.Errorf("%w; pass --flow-iface NAME", err)
		}
		o.Iface = iface
	}
	if _, err := ReadNIC(o.Sys, o.Iface); err != nil {
		return fmt.Errorf("%w (is --flow-iface right?)", err)
	}
	speed := LinkSpeed(o.Sys, o.Iface)
	pick := func(ceiling, fixed int64, dir, flag string) (int64, error) {
		switch {
		case ceiling > 0:
			return ceiling, nil
		case speed > 0:
			return speed, nil
		case fixed > 0:
			return fixed, nil
		}
		return 0, fmt.Errorf("the speed of interface %s is unknown, so the %s ceiling is too: pass --flow-ceiling RATE (e.g. 100mbit; DOWN,UP for two) or %s", o.Iface, dir, flag)
	}
	down, err := pick(o.CeilingDown, o.FixedDown, "download", "--download-rate")
	if err != nil {
		return err
	}
	up := int64(0)
	if !o.DownloadOnly {
		if up, err = pick(o.CeilingUp, o.FixedUp, "upload", "--upload-rate"); err != nil {
			return err
		}
	}
	o.CeilingDown, o.CeilingUp = down, up
	o.Params.CeilingDown, o.Params.CeilingUp = float64(down), float64(up)
	o.Params.CapDown, o.Params.CapUp = float64(o.FixedDown), float64(o.FixedUp)
	return nil
}

// routeIface returns the interface of the route to Target, else of the default route.
func (c *Controller) routeIface(ctx context.Context) (string, error) {
	dst := c.targetAddr(ctx)
	table := "route"
	if dst.Is6() && !dst.Is4In6() {
		table = "ipv6_route"
	}
	b, err := os.ReadFile(filepath.Join(c.opt.Proc, "net", table))
	if err == nil {
		var iface string
		if iface, err = RouteIface(b, dst); err == nil {
			return iface, nil
		}
	}
	if dst.IsValid() && !dst.Is4() { // try the default IPv4 route
		if b, err4 := os.ReadFile(filepath.Join(c.opt.Proc, "net", "route")); err4 == nil {
			if iface, err4 := RouteIface(b, netip.Addr{}); err4 == nil {
				return iface, nil
			}
		}
	}
	return "", fmt.Errorf("no interface to watch: no route to %q and no default route: %w", c.opt.Target, err)
}

// targetAddr resolves Target to an address (invalid: none, or unresolvable).
func (c *Controller) targetAddr(ctx context.Context) netip.Addr {
	if c.opt.Target == "" {
		return netip.Addr{}
	}
	host := c.opt.Target
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		c.log.Warn("cannot resolve the supernode to pick the interface to watch; using the default route", "host", host, "err", err)
		return netip.Addr{}
	}
	return addrs[0]
}

func (c *Controller) readDisk(d Device) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(c.opt.Proc, "diskstats"))
	if err != nil {
		return 0, fmt.Errorf("read disk statistics: %w", err)
	}
	ticks, ok := DiskTicks(b, d.Major, d.Minor)
	if !ok {
		return 0, fmt.Errorf("disk %s is not in %s: %w", d, filepath.Join(c.opt.Proc, "diskstats"), ErrNoDisk)
	}
	return ticks, nil
}

// Iface is the watched interface ("" without Auto).
func (c *Controller) Iface() string { return c.opt.Iface }

// Ceilings are the resolved ceilings, bytes/s (0 without Auto).
func (c *Controller) Ceilings() (down, up int64) {
	if c.opt.Mode != Auto {
		return 0, 0
	}
	return c.opt.CeilingDown, c.opt.CeilingUp
}

// Run samples and applies limits until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	auto, disk := c.opt.Mode == Auto, c.opt.DiskBackoff > 0
	if auto {
		c.log.Info("flow control on", "iface", c.opt.Iface, "ceiling_down", c.opt.CeilingDown, "ceiling_up", c.opt.CeilingUp,
			"cap_down", c.opt.FixedDown, "cap_up", c.opt.FixedUp)
		c.mu.Lock()
		st := c.net
		c.mu.Unlock()
		c.apply(st)
		c.sampleNIC(time.Now())
	}
	if disk {
		c.log.Info("disk backoff on", "disk", c.disk.String(), "threshold_percent", c.opt.DiskBackoff)
		c.sampleDisk(time.Now())
	}
	tick := time.NewTicker(c.opt.Interval)
	defer tick.Stop()
	nextDisk := time.Now().Add(c.opt.DiskInterval)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if auto {
				c.sampleNIC(now)
			}
			if disk && !now.Before(nextDisk) {
				nextDisk = now.Add(c.opt.DiskInterval)
				c.sampleDisk(now)
			}
		}
	}
}

// sampleNIC takes one sample and applies the limits if they changed.
func (c *Controller) sampleNIC(now time.Time) {
	nic, err := ReadNIC(c.opt.Sys, c.opt.Iface)
	c.mu.Lock()
	if err != nil {
		// The interface went away (or is being replaced): keep the limits;
		// the next readable sample starts a new interval.
		if !c.nicErr {
			c.log.Warn("flow control: cannot read the interface; keeping the current limits", "err", err)
		}
		c.net.Started, c.nicErr = false, true
		c.mu.Unlock()
		return
	}
	if c.nicErr {
		c.log.Info("flow control: the interface is readable again", "iface", c.opt.Iface)
		c.nicErr = false
	}
	prev := c.net
	c.net = Decide(c.opt.Params, c.net, Sample{At: now, NIC: nic, Dfly: c.hooks.Own()})
	st := c.net
	c.mu.Unlock()
	if st.Down.Limit != prev.Down.Limit || st.Up.Limit != prev.Up.Limit {
		c.apply(st)
	}
	if st.Skipped > prev.Skipped {
		c.log.Info("flow control: interface counters reset or jumped; interval ignored", "iface", c.opt.Iface)
	}
}

func (c *Controller) apply(st State) {
	if c.hooks.SetLimits != nil {
		c.hooks.SetLimits(st.Down.Limit, st.Up.Limit)
	}
}

// sampleDisk takes one disk sample and applies the background rate if it changed.
func (c *Controller) sampleDisk(now time.Time) {
	ticks, err := c.readDisk(c.disk)
	c.mu.Lock()
	if err != nil {
		if !c.diskErr {
			c.log.Warn("disk backoff: cannot read the disk's statistics; keeping the current background rate", "err", err)
		}
		c.dstate.Started, c.diskErr = false, true
		c.mu.Unlock()
		return
	}
	if c.diskErr {
		c.log.Info("disk backoff: the disk's statistics are readable again", "disk", c.disk.Name)
		c.diskErr = false
	}
	prev := c.dstate
	c.dstate = DecideDisk(c.opt.Disk, c.dstate, DiskSample{At: now, IOTicks: ticks, Written: c.hooks.Own().Rx})
	st := c.dstate
	c.mu.Unlock()
	if st.Background != prev.Background {
		if st.Busy != prev.Busy {
			c.log.Info("disk backoff", "disk", c.disk.Name, "busy", st.Busy, "utilisation", fmt.Sprintf("%.0f%%", st.Utilisation*100), "background_bytes_per_second", st.Background)
		}
		if c.hooks.SetBackground != nil {
			c.hooks.SetBackground(st.Background)
		}
	}
}

// Status returns the controller's current state.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{Mode: c.opt.Mode.String()}
	if c.opt.Mode == Auto {
		s.Iface, s.Skipped = c.opt.Iface, c.net.Skipped
		dir := func(d Dir, ceiling int64) *DirStatus {
			return &DirStatus{Ceiling: ceiling, Others: int64(max(d.Others, 0)), Own: int64(d.Own), Allowed: d.Limit}
		}
		s.Download = dir(c.net.Down, c.opt.CeilingDown)
		if !c.opt.DownloadOnly {
			s.Upload = dir(c.net.Up, c.opt.CeilingUp)
		}
	}
	if c.opt.DiskBackoff > 0 {
		s.Disk = &DiskStatus{Device: c.disk.Name, Threshold: c.opt.DiskBackoff, Utilisation: c.dstate.Utilisation,
			Busy: c.dstate.Busy, Background: c.dstate.Background}
	}
	return s
}
