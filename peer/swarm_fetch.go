package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/blockhttp"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// Block transfers: parents in rank order, end-game and laggard
// duplication, verification through PutBlock, and the result reports.

// fetch gets block idx from the swarm: parents from the cache or a Sync
// round, then each parent in rank order until one delivers verified bytes.
func (st *swarmTask) fetch(ctx context.Context, meta blockstore.Task, idx int, pace pacer) ([]byte, From, error) {
	st.trace.note(ctx)
	if err := st.ensureRegistered(ctx); err != nil {
		return nil, 0, err
	}
	deadline := time.Now().Add(st.s.cfg.BlockTimeout)
	var lastErr error
	urgent := true // ask at once; after a round without parents, ride the next periodic round
	for {
		if time.Now().After(deadline) {
			if lastErr == nil {
				lastErr = errors.New("nobody holds it yet")
			}
			return nil, 0, fmt.Errorf("block %d of task %s: no parent delivered it within %s (last: %v): %w", idx, st.id, st.s.cfg.BlockTimeout, lastErr, ErrSwarmUnavailable)
		}
		ps := st.parents(idx)
		if _, ok := st.s.store.BlockDigest(st.id, idx); !ok {
			ps = nil // never fetch a block we cannot verify
		}
		if len(ps) == 0 {
			var err error
			began := time.Now()
			ps, err = st.waitParents(ctx, idx, urgent)
			st.s.waitNanos.Add(int64(time.Since(began)))
			if err != nil && st.s.transient(err) && ctx.Err() == nil {
				// The supernode is restarting (within SupernodeGrace): wait
				// for it, using the parents already known meanwhile.
				lastErr = err
				if err := sleepCtx(ctx, graceRetry); err != nil {
					return nil, 0, err
				}
				continue
			}
			if err != nil {
				return nil, 0, err
			}
			if _, ok := st.s.store.BlockDigest(st.id, idx); !ok {
				ps = nil
			}
		}
		if len(ps) == 0 {
			// Nobody holds it yet, or every holder is busy. A reader asks
			// again after a short pause (the supernode holds a Sync for a
			// block its seed is fetching, so this does not spin); background
			// work waits for the next periodic round (at most syncInterval
			// away) together with the other waiters.
			st.s.emptyRounds.Add(1)
			st.mu.Lock()
			if st.pending[idx] {
				st.s.seedPending.Add(1)
			}
			st.mu.Unlock()
			if priorityOf(ctx) == Foreground {
				if err := sleepCtx(ctx, fgRetry); err != nil {
					return nil, 0, err
				}
				continue
			}
			urgent = false
			continue
		}
		urgent = true
		began := time.Now()
		data, from, err := st.fetchFrom(ctx, meta, idx, ps, pace)
		st.s.xferNanos.Add(int64(time.Since(began)))
		if err == nil {
			return data, from, nil
		}
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		if errors.Is(err, errLocalStore) {
			// This host cannot store it (disk full): no parent helps, and
			// asking again would download it again for BlockTimeout.
			return nil, 0, err
		}
		lastErr = err
		st.mu.Lock()
		delete(st.assign, idx) // ask again
		st.mu.Unlock()
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return nil, 0, err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// fetchFrom tries the parents in order; in the end game a slow transfer is
// duplicated to the next parent and the first verified copy wins.
func (st *swarmTask) fetchFrom(ctx context.Context, meta blockstore.Task, idx int, ps []*api.Parent, pace pacer) ([]byte, From, error) {
	size := meta.BlockLen(idx)
	type res struct {
		data []byte
		p    *api.Parent
		err  error
	}
	fctx, cancel := context.WithCancel(ctx)
	results := make(chan res, len(ps))
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }() // losers of a steal are cancelled, then awaited
	start := func(p *api.Parent) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data, err := st.getBlock(fctx, p, idx, size, pace)
			results <- res{data, p, err}
		}()
	}
	next, running := 1, 1
	start(ps[0])
	stealTick := time.NewTicker(250 * time.Millisecond)
	defer stealTick.Stop()
	began := time.Now()
	var errs []error
	var laggard *api.Parent // the parent a laggard steal duplicated
	for running > 0 {
		select {
		case r := <-results:
			running--
			if r.err == nil {
				cancel()
				if laggard != nil && r.p != laggard && running > 0 {
					st.slow(laggard, idx)
				}
				return r.data, fromOf(r.p), nil
			}
			errs = append(errs, fmt.Errorf("parent %s: %w", r.p.GetHostId(), r.err))
			if ctx.Err() != nil {
				return nil, 0, ctx.Err()
			}
			if errors.Is(r.err, errLocalStore) {
				return nil, 0, r.err
			}
			if running == 0 && next < len(ps) {
				start(ps[next])
				next, running = next+1, running+1
				began = time.Now()
			}
		case <-stealTick.C:
			st.mu.Lock()
			typical := st.typical
			st.mu.Unlock()
			missing, _ := st.s.store.Missing(st.id)
			if running == 1 && shouldSteal(len(missing), endgameLeft, time.Since(began), typical, 500*time.Millisecond, len(ps)-next) {
				st.s.steals.Add(1)
				st.s.log.Debug("end game: duplicating slow block request", "task", st.id, "block", idx, "to", ps[next].GetHostId())
				start(ps[next])
				next, running = next+1, running+1
			} else if running == 1 && laggard == nil && next < len(ps) && isLaggard(time.Since(began), typical) {
				// Far slower than usual before the end game too: a laggard
				// parent would hold this fetch slot for as long as it likes.
				laggard = ps[next-1]
				st.s.steals.Add(1)
				st.s.log.Debug("duplicating a laggard's block request", "task", st.id, "block", idx, "from", laggard.GetHostId(), "to", ps[next].GetHostId())
				start(ps[next])
				next, running = next+1, running+1
			}
		}
	}
	return nil, 0, fmt.Errorf("block %d of task %s: every parent failed: %w", idx, st.id, errors.Join(errs...))
}

