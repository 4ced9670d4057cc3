package preheat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"
)

// Seeder is the seed's side of a job.
type Seeder interface {
	// Seed makes the seed fetch t into its cache (a task it holds or is
	// fetching is not fetched again) and returns once t's length is known.
	Seed(ctx context.Context, t Target) (length int64, err error)
	// Progress reports the seed's copy of a task: blocks stored, blocks in
	// all, and why the seed failed it ("" unless it did).
	Progress(taskID string) (stored, total int, failure string)
}

// HostInfo is a live dfdaemon as its announces describe it.
type HostInfo struct{ ID, IDC, Rack string }

// Hosts is the control plane's side of host preheats: the supernode tells
// hosts what to fetch with their heartbeats, and learns what they hold
// from their announces.
type Hosts interface {
	// Live lists the live dfdaemons (not the seed).
	Live() []HostInfo
	// Order asks host to fetch t into its store at background priority.
	// Orders are repeated with each heartbeat until Withdraw.
	Order(host, jobID string, t Target)
	// Held reports the blocks host holds of a task (held == total > 0: all
	// of it) and the failure the host reported for jobID's order of it.
	Held(host, jobID, taskID string) (held, total int, failure string)
	// Withdraw cancels jobID's orders.
	Withdraw(jobID string)
}

// Images resolves image references to the blobs a pull fetches, with the
// URLs and headers to fetch them (dfly's one OCI resolver).
type Images interface {
	Resolve(ctx context.Context, ref, platform string) ([]Target, error)
}

// Config configures a Manager.
type Config struct {
	// Dir holds one JSON file per job.
	Dir    string
	Seeder Seeder
	Hosts  Hosts  // nil: jobs with a host selector fail
	Images Images // nil: image jobs fail
	// Poll is how often a running job looks at its progress (default 500ms).
	Poll time.Duration
	// HostTimeout fails a selected host that made no progress for this
	// long (default 10 minutes).
	HostTimeout time.Duration
	// MaxRunning bounds the jobs that run at once (default 4); the others wait, queued.
	MaxRunning int
	Logger     *slog.Logger
}

// Manager runs and persists preheat jobs. Close stops its goroutines.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	store *jobStore
	slots chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	jobs map[string]*entry
}

type entry struct {
	job     Job
	headers http.Header // the request's headers, in memory only
	cancel  context.CancelFunc
	done    chan struct{}
}

