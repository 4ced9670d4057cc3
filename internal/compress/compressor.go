package compress

import (
	"container/heap"
	"context"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The seed's rule for "not loaded" (see Idle).
const (
	// MaxOtherCPU is the share of all CPUs the supernode may use for its
	// other work (scheduling, uploads, the origin) over the last second
	// for its compressor to go on trying blocks.
	MaxOtherCPU = 0.5
	// queueMax bounds the blocks waiting for a trial; dataBudget the bytes
	// of block data those jobs hold (beyond, a job reads its block back
	// from the store when its turn comes).
	queueMax   = 8192
	dataBudget = 64 << 20
)

// Idle is the seed's rule: the supernode is not loaded when fewer than
// half of its upload slots are in use and its CPU use other than
// compressing stayed below MaxOtherCPU of all CPUs over the last second
// (unknown counts as not loaded).
func Idle(inFlight, maxUploads int, otherCPU float64, cpuKnown bool) bool {
	if maxUploads > 0 && 2*inFlight >= maxUploads {
		return false
	}
	return !cpuKnown || otherCPU < MaxOtherCPU
}

// CompressorConfig configures a Compressor.
type CompressorConfig struct {
	Forms *Forms
	Codec *Codec
	// Workers trying blocks at once (default max(1, NumCPU/2)).
	Workers int
	// Mode Auto tries a block only while Idle says the supernode is not
	// loaded; Always regardless.
	Mode Mode
	// Idle reports whether the supernode is not loaded (see the function
	// Idle; the wiring gives it the upload count and a ProcessSampler that
	// excludes Busy). Default: always idle.
	Idle func() bool
	// Read reads a stored block (jobs that hold no data). Required.
	Read func(task string, idx int) ([]byte, error)
	// Digest returns a stored block's SHA-256. Required.
	Digest func(task string, idx int) ([]byte, bool)
	// Skip, if set, excludes whole tasks (end-to-end encrypted: their
	// ciphertext does not compress; sealed: a form would be plaintext at
	// rest).
	Skip   func(task string) bool
	Logger *slog.Logger
}

// Compressor is the seed's pool of trial workers: every block the seed
// stores is offered (Stored), blocks peers asked for are bumped (Wanted),
// the most wanted go first, and each block costs one trial: its form or
// "not worth it" is kept in Forms.
type Compressor struct {
	cfg CompressorConfig
	log *slog.Logger
	wg  sync.WaitGroup

	mu     sync.Mutex
	cond   *sync.Cond
	queue  jobQueue
	queued map[jobKey]*job
	held   int64 // bytes of data held by queued jobs
	seq    int64
	closed bool

	busyNanos                             atomic.Int64
	trials, kept, sampleNo, tooLittle     atomic.Int64
	skippedLoaded, skippedTask, readFails atomic.Int64
	plainIn, formOut                      atomic.Int64
}

type jobKey struct {
	task string
	idx  int
}

type job struct {
	jobKey
	data   []byte // the block's bytes when offered (nil: read them back)
	digest []byte // the block's SHA-256 when data was offered
	prio   int
	seq    int64
	index  int           // in the heap
	done   chan struct{} // closed when tried or dropped
}

// jobQueue is a max-heap by priority, then first come first served.
type jobQueue []*job

func (q jobQueue) Len() int { return len(q) }
func (q jobQueue) Less(i, j int) bool {
	if q[i].prio != q[j].prio {
		return q[i].prio > q[j].prio
	}
	return q[i].seq < q[j].seq
}
func (q jobQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *jobQueue) Push(x any) {
	j := x.(*job)
	j.index = len(*q)
	*q = append(*q, j)
}
func (q *jobQueue) Pop() any {
	old := *q
	j := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	j.index = -1
	return j
}

// NewCompressor starts the workers; Close stops them.
func NewCompressor(cfg CompressorConfig) *Compressor {
	if cfg.Workers <= 0 {
		cfg.Workers = max(1, runtime.NumCPU()/2)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Idle == nil {
		cfg.Idle = func() bool { return true }
	}
	c := &Compressor{cfg: cfg, log: cfg.Logger, queued: map[jobKey]*job{}}
	c.cond = sync.NewCond(&c.mu)
	for range cfg.Workers {
		c.wg.Add(1)
		go c.work()
	}
	return c
}

// Close drops the queued jobs and waits for the workers to end.
func (c *Compressor) Close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	for _, j := range c.queue {
		close(j.done)
	}
	c.queue, c.queued = nil, map[jobKey]*job{}
	c.cond.Broadcast()
	c.mu.Unlock()
	c.wg.Wait()
}

// Busy is the CPU time the workers spent trying blocks, in seconds (for
// ProcessSampler: the compressor's own work is not load).
func (c *Compressor) Busy() float64 {
	if c == nil {
		return 0
	}
	return time.Duration(c.busyNanos.Load()).Seconds()
}

// Stored offers block idx of task, just stored with bytes data, for a
// trial, and waits up to wait (or until ctx ends) for it: the seed
// announces the block afterwards, so that the first copy to leave it can
// already be the compressed one. A loaded supernode (Auto) skips the block
// at once; it is tried later if a peer asks for its form. data is copied.
func (c *Compressor) Stored(ctx context.Context, task string, idx int, data []byte, wait time.Duration) {
	if c == nil || (c.cfg.Mode == Auto && !c.cfg.Idle()) {
		if c != nil {
			c.skippedLoaded.Add(1)
		}
		return
	}
	digest, ok := c.cfg.Digest(task, idx)
	if !ok {
		return
	}
	done := c.enqueue(task, idx, data, digest, 1)
	if done == nil || wait <= 0 {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	case <-ctx.Done():
	}
}

// Wanted records that a peer asked for the form of block idx of task,
// which nobody tried yet: the block is queued (read back from the store)
// or, when queued already, moves up.
func (c *Compressor) Wanted(task string, idx int) {
	if c == nil {
		return
	}
	c.enqueue(task, idx, nil, nil, 1)
}

// enqueue queues a job or raises the priority of the queued one; it returns
// the job's done channel (nil when nothing was queued).
func (c *Compressor) enqueue(task string, idx int, data, digest []byte, prio int) <-chan struct{} {
	if !validTask(task) || idx < 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	k := jobKey{task, idx}
	if j := c.queued[k]; j != nil {
		j.prio += prio
		if j.data == nil && data != nil && c.held+int64(len(data)) <= dataBudget {
			j.data, j.digest = append([]byte(nil), data...), digest
			c.held += int64(len(data))
		}
		heap.Fix(&c.queue, j.index)
		return j.done
	}
	if len(c.queue) >= queueMax {
		return nil // a peer's later request queues it again
	}
	j := &job{jobKey: k, prio: prio, done: make(chan struct{})}
	if data != nil && c.held+int64(len(data)) <= dataBudget {
		j.data, j.digest = append([]byte(nil), data...), digest
		c.held += int64(len(data))
	}
	c.seq++
	j.seq = c.seq
	heap.Push(&c.queue, j)
	c.queued[k] = j
	c.cond.Signal()
	return j.done
}

// next waits for the most wanted job; nil once closed.
func (c *Compressor) next() *job {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.queue) == 0 && !c.closed {
		c.cond.Wait()
	}
	if c.closed {
		return nil
	}
	j := heap.Pop(&c.queue).(*job)
	delete(c.queued, j.jobKey)
	c.held -= int64(len(j.data))
	return j
}

