package supernode

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
)

// ErrContentChanged means the origin's content is no longer the stored
// task's (other validators or length).
var ErrContentChanged = errors.New("origin content changed")

// CheckAccess asks the origin whether a caller sending headers h may read
// the content at url, and whether that content is still meta's. It returns
// nil only when the origin accepted h (304 to a conditional HEAD with the
// stored validators, or a 2xx) and the validators and length match meta.
// Otherwise the error wraps the origin's answer (a *source.HTTPError with
// its status, source.ErrUnreachable) or ErrContentChanged. Origins that
// refuse HEAD (403, 405, 501) are asked with a one-byte ranged GET. The
// headers are used for these requests only: never stored or logged.
func (s *Seed) CheckAccess(ctx context.Context, url string, h http.Header, meta blockstore.Task) error {
	info, err := s.cfg.Source.Revalidate(ctx, url, h, meta.ETag, meta.LastModified)
	if errors.Is(err, source.ErrNotModified) {
		return nil
	}
	if headRefused(err) {
		info, err = s.cfg.Source.Stat(ctx, url, h)
	}
	if err != nil {
		return fmt.Errorf("check access to task %s at %s: the origin did not accept the caller's request: %w", meta.ID, url, err)
	}
	switch compareContent(meta, info) {
	case contentSame:
		return nil
	case contentUnknown:
		if info.Length == meta.Length {
			return nil // no validators on either side; the lengths agree
		}
	}
	return fmt.Errorf("check access to task %s at %s: the origin's validators or length (%d bytes; the seed holds %d) say it serves other content now; register the task again to fetch it: %w",
		meta.ID, url, info.Length, meta.Length, ErrContentChanged)
}

// headRefused reports whether err may be an origin refusing HEAD rather
// than the request (signed URLs sign the method, so HEAD gets 403).
func headRefused(err error) bool {
	var he *source.HTTPError
	return errors.As(err, &he) && (he.Status == http.StatusForbidden || he.Status == http.StatusMethodNotAllowed || he.Status == http.StatusNotImplemented)
}
