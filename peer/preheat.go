package peer

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/dfly-p2p/dfly/supernode/api"
)

// PreheatOrder is the supernode's request that this host fetch a task into
// its store (a preheat job with a host selector), delivered with heartbeats.
type PreheatOrder struct {
	JobID, TaskID, URL, Digest, Tag string
	Header                          http.Header // for the origin; in memory only
}

// preheatQueue bounds the orders waiting; more are taken at a later
// heartbeat (the supernode repeats them until the job ends).
const preheatQueue = 64

// maxSeenOrders bounds the orders remembered as queued or done.
const maxSeenOrders = 4096

// preheater runs a host's preheat orders one at a time at background
// priority: each block waits while a foreground download (dfget, the
// mirror, a mount) is in flight on this host, and under its own rate
// limit. Its goroutine is owned by the daemon (start, close).
type preheater struct {
	log    *slog.Logger
	limit  *rate.Limiter // nil: no preheat limit (the host's download limit still applies)
	busy   func() bool   // a foreground download is in flight
	report func(job, task string, err error)
	// metrics, if set, receives the time spent waiting for limit.
	metrics *Metrics
	// background, if set, paces the preheat's writes as background work
	// (Engine.PaceBackground: dfdaemon --disk-backoff).
	background func(ctx context.Context, n int64) error

	queue chan PreheatOrder
	mu    sync.Mutex
	seen  map[string]bool // job + task: queued, running or done
	wg    sync.WaitGroup
	stop  context.CancelFunc
}

func newPreheater(log *slog.Logger, bytesPerSec int64, busy func() bool, report func(job, task string, err error)) *preheater {
	p := &preheater{log: log.With("component", "preheat"), busy: busy, report: report,
		queue: make(chan PreheatOrder, preheatQueue), seen: map[string]bool{}}
	if bytesPerSec > 0 {
		p.limit = rate.NewLimiter(rate.Limit(bytesPerSec), int(min(bytesPerSec, 16<<20)))
	}
	return p
}

// offer queues the orders not seen before (safe before start).
func (p *preheater) offer(orders []PreheatOrder) {
	for _, o := range orders {
		key := o.JobID + "\x00" + o.TaskID
		p.mu.Lock()
		if p.seen[key] {
			p.mu.Unlock()
			continue
		}
		if len(p.seen) >= maxSeenOrders {
			// Forget old orders (bounded memory over a long uptime): one the
			// supernode still repeats runs again, and finds its task complete.
			clear(p.seen)
		}
		select {
		case p.queue <- o:
			p.seen[key] = true
		default: // full: the next heartbeat offers it again
		}
		p.mu.Unlock()
	}
}

// start runs the orders through fetch until close.
func (p *preheater) start(fetch func(ctx context.Context, o PreheatOrder, pace func(context.Context, int64) error) error) {
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case o := <-p.queue:
				began := time.Now()
				err := fetch(ctx, o, p.pace)
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					p.log.Warn("preheat order failed", "job", o.JobID, "task", o.TaskID, "err", err)
					p.report(o.JobID, o.TaskID, err)
					continue
				}
				p.log.Info("preheated", "job", o.JobID, "task", o.TaskID, "took", time.Since(began).Round(time.Millisecond))
			}
		}
	}()
}

// close stops the running order (its blocks so far stay in the store).
func (p *preheater) close() {
	if p.stop != nil {
		p.stop()
	}
	p.wg.Wait()
}

// busyPoll is how often a paused preheat looks whether foreground work ended.
const busyPoll = 50 * time.Millisecond

// pace is called before each block of a preheat: it waits while foreground
// downloads run, then for the background pace (a busy disk) and the
// preheat rate limit.
func (p *preheater) pace(ctx context.Context, n int64) error {
	for p.busy != nil && p.busy() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(busyPoll):
		}
	}
	if p.background != nil {
		began := time.Now()
		err := p.background(ctx, n)
		p.metrics.waited(limiterPreheat, time.Since(began))
		if err != nil {
			return err
		}
	}
	if p.limit == nil {
		return nil
	}
	began := time.Now()
	defer func() { p.metrics.waited(limiterPreheat, time.Since(began)) }()
	for n > 0 {
		c := min(n, int64(p.limit.Burst()))
		if err := p.limit.WaitN(ctx, int(c)); err != nil {
			return err
		}
		n -= c
	}
	return nil
}

// ReportPreheat tells the supernode (with the next heartbeat) why this host
// failed a preheat order.
func (s *SupernodeSwarm) ReportPreheat(jobID, taskID string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.preheatReports = append(s.preheatReports, &api.PreheatReport{JobId: jobID, TaskId: taskID, Error: err.Error()})
	if len(s.preheatReports) > 256 { // a supernode that never answers: keep the newest
		s.preheatReports = s.preheatReports[len(s.preheatReports)-256:]
	}
}

// preheatOrders converts the wire form.
func preheatOrders(in []*api.PreheatOrder) []PreheatOrder {
	out := make([]PreheatOrder, 0, len(in))
	for _, o := range in {
		po := PreheatOrder{JobID: o.GetJobId(), TaskID: o.GetTaskId(), URL: o.GetUrl(), Digest: o.GetDigest(), Tag: o.GetTag()}
		for _, h := range o.GetHeaders() {
			if po.Header == nil {
				po.Header = http.Header{}
			}
			po.Header.Add(h.GetName(), h.GetValue())
		}
		out = append(out, po)
	}
	return out
}