func (c *Compressor) work() {
	defer c.wg.Done()
	for {
		j := c.next()
		if j == nil {
			return
		}
		c.try(j)
		close(j.done)
	}
}

// try runs one job: one trial, its verdict kept.
func (c *Compressor) try(j *job) {
	if c.cfg.Mode == Auto && !c.cfg.Idle() {
		c.skippedLoaded.Add(1)
		return
	}
	if c.cfg.Skip != nil && c.cfg.Skip(j.task) {
		c.skippedTask.Add(1)
		return
	}
	digest, ok := c.cfg.Digest(j.task, j.idx)
	if !ok || c.cfg.Forms.Lookup(j.task, j.idx, digest) != Unknown {
		return
	}
	data := j.data
	if data != nil && string(j.digest) != string(digest) {
		data = nil // the block changed since it was offered (new content): read the new one
	}
	if data == nil {
		var err error
		if data, err = c.cfg.Read(j.task, j.idx); err != nil {
			c.readFails.Add(1)
			c.log.Debug("compressor: block not readable", "task", j.task, "block", j.idx, "err", err)
			return
		}
	}
	began := time.Now()
	form, v := c.cfg.Codec.trial(data)
	c.busyNanos.Add(int64(time.Since(began)))
	c.trials.Add(1)
	c.plainIn.Add(int64(len(data)))
	var err error
	switch v {
	case Kept:
		c.kept.Add(1)
		c.formOut.Add(int64(len(form)))
		err = c.cfg.Forms.Put(j.task, j.idx, digest, int64(len(data)), form)
	case SampleSaysNo:
		c.sampleNo.Add(1)
		err = c.cfg.Forms.PutNotWorth(j.task, j.idx, digest, int64(len(data)))
	default:
		c.tooLittle.Add(1)
		err = c.cfg.Forms.PutNotWorth(j.task, j.idx, digest, int64(len(data)))
	}
	if err != nil {
		c.log.Debug("compressor: verdict not kept", "task", j.task, "block", j.idx, "err", err)
	}
}