// Laggards: a transfer taking laggardFactor times the typical block time
// (and at least laggardMin) is duplicated to the next parent even before
// the end game; when the copy wins, the laggard's transfer counts as a
// failure (reported to the supernode, which deprioritises a parent failing
// repeatedly, and skipped here after three), so a parent whose link
// delivers a fraction of what it declares cannot hold the swarm's fetch
// slots.
const (
	laggardFactor = 8
	laggardMin    = 2 * time.Second
)

// isLaggard reports whether a transfer running for elapsed is a laggard's.
func isLaggard(elapsed, typical time.Duration) bool {
	return typical > 0 && elapsed >= max(laggardFactor*typical, laggardMin)
}

// slow records that parent p lost block idx to a duplicate of its transfer.
func (st *swarmTask) slow(p *api.Parent, idx int) {
	st.mu.Lock()
	st.fails[p.GetHostId()]++
	st.mu.Unlock()
	st.report(&api.BlockResult{Block: int32(idx), ParentId: p.GetHostId(), Error: "too slow: a duplicate from another parent delivered the block first"}, false)
	st.s.log.Debug("laggard parent lost a block to a duplicate", "task", st.id, "block", idx, "parent", p.GetHostId())
}

func fromOf(p *api.Parent) From {
	if p.GetIsSeed() {
		return FromSeed
	}
	return FromPeer
}

// errNotHeld marks a parent that answered 404 for a block it was assigned
// for: it does not hold it (evicted, found corrupt, or it lied).
var errNotHeld = errors.New("the parent does not hold the block")

// errBadDigest marks a block whose bytes did not match the seed's digest.
var errBadDigest = errors.New("block failed its sha256 check")

// errLocalStore marks a block this host received but could not store (disk
// full, task deleted): not the parent's fault, and no other parent helps.
var errLocalStore = errors.New("could not store the block here")

// errBusy marks a parent that refused with 429.
var errBusy = errors.New("parent busy")

