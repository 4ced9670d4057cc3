// Package prefetch fetches every missing block of a task in the background,
// throttled so that it never starves foreground reads, the network or the
// disk, and ends with a whole-content verification.
//
// It is shared by dfmount's single-file tree and the containerd snapshotter's
// eStargz layers: anything that satisfies Blocks (a *peer.Task does) can be
// prefetched.
package prefetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/peer"
)

// Blocks is the view of a task the prefetcher needs. *peer.Task satisfies it.
type Blocks interface {
	// Missing lists the blocks not yet stored, in ascending order.
	Missing() []int
	// Fetch makes sure block idx is stored and verified.
	Fetch(ctx context.Context, idx int, prio peer.Priority) error
	// ForegroundInFlight is the number of foreground reads in progress.
	ForegroundInFlight() int
	// Complete verifies the whole content and marks the task complete.
	Complete(ctx context.Context) (blockstore.Task, error)
	// Info returns the task's metadata (length, block size, digest, state).
	Info() blockstore.Task
}

// Order is the order in which missing blocks are fetched.
type Order int

const (
	// Sequential fetches from the start of the content to its end.
	Sequential Order = iota
	// Rarest fetches in the order Options.Rank returns (rarest first in a
	// swarm); without Rank it is Sequential.
	Rarest
)

// ParseOrder parses "sequential" or "rarest".
func ParseOrder(s string) (Order, error) {
	switch s {
	case "sequential", "":
		return Sequential, nil
	case "rarest":
		return Rarest, nil
	}
	return 0, fmt.Errorf("prefetch order %q: want sequential or rarest", s)
}

func (o Order) String() string {
	if o == Rarest {
		return "rarest"
	}
	return "sequential"
}

// Range is a byte range [Off, Off+Len) of the content.
type Range struct {
	Off, Len int64
}

// Options tune a Prefetcher. The zero value fetches sequentially with 4
// workers, unthrottled, pausing while foreground reads are in flight.
type Options struct {
	Order Order
	// Rank orders the missing blocks for Order == Rarest (e.g. the swarm's
	// rarest-first order). It may drop blocks; those are fetched last.
	Rank func(missing []int) []int
	// First are byte ranges whose blocks are fetched before any other, in
	// the given order (e.g. an eStargz layer's landmark range).
	First []Range
	// NetworkRate caps the bytes/s the prefetcher asks for (0 = unlimited).
	NetworkRate int64
	// NetworkLimiter, if set, is used instead of NetworkRate (shared between tasks).
	NetworkLimiter *rate.Limiter
	// DiskRate caps the bytes/s of blocks the prefetcher stores (0 = unlimited).
	// A block is only fetched once the limiter grants its length, so the
	// store's BytesWritten rate from background work stays within it.
	DiskRate int64
	// DiskLimiter, if set, is used instead of DiskRate: share one limiter
	// between the prefetchers of several tasks on one disk.
	DiskLimiter *rate.Limiter
	// Concurrency is the number of blocks fetched in parallel (default 4).
	Concurrency int
	// Quiet is how long foreground reads must have been absent before
	// background fetching resumes (default 200ms). Negative disables pausing.
	Quiet time.Duration
	// Retry is the first delay after a failed fetch; it doubles up to 30s (default 1s).
	Retry time.Duration
	// Logger receives progress and errors (default slog.Default()).
	Logger *slog.Logger
	// Name identifies the task in log lines and metrics (default the task ID).
	Name string
	// Metrics, if set, reports the run's progress (see Metrics).
	Metrics *Metrics
}

// State is where a prefetch run is.
type State string

// States of a run.
const (
	StateIdle      State = "idle"
	StateFetching  State = "fetching"
	StatePaused    State = "paused" // foreground reads in flight
	StateVerifying State = "verifying"
	StateDone      State = "done"
	StateFailed    State = "failed"
	StateStopped   State = "stopped"
)