// CompressorStats are the compressor's counters.
type CompressorStats struct {
	Mode string `json:"mode"`
	// Trials counts blocks tried; Kept those whose form was kept,
	// SampleSaysNo those the sample ruled out, TooLittle those compressed
	// whole that saved less than MinSaving percent.
	Trials       int64 `json:"trials"`
	Kept         int64 `json:"kept"`
	SampleSaysNo int64 `json:"sample_says_no"`
	TooLittle    int64 `json:"too_little"`
	// SkippedLoaded counts blocks not tried because the supernode was
	// loaded, SkippedTask those of excluded tasks (end-to-end encrypted,
	// sealed).
	SkippedLoaded int64 `json:"skipped_loaded"`
	SkippedTask   int64 `json:"skipped_task"`
	// ReadFailures counts queued blocks the store could not read back.
	ReadFailures int64 `json:"read_failures"`
	// BytesTried is the plain bytes tried, FormBytes the bytes of the
	// forms kept; BusySeconds the time trials took.
	BytesTried  int64      `json:"bytes_tried"`
	FormBytes   int64      `json:"form_bytes"`
	BusySeconds float64    `json:"busy_seconds"`
	Queued      int        `json:"queued"`
	SideStore   FormsStats `json:"side_store"`
}

// Stats returns the counters.
func (c *Compressor) Stats() CompressorStats {
	if c == nil {
		return CompressorStats{Mode: Off.String()}
	}
	c.mu.Lock()
	q := len(c.queue)
	c.mu.Unlock()
	return CompressorStats{
		Mode: c.cfg.Mode.String(), Trials: c.trials.Load(), Kept: c.kept.Load(), SampleSaysNo: c.sampleNo.Load(), TooLittle: c.tooLittle.Load(),
		SkippedLoaded: c.skippedLoaded.Load(), SkippedTask: c.skippedTask.Load(), ReadFailures: c.readFails.Load(),
		BytesTried: c.plainIn.Load(), FormBytes: c.formOut.Load(), BusySeconds: c.Busy(), Queued: q, SideStore: c.cfg.Forms.Stats(),
	}
}
