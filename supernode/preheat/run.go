package preheat

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"sync"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
)

// seedConcurrency bounds the Seed calls of one job in flight (each waits
// for its origin's answer to a HEAD).
const seedConcurrency = 4

// run drives a job to its end: resolve its targets, have the seed fetch
// them, then (with a selector) have the selected hosts fetch them.
func (m *Manager) run(ctx context.Context, e *entry) {
	j := m.update(e, func(j *Job) { j.State = StateRunning })
	log := m.log.With("job", j.ID)
	fail := func(err error) {
		if ctx.Err() != nil {
			return // closed or cancelled: the job stays as it is
		}
		log.Warn("preheat job failed", "err", err)
		m.update(e, func(j *Job) {
			j.State, j.Error, j.Finished = StateFailed, err.Error(), time.Now()
		})
	}
	targets, err := m.targets(ctx, e)
	if err != nil {
		fail(err)
		return
	}
	if err := m.seed(ctx, e, targets); err != nil {
		fail(err)
		return
	}
	if j.Request.Hosts != nil {
		if err := m.toHosts(ctx, e, targets); err != nil {
			if m.cfg.Hosts != nil {
				m.cfg.Hosts.Withdraw(j.ID)
			}
			fail(err)
			return
		}
		m.cfg.Hosts.Withdraw(j.ID)
	}
	if ctx.Err() != nil {
		return
	}
	j = m.update(e, func(j *Job) { j.State, j.Finished = StateSucceeded, time.Now() })
	log.Info("preheat job succeeded", "layers", len(j.Layers), "hosts", len(j.Hosts))
}