// Progress is a snapshot of a prefetch run.
type Progress struct {
	State         State   `json:"state"`
	BlocksTotal   int     `json:"blocks_total"`
	BlocksPresent int     `json:"blocks_present"` // stored, by anyone
	BlocksFetched int64   `json:"blocks_fetched"` // fetched by this prefetcher
	BytesFetched  int64   `json:"bytes_fetched"`
	BytesPerSec   float64 `json:"bytes_per_sec"` // over the last few seconds
	Length        int64   `json:"length"`
	Digest        string  `json:"digest,omitempty"`
	Complete      bool    `json:"complete"`
	// Verified: the whole content matched a digest declared by the user or
	// the origin. Complete without Verified means only the per-block
	// SHA-256s were checked (no whole-content digest was known).
	Verified  bool   `json:"verified"`
	LastError string `json:"last_error,omitempty"`
	Error     string `json:"error,omitempty"` // why the run failed
}

// ErrVerification wraps a whole-content verification failure.
var ErrVerification = errors.New("whole-content verification failed")

// Prefetcher fetches one task's missing blocks. Use New, then Run once.
type Prefetcher struct {
	b    Blocks
	opt  Options
	log  *slog.Logger
	net  *rate.Limiter
	disk *rate.Limiter

	fetched      atomic.Int64
	bytesFetched atomic.Int64
	lastBusy     atomic.Int64 // unix nanos of the last foreground read seen; 0 = never

	mu       sync.Mutex
	state    State
	lastErr  string
	runErr   string
	samples  []sample // bytesFetched over time, for BytesPerSec
	verified bool
	complete bool
	digest   string
}

type sample struct {
	at    time.Time
	bytes int64
}

