package supernode

import (
	"context"
	"errors"

	"github.com/dfly-p2p/dfly/blockstore"
)

// resolveCounted is resolve, counting the seed cache result of the run
// (Metrics.seedCached; a failed resolution counts nothing).
func (s *Seed) resolveCounted(ctx context.Context, req SeedRequest) (resolved, error) {
	before, err := s.cfg.Store.Task(req.TaskID)
	found := err == nil
	if err != nil && !errors.Is(err, blockstore.ErrNotFound) {
		found = true // resolve reports the store's failure
	}
	r, err := s.resolve(ctx, req)
	if err == nil {
		s.cfg.Metrics.seedCached(cacheResult(before, found, r))
	}
	return r, err
}

// cacheResult classifies a resolution: before is the stored task before it
// (found: there was one).
func cacheResult(before blockstore.Task, found bool, r resolved) string {
	switch {
	case !found:
		return cacheMiss
	case r.validated.IsZero():
		return cacheHit // the origin was not asked
	case !r.task.CreatedAt.Equal(before.CreatedAt):
		return cacheRefetched // retired and created anew
	default:
		return cacheRevalidated
	}
}