// getBlock fetches one block from one parent, stores it (the store checks it
// against the seed's digest: each block is hashed once) and reports the result.
func (st *swarmTask) getBlock(ctx context.Context, p *api.Parent, idx int, size int64, pace pacer) ([]byte, error) {
	s := st.s
	began := time.Now()
	data, form, err := st.download(ctx, p, idx, size, pace)
	var storeErr error
	if err == nil {
		if perr := s.store.PutBlock(ctx, st.id, idx, data); errors.Is(perr, blockstore.ErrDigestMismatch) {
			err = fmt.Errorf("%w: %v", errBadDigest, perr)
		} else if perr != nil && ctx.Err() != nil {
			err = perr // we gave up meanwhile (a steal won, the caller left)
		} else if perr != nil {
			storeErr = perr
		}
	}
	dur := time.Since(began)
	r := &api.BlockResult{Block: int32(idx), ParentId: p.GetHostId(), Bytes: int64(len(data)), DurationUs: dur.Microseconds()}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil, err // we gave up (a steal won or the caller left): not the parent's fault
	}
	st.mu.Lock()
	switch {
	case err == nil && storeErr != nil:
		r.Error = "receiver could not store the block: " + storeErr.Error()
	case err == nil:
		r.Ok = true
		st.fails[p.GetHostId()] = 0
		if st.typical == 0 {
			st.typical = dur
		} else {
			st.typical = (st.typical*7 + dur) / 8
		}
	case errors.Is(err, errBadDigest):
		r.BadDigest, r.Error = true, err.Error()
		st.excluded[p.GetHostId()] = true
	case errors.Is(err, errBusy):
		r.Error = err.Error()
	case errors.Is(err, errNotHeld):
		r.Missing, r.Error = true, err.Error()
		st.fails[p.GetHostId()]++
	default:
		r.Error = err.Error()
		st.fails[p.GetHostId()]++
	}
	st.mu.Unlock()
	st.report(r, r.BadDigest || r.Missing)
	if storeErr != nil {
		return nil, fmt.Errorf("block %d of task %s: %w: %w", idx, st.id, errLocalStore, storeErr)
	}
	switch {
	case err == nil:
		st.received(idx, data, form) // counts the bytes on the wire, keeps a form (swarm_compress.go)
		s.mu.Lock()
		s.byParent[p.GetHostId()] += int64(len(data))
		s.mu.Unlock()
		if p.GetIsSeed() {
			s.blocksSeed.Add(1)
			s.bytesSeed.Add(int64(len(data)))
		} else {
			s.blocksPeers.Add(1)
			s.bytesPeers.Add(int64(len(data)))
		}
	case errors.Is(err, errBadDigest):
		s.bad.Add(1)
		s.log.Warn("parent served a corrupt block; excluding it for this task", "task", st.id, "block", idx, "parent", p.GetHostId())
	default:
		s.parentErrs.Add(1)
		if errors.Is(err, errBusy) {
			s.parentBusy.Add(1)
		}
		s.log.Debug("block fetch failed", "task", st.id, "block", idx, "parent", p.GetHostId(), "err", err)
	}
	return data, err
}

// download GETs one block; a transfer that stalls for StallTimeout is aborted.
// pacer applies the host's download rate limit to n bytes (Engine.wait).
type pacer func(ctx context.Context, n int64) error

func (st *swarmTask) download(ctx context.Context, p *api.Parent, idx int, size int64, pace pacer) (_, form []byte, err error) {
	ctx, span := st.startBlockSpan(ctx, p, idx)
	defer func() { telemetry.EndSpan(span, err) }()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	url := fmt.Sprintf("%s://%s/blocks/%s/%d", st.s.cfg.TLS.Scheme(), p.GetUploadAddr(), st.id, idx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set(api.TokenHeader, st.tokenFor())
	asked := st.s.cfg.Compress.Ask() // swarm_compress.go
	if asked {
		req.Header.Set("Accept-Encoding", blockhttp.EncodingZstd)
	}
	injectBlock(ctx, span, req.Header)
	began := time.Now()
	resp, err := st.s.http.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusTooManyRequests:
		return nil, nil, fmt.Errorf("%w: HTTP 429", errBusy)
	case http.StatusNotFound:
		return nil, nil, fmt.Errorf("%w: GET %s: HTTP 404", errNotHeld, url)
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return nil, nil, fmt.Errorf("GET %s: HTTP %d: %s", url, resp.StatusCode, msg)
	}
	want, encoded, err := bodyLength(resp, asked, size) // size, or a compressed form's
	if err != nil {
		return nil, nil, fmt.Errorf("%w: GET %s: %w", errBadDigest, url, err)
	}
	stall := time.AfterFunc(st.s.cfg.StallTimeout, func() { cancel(errors.New("transfer stalled")) })
	defer stall.Stop()
	buf := st.s.buffer(size)
	if encoded {
		buf = make([]byte, want)
	}
	n := 0
	for n < len(buf) {
		m, err := resp.Body.Read(buf[n:])
		n += m
		if m > 0 {
			stall.Stop()                                  // waiting for our own rate limit is not the parent stalling
			if perr := pace(ctx, int64(m)); perr != nil { // the host's --download-rate
				return nil, nil, fmt.Errorf("GET %s: download rate limiter: %w", url, perr)
			}
			stall.Reset(st.s.cfg.StallTimeout)
		}
		if err != nil {
			if err == io.EOF && n == len(buf) {
				break
			}
			if c := context.Cause(ctx); c != nil && ctx.Err() != nil {
				err = c
			}
			return nil, nil, fmt.Errorf("GET %s: after %d of %d bytes: %w", url, n, want, err)
		}
	}
	st.s.cfg.Compress.Transferred(int64(n), time.Since(began))
	if encoded {
		return st.decodeForm(buf, size, url)
	}
	return buf, nil, nil
}