// New returns a prefetcher for b.
func New(b Blocks, opt Options) *Prefetcher {
	if opt.Concurrency <= 0 {
		opt.Concurrency = 4
	}
	if opt.Quiet == 0 {
		opt.Quiet = 200 * time.Millisecond
	}
	if opt.Retry <= 0 {
		opt.Retry = time.Second
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	info := b.Info()
	if opt.Name == "" {
		opt.Name = info.ID
	}
	p := &Prefetcher{b: b, opt: opt, log: opt.Logger, state: StateIdle}
	burst := int(max(info.BlockSize, blockstore.MinBlockSize))
	p.net = opt.NetworkLimiter
	if p.net == nil && opt.NetworkRate > 0 {
		p.net = NewLimiter(opt.NetworkRate, burst)
	}
	p.disk = opt.DiskLimiter
	if p.disk == nil && opt.DiskRate > 0 {
		p.disk = NewLimiter(opt.DiskRate, burst)
	}
	if info.State == blockstore.StateComplete {
		p.complete, p.verified, p.digest = true, info.Verified, info.Digest
	}
	return p
}

// NewLimiter returns a limiter of r bytes/s with the given burst (use the
// largest block size) that starts empty, so that the rate holds from the
// first byte.
func NewLimiter(r int64, burst int) *rate.Limiter {
	l := rate.NewLimiter(rate.Limit(r), burst)
	l.AllowN(time.Now(), burst)
	return l
}

// Plan returns the order in which the given missing blocks would be fetched.
func (p *Prefetcher) Plan(missing []int) []int {
	info := p.b.Info()
	order := append([]int(nil), missing...)
	if p.opt.Order == Rarest && p.opt.Rank != nil {
		ranked := p.opt.Rank(append([]int(nil), missing...))
		order = appendRest(ranked, missing)
	} else {
		sort.Ints(order)
	}
	if len(p.opt.First) == 0 || info.BlockSize <= 0 {
		return order
	}
	isMissing := make(map[int]bool, len(missing))
	for _, idx := range missing {
		isMissing[idx] = true
	}
	var first []int
	seen := map[int]bool{}
	for _, r := range p.opt.First {
		if r.Len <= 0 || r.Off >= info.Length {
			continue
		}
		end := min(r.Off+r.Len, info.Length)
		for idx := int(max(r.Off, 0) / info.BlockSize); idx <= int((end-1)/info.BlockSize); idx++ {
			if isMissing[idx] && !seen[idx] {
				seen[idx] = true
				first = append(first, idx)
			}
		}
	}
	return appendRest(first, order)
}

// appendRest returns head followed by the elements of all not in head, in
// the order of all.
func appendRest(head, all []int) []int {
	in := make(map[int]bool, len(head))
	out := make([]int, 0, len(all))
	for _, idx := range head {
		if !in[idx] {
			in[idx] = true
			out = append(out, idx)
		}
	}
	for _, idx := range all {
		if !in[idx] {
			in[idx] = true
			out = append(out, idx)
		}
	}
	return out
}

// Run fetches every missing block, then verifies the whole content with
// Complete. It returns nil once the task is complete, ctx's error when
// stopped, and an error wrapping ErrVerification when the content does not
// match its digest. Failed fetches (a dead origin) are retried with backoff
// until ctx ends.
func (p *Prefetcher) Run(ctx context.Context) error {
	if info := p.b.Info(); info.State == blockstore.StateComplete {
		p.finish(info, nil)
		return nil
	}
	p.opt.Metrics.add(p)
	defer p.opt.Metrics.remove(p)
	for round := 0; ; round++ {
		missing := p.b.Missing()
		if len(missing) == 0 {
			break
		}
		if round > 0 {
			p.log.Info("prefetch: blocks went missing; fetching them again", "task", p.opt.Name, "blocks", len(missing))
		}
		if err := p.fetchAll(ctx, p.Plan(missing)); err != nil {
			p.setState(StateStopped)
			return err
		}
	}
	p.setState(StateVerifying)
	start := time.Now()
	info, err := p.b.Complete(ctx)
	if err != nil && ctx.Err() != nil {
		p.setState(StateStopped)
		return ctx.Err()
	}
	if err != nil {
		if errors.Is(err, blockstore.ErrDigestMismatch) {
			err = fmt.Errorf("%w: %w", ErrVerification, err)
		}
		err = fmt.Errorf("prefetch %s: %w", p.opt.Name, err)
		p.log.Error("prefetch: whole-content verification failed; the task is not marked complete", "task", p.opt.Name, "err", err)
		p.finish(info, err)
		return err
	}
	p.log.Info("prefetch: complete", "task", p.opt.Name, "digest", info.Digest, "verified", info.Verified,
		"blocks_fetched", p.fetched.Load(), "verify_time", time.Since(start).Round(time.Millisecond))
	p.finish(info, nil)
	return nil
}

func (p *Prefetcher) finish(info blockstore.Task, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.digest = info.Digest
	if err != nil {
		p.state, p.runErr = StateFailed, err.Error()
		p.complete, p.verified = false, false
		return
	}
	p.state = StateDone
	p.complete = info.State == blockstore.StateComplete
	p.verified = info.Verified
}

func (p *Prefetcher) setState(s State) {
	p.mu.Lock()
	p.state = s
	p.mu.Unlock()
}

// fetchAll fetches the blocks of order with Concurrency workers.
func (p *Prefetcher) fetchAll(ctx context.Context, order []int) error {
	p.setState(StateFetching)
	info := p.b.Info()
	work := make(chan int)
	var wg sync.WaitGroup
	for range p.opt.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for idx := range work {
				p.fetchOne(ctx, idx, info.BlockLen(idx))
			}
		}()
	}
	wctx, stopWatch := context.WithCancel(ctx)
	var watch sync.WaitGroup
	if p.opt.Quiet >= 0 {
		watch.Add(1)
		go func() {
			defer watch.Done()
			p.watchForeground(wctx)
		}()
	}
	// One feeder admits blocks in plan order (quiet period, then network
	// and disk tokens) and hands them to the workers.