// targets returns the job's targets with their headers: from the request,
// or resolved (again, after a restart: credentials are never stored).
func (m *Manager) targets(ctx context.Context, e *entry) ([]Target, error) {
	m.mu.Lock()
	req, layers, h := e.job.Request, e.job.Layers, e.headers
	m.mu.Unlock()
	var ts []Target
	switch req.Type {
	case TypeURL:
		id, err := blockstore.TaskIDFor("", req.URL, req.Tag, req.Digest)
		if err != nil {
			return nil, fmt.Errorf("task id of %s: %w", req.URL, err)
		}
		ts = []Target{{TaskID: id, URL: req.URL, Digest: req.Digest, Tag: req.Tag, Header: h}}
	case TypeBlobs:
		for _, l := range layers {
			t := l.Target
			t.Header = h
			ts = append(ts, t)
		}
	case TypeImage:
		if m.cfg.Images == nil {
			return nil, errors.New("this supernode cannot resolve images")
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		var err error
		if ts, err = m.cfg.Images.Resolve(rctx, req.Image, req.Platform); err != nil {
			return nil, fmt.Errorf("resolve %s: %w", req.Image, err)
		}
	}
	m.update(e, func(j *Job) {
		old := map[string]Layer{}
		for _, l := range j.Layers {
			old[l.TaskID] = l
		}
		j.Layers = make([]Layer, 0, len(ts)) // never reuse: clones made before may share the array
		for _, t := range ts {
			l, ok := old[t.TaskID]
			if !ok {
				l = Layer{State: StateQueued}
			}
			l.Target = t
			l.Header = nil
			j.Layers = append(j.Layers, l)
		}
	})
	return ts, nil
}

// seed has the seed fetch every target and waits until it holds them all
// (or failed some: the job fails naming them).
func (m *Manager) seed(ctx context.Context, e *entry, ts []Target) error {
	var wg sync.WaitGroup
	sem := make(chan struct{}, seedConcurrency)
	errs := make([]error, len(ts))
	lengths := make([]int64, len(ts))
	for i, t := range ts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
			lengths[i], errs[i] = m.cfg.Seeder.Seed(ctx, t)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	tick := time.NewTicker(m.cfg.Poll)
	defer tick.Stop()
	for {
		pending, failed := 0, 0
		var first string
		m.update(e, func(j *Job) {
			for i := range j.Layers {
				l := &j.Layers[i]
				stored, total, failure := m.cfg.Seeder.Progress(l.TaskID)
				if i < len(errs) && errs[i] != nil && failure == "" && (total == 0 || stored < total) {
					failure = errs[i].Error()
				}
				l.Stored, l.Blocks, l.Error = stored, total, ""
				if i < len(lengths) && lengths[i] > 0 {
					l.Bytes = lengths[i]
				}
				switch {
				case total > 0 && stored == total:
					l.State = StateSucceeded
				case failure != "":
					l.State, l.Error = StateFailed, failure
					failed++
					if first == "" {
						first = l.URL + ": " + failure
					}
				default:
					l.State = StateRunning
					pending++
				}
			}
		})
		if pending == 0 {
			if failed > 0 {
				return fmt.Errorf("the seed failed %d of %d layers; first: %s", failed, len(ts), first)
			}
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// toHosts orders every target onto the selected hosts and waits until
// each holds them all, failed, or made no progress for HostTimeout.
func (m *Manager) toHosts(ctx context.Context, e *entry, ts []Target) error {
	hs := m.cfg.Hosts
	if hs == nil {
		return errors.New("this supernode cannot preheat hosts")
	}
	j := m.update(e, func(j *Job) {
		if j.HostsMatched {
			return
		}
		var ids []string
		for _, h := range hs.Live() {
			if j.Request.Hosts.Matches(h.ID, h.IDC, h.Rack) {
				ids = append(ids, h.ID)
			}
		}
		sort.Strings(ids)
		for _, id := range ids {
			j.Hosts = append(j.Hosts, HostProgress{Host: id, State: StateQueued, Total: len(ts)})
		}
		j.HostsMatched = true
	})
	if len(j.Hosts) == 0 {
		return fmt.Errorf("the selector %q matches no live host", j.Request.Hosts.String())
	}
	for _, h := range j.Hosts {
		if h.State == StateSucceeded {
			continue
		}
		for _, t := range ts {
			hs.Order(h.Host, j.ID, t)
		}
	}
	lastMove := map[string]time.Time{}
	lastHeld := map[string]int{}
	now := time.Now()
	for _, h := range j.Hosts {
		lastMove[h.Host] = now
	}
	tick := time.NewTicker(m.cfg.Poll)
	defer tick.Stop()
	for {
		pending := 0
		var failed []string
		m.update(e, func(j *Job) {
			for i := range j.Hosts {
				h := &j.Hosts[i]
				if h.State == StateSucceeded || h.State == StateFailed {
					if h.State == StateFailed {
						failed = append(failed, h.Host+": "+h.Error)
					}
					continue
				}
				done, blocks := 0, 0
				var bytes int64
				var failure string
				for k, t := range ts {
					held, total, f := hs.Held(h.Host, j.ID, t.TaskID)
					blocks += held
					if total > 0 && k < len(j.Layers) {
						bytes += j.Layers[k].Bytes * int64(held) / int64(total)
					}
					if total > 0 && held == total {
						done++
					} else if f != "" && failure == "" {
						failure = f
					}
				}
				if blocks != lastHeld[h.Host] {
					lastHeld[h.Host], lastMove[h.Host] = blocks, time.Now()
				}
				h.Done, h.Blocks, h.Total, h.Bytes = done, blocks, len(ts), bytes
				switch {
				case done == len(ts):
					h.State, h.Error = StateSucceeded, ""
				case failure != "":
					h.State, h.Error = StateFailed, failure
					failed = append(failed, h.Host+": "+failure)
				case time.Since(lastMove[h.Host]) > m.cfg.HostTimeout:
					h.State, h.Error = StateFailed, fmt.Sprintf("no progress for %s", m.cfg.HostTimeout)
					failed = append(failed, h.Host+": "+h.Error)
				default:
					h.State = StateRunning
					pending++
				}
			}
		})
		if pending == 0 {
			if len(failed) > 0 {
				return fmt.Errorf("%d of %d hosts failed; first: %s", len(failed), len(j.Hosts), failed[0])
			}
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sameProgress reports whether two versions of a job differ only in Updated.
func sameProgress(a, b Job) bool {
	a.Updated, b.Updated = time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}

// headerOf builds an http.Header from a map (nil for none).
func headerOf(m map[string]string) http.Header {
	if len(m) == 0 {
		return nil
	}
	h := http.Header{}
	for k, v := range m {
		h.Set(k, v)
	}
	return h
}
