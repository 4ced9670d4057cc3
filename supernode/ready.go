package supernode

import (
	"context"
	"errors"
	"fmt"

	"github.com/dfly-p2p/dfly/blockstore"
)

// Ready reports whether the supernode does its job (a telemetry.Check for
// /readyz): nil while its store is open and its gRPC server serves; an
// error saying what is wrong otherwise.
func (s *Supernode) Ready(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("supernode readiness: %w", err)
	}
	select {
	case <-s.stop:
		return errors.New("supernode: shutting down")
	default:
	}
	select {
	case <-s.grpcDone:
		return errors.New("supernode: the gRPC server stopped serving (see the log); restart the supernode")
	default:
	}
	// A lookup of an id no task has answers ErrNotFound from an open store.
	if _, err := s.store.Task("readyz"); errors.Is(err, blockstore.ErrClosed) {
		return fmt.Errorf("supernode: the seed's store is closed: %w", err)
	}
	return nil
}