feed:
	for _, idx := range order {
		if err := p.admit(ctx, info.BlockLen(idx)); err != nil {
			break
		}
		select {
		case work <- idx:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	stopWatch()
	watch.Wait()
	return ctx.Err()
}

// admit waits until block of n bytes may be fetched: no foreground read for
// the quiet period, and n tokens from the network and disk limiters.
func (p *Prefetcher) admit(ctx context.Context, n int64) error {
	if err := p.waitQuiet(ctx); err != nil {
		return err
	}
	for _, l := range []*rate.Limiter{p.net, p.disk} {
		if err := waitN(ctx, l, n); err != nil {
			return err
		}
	}
	return nil
}

func waitN(ctx context.Context, l *rate.Limiter, n int64) error {
	if l == nil {
		return nil
	}
	for n > 0 {
		c := min(n, int64(l.Burst()))
		if err := l.WaitN(ctx, int(c)); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("prefetch rate limiter: %w", err)
		}
		n -= c
	}
	return nil
}

// watchForeground samples ForegroundInFlight every tick until ctx ends and
// records when it last saw a foreground read, so that short reads between
// two admissions are not missed.
func (p *Prefetcher) watchForeground(ctx context.Context) {
	t := time.NewTicker(p.tick())
	defer t.Stop()
	for {
		if p.b.ForegroundInFlight() > 0 {
			p.lastBusy.Store(time.Now().UnixNano())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Prefetcher) tick() time.Duration {
	return min(max(p.opt.Quiet/50, time.Millisecond), 10*time.Millisecond)
}

// waitQuiet returns once no foreground read has been seen for Quiet.
func (p *Prefetcher) waitQuiet(ctx context.Context) error {
	if p.opt.Quiet < 0 {
		return nil
	}
	paused := false
	for {
		now := time.Now()
		if p.b.ForegroundInFlight() > 0 {
			p.lastBusy.Store(now.UnixNano())
		}
		last := p.lastBusy.Load()
		if last == 0 || now.Sub(time.Unix(0, last)) >= p.opt.Quiet {
			if paused {
				p.setState(StateFetching)
			}
			return nil
		}
		if !paused {
			paused = true
			p.setState(StatePaused)
		}
		t := time.NewTimer(p.tick())
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// fetchOne fetches block idx, retrying with backoff until it succeeds or
// ctx ends.
func (p *Prefetcher) fetchOne(ctx context.Context, idx int, n int64) {
	delay := p.opt.Retry
	for {
		err := p.b.Fetch(ctx, idx, peer.Background)
		if err == nil {
			p.fetched.Add(1)
			p.bytesFetched.Add(n)
			return
		}
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		p.lastErr = err.Error()
		p.mu.Unlock()
		p.log.Warn("prefetch: block fetch failed; retrying", "task", p.opt.Name, "block", idx, "retry_in", delay, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(delay*2, 30*time.Second)
	}
}

// Progress returns a snapshot of the run. BytesPerSec is measured between
// successive calls over a window of up to 5 seconds.
func (p *Prefetcher) Progress() Progress {
	info := p.b.Info()
	missing := len(p.b.Missing())
	now := time.Now()
	bytes := p.bytesFetched.Load()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.samples = append(p.samples, sample{now, bytes})
	for len(p.samples) > 2 && now.Sub(p.samples[1].at) >= 5*time.Second {
		p.samples = p.samples[1:]
	}
	var bps float64
	if s := p.samples[0]; now.Sub(s.at) > 0 && (p.state == StateFetching || p.state == StatePaused) {
		bps = float64(bytes-s.bytes) / now.Sub(s.at).Seconds()
	}
	return Progress{
		State:         p.state,
		BlocksTotal:   info.NumBlocks(),
		BlocksPresent: info.NumBlocks() - missing,
		BlocksFetched: p.fetched.Load(),
		BytesFetched:  bytes,
		BytesPerSec:   bps,
		Length:        info.Length,
		Digest:        firstNonEmpty(p.digest, info.Digest),
		Complete:      p.complete || info.State == blockstore.StateComplete,
		Verified:      p.verified || info.Verified,
		LastError:     p.lastErr,
		Error:         p.runErr,
	}
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
