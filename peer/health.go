package peer

// Readiness checks for the /readyz of the processes that embed a peer
// (internal/telemetry.Handler takes them as telemetry.Check values).

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
)

// missedBeats is how many heartbeat intervals the supernode may leave
// unanswered before a peer is not ready (the supernode expires a host
// after as many silent intervals).
const missedBeats = 3

// CheckSupernode returns nil when the supernode answered a heartbeat within
// the last three heartbeat intervals, else why not.
func (s *SupernodeSwarm) CheckSupernode(context.Context) error {
	return beatFresh(s.cfg.Supernode, s.lastBeat.Load(), time.Duration(s.beatEvery.Load()), time.Now())
}

// beatFresh decides CheckSupernode: last is the last answer (unix nanos, 0
// = never), every the heartbeat interval.
func beatFresh(supernode string, last int64, every time.Duration, now time.Time) error {
	if last == 0 {
		return fmt.Errorf("supernode %s has not answered a heartbeat yet: check that it runs and that --supernode names it", supernode)
	}
	if every <= 0 {
		every = 2 * time.Second
	}
	if age := now.Sub(time.Unix(0, last)); age > missedBeats*every {
		return fmt.Errorf("supernode %s has not answered a heartbeat for %s (more than %d intervals of %s): check that it runs and is reachable",
			supernode, age.Round(time.Millisecond), missedBeats, every)
	}
	return nil
}

// StoreCheck returns a readiness check that fails once the store is closed.
func StoreCheck(s *blockstore.Store) func(context.Context) error {
	return func(context.Context) error {
		// A closed store answers every lookup with ErrClosed; an open one
		// does not know the empty ID.
		if _, err := s.Task(""); errors.Is(err, blockstore.ErrClosed) {
			return fmt.Errorf("block store %s: %w", s.Dir(), err)
		}
		return nil
	}
}

// Ready returns nil when the daemon can serve: its block store is open
// and, in a swarm, the supernode answered a heartbeat recently (see
// CheckSupernode); else every reason it cannot.
func (d *Daemon) Ready(ctx context.Context) error {
	err := StoreCheck(d.store)(ctx)
	if d.swarm != nil {
		err = errors.Join(err, d.swarm.CheckSupernode(ctx))
	}
	return err
}