// Open loads the jobs in cfg.Dir and resumes every unfinished one.
func Open(cfg Config) (*Manager, error) {
	if cfg.Seeder == nil {
		return nil, errors.New("preheat: no seeder")
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 500 * time.Millisecond
	}
	if cfg.HostTimeout <= 0 {
		cfg.HostTimeout = 10 * time.Minute
	}
	if cfg.MaxRunning <= 0 {
		cfg.MaxRunning = 4
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	st, err := openJobStore(cfg.Dir)
	if err != nil {
		return nil, err
	}
	jobs, err := st.loadAll(cfg.Logger)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{cfg: cfg, log: cfg.Logger.With("component", "preheat"), store: st, slots: make(chan struct{}, cfg.MaxRunning),
		ctx: ctx, cancel: cancel, jobs: map[string]*entry{}}
	for _, j := range jobs {
		e := &entry{job: j, done: make(chan struct{})}
		m.jobs[j.ID] = e
		if j.Done() {
			close(e.done)
			continue
		}
		m.log.Info("resuming preheat job", "job", j.ID, "state", j.State)
		m.start(e)
	}
	return m, nil
}

// Close stops every running job (they stay unfinished on disk and resume
// at the next Open).
func (m *Manager) Close() {
	m.cancel()
	m.wg.Wait()
}

// Submit validates req, persists it as a new job and starts it.
func (m *Manager) Submit(req Request) (Job, error) {
	if err := req.Validate(); err != nil {
		return Job{}, err
	}
	if req.Type == TypeImage && m.cfg.Images == nil {
		return Job{}, fmt.Errorf("this supernode cannot resolve images: %w", ErrInvalid)
	}
	if req.Hosts != nil && m.cfg.Hosts == nil {
		return Job{}, fmt.Errorf("this supernode cannot preheat hosts: %w", ErrInvalid)
	}
	if req.Source == "" {
		req.Source = "api"
	}
	h := headerOf(req.Headers)
	stored := req
	if len(req.Headers) > 0 {
		stored.Headers = make(map[string]string, len(req.Headers))
		for k := range req.Headers {
			stored.Headers[k] = "(not stored)"
		}
	}
	now := time.Now()
	j := Job{ID: newID(), Request: stored, State: StateQueued, Created: now, Updated: now}
	if req.Type == TypeBlobs {
		for _, b := range req.Blobs {
			j.Layers = append(j.Layers, Layer{Target: b, State: StateQueued})
		}
	}
	e := &entry{job: j.clone(), headers: h, done: make(chan struct{})}
	if err := m.store.save(j); err != nil {
		return Job{}, err
	}
	m.mu.Lock()
	m.jobs[j.ID] = e
	m.mu.Unlock()
	m.log.Info("preheat job submitted", "job", j.ID, "type", req.Type, "source", req.Source, "layers", len(j.Layers))
	m.start(e)
	return j.clone(), nil
}

// Get returns a job.
func (m *Manager) Get(id string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.jobs[id]
	if !ok {
		return Job{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return e.job.clone(), nil
}

// List returns every job, newest first.
func (m *Manager) List() []Job {
	m.mu.Lock()
	out := make([]Job, 0, len(m.jobs))
	for _, e := range m.jobs {
		out = append(out, e.job.clone())
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, k int) bool {
		if !out[i].Created.Equal(out[k].Created) {
			return out[i].Created.After(out[k].Created)
		}
		return out[i].ID < out[k].ID
	})
	return out
}

// Cancel stops a job; a finished job is returned unchanged.
func (m *Manager) Cancel(id string) (Job, error) {
	m.mu.Lock()
	e, ok := m.jobs[id]
	if !ok {
		m.mu.Unlock()
		return Job{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if e.job.Done() {
		j := e.job.clone()
		m.mu.Unlock()
		return j, nil
	}
	e.job.State, e.job.Error = StateCanceled, "canceled by request"
	e.job.Updated, e.job.Finished = time.Now(), time.Now()
	cancel := e.cancel
	j := e.job.clone()
	m.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if m.cfg.Hosts != nil {
		m.cfg.Hosts.Withdraw(id)
	}
	<-e.done
	return j, m.store.save(j)
}

// Wait blocks until the job ends or ctx does, and returns it.
func (m *Manager) Wait(ctx context.Context, id string) (Job, error) {
	m.mu.Lock()
	e, ok := m.jobs[id]
	m.mu.Unlock()
	if !ok {
		return Job{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	select {
	case <-e.done:
	case <-ctx.Done():
		return Job{}, ctx.Err()
	}
	return m.Get(id)
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "ph-" + time.Now().UTC().Format("20060102") + "-" + hex.EncodeToString(b[:])
}

// start runs a job in a goroutine owned by the manager.
func (m *Manager) start(e *entry) {
	ctx, cancel := context.WithCancel(m.ctx)
	m.mu.Lock()
	e.cancel = cancel
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(e.done)
		defer cancel()
		select {
		case m.slots <- struct{}{}:
			defer func() { <-m.slots }()
		case <-ctx.Done():
			return
		}
		m.run(ctx, e)
	}()
}

// update changes a job under the lock and persists it (a cancelled job
// keeps its final state).
func (m *Manager) update(e *entry, f func(j *Job)) Job {
	m.mu.Lock()
	if e.job.State == StateCanceled {
		j := e.job.clone()
		m.mu.Unlock()
		return j
	}
	before := e.job.clone()
	f(&e.job)
	changed := !sameProgress(before, e.job)
	if changed {
		e.job.Updated = time.Now()
	}
	j := e.job.clone()
	m.mu.Unlock()
	if changed {
		if err := m.store.save(j); err != nil {
			m.log.Error("persist preheat job", "job", j.ID, "err", err)
		}
	}
	return j
}
