package supernode

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
)

// resolved is what a seed run starts from.
type resolved struct {
	task blockstore.Task
	// validated is when the origin confirmed task (created or revalidated
	// it); zero when it was not asked.
	validated time.Time
	// waiting: the stored copy is private and the request brings no
	// credentials to ask the origin with, so nothing is fetched.
	waiting bool
}

// resolve returns the task in the store, creating it from the origin's Stat
// or revalidating a stored copy:
//   - a content-addressed task (id "sha256-HEX") is never revalidated: its
//     id names its content, which is verified against that digest;
//   - so is a copy verified against the digest the request declares;
//   - a private copy (fetched with credentials) is used as it is when the
//     request brings no credentials, or credentials the origin refuses
//     (resolved.waiting);
//   - otherwise the origin is asked with the stored validators: 304, or a
//     200 with the same validators and length, keeps the copy; a 200
//     describing other content retires it (blocks and digests dropped,
//     OnReset) and creates the new content; any other answer fails.
func (s *Seed) resolve(ctx context.Context, req SeedRequest) (resolved, error) {
	store := s.cfg.Store
	addressed := false
	if req.E2E != blockstore.IsE2ETaskID(req.TaskID) || req.E2E && req.PlainID != "" && blockstore.E2ETaskID(req.PlainID) != req.TaskID {
		return resolved{}, fmt.Errorf("seed task %s: the id is not the (end-to-end: %v) id of this request: %w", req.TaskID, req.E2E, blockstore.ErrInvalid)
	}
	if d, ok := digestOfTaskID(req.contentID()); ok {
		addressed = true
		if req.Digest == "" {
			req.Digest = d
		} else if !sameDigest(req.Digest, d) {
			return resolved{}, fmt.Errorf("seed task %s: the request declares digest %s, but the task id names %s; register it under the id of its digest: %w",
				req.TaskID, req.Digest, d, blockstore.ErrInvalid)
		}
	}
	creds := source.Sensitive(req.Header)
	cached, err := store.Task(req.TaskID)
	if errors.Is(err, blockstore.ErrNotFound) && req.E2E && req.PlainID == "" {
		// Resumed from peers' announcements: which content the id names
		// is known only from a registration, which carries it.
		return resolved{}, fmt.Errorf("seed task %s: end-to-end encrypted task not in the seed's store; a host registering it starts it: %w", req.TaskID, blockstore.ErrNotFound)
	}
	if err == nil && cached.E2E != req.E2E {
		return resolved{}, fmt.Errorf("seed task %s: stored with end-to-end encryption %v, requested %v: %w", req.TaskID, cached.E2E, req.E2E, blockstore.ErrInvalid)
	}
	if errors.Is(err, blockstore.ErrNotFound) {
		info, err := s.cfg.Source.Stat(ctx, req.URL, req.Header)
		if err != nil {
			return resolved{}, fmt.Errorf("seed task %s: stat origin %s: %w", req.TaskID, req.URL, err)
		}
		t, err := s.create(ctx, req, info)
		return resolved{task: t, validated: time.Now()}, err
	}
	if err != nil {
		return resolved{}, fmt.Errorf("look up task %s in the seed's store: %w", req.TaskID, err)
	}
	switch {
	case cached.Private && !creds:
		return resolved{task: cached, waiting: true}, nil
	case addressed:
		// The id names the content, which is verified against it: nothing
		// to revalidate.
		if !sameDigest(cached.Digest, req.Digest) {
			if cached, err = store.UpdateTask(req.TaskID, func(t *blockstore.Task) error { t.Digest = req.Digest; return nil }); err != nil {
				return resolved{}, fmt.Errorf("seed task %s: record the digest its id names: %w", req.TaskID, err)
			}
		}
		return resolved{task: cached}, nil
	case req.Digest != "" && cached.Verified && sameDigest(cached.Digest, req.Digest):
		// Verified against the digest the request declares.
		return resolved{task: cached}, nil
	}
	info, err := s.cfg.Source.Revalidate(ctx, req.URL, req.Header, cached.ETag, cached.LastModified)
	now := time.Now()
	if errors.Is(err, source.ErrNotModified) {
		s.log.Debug("seed cache revalidated", "task", req.TaskID)
		return resolved{task: cached, validated: now}, nil
	}
	if err != nil && cached.Private && lacksCredentials(err) {
		// The origin refused this request's credentials, which says nothing
		// about the content: the copy stays as it is for the hosts whose
		// credentials it accepts (the service refuses this one: CheckAccess).
		s.log.Info("origin refused a request's credentials for a private task; keeping the stored copy", "task", req.TaskID, "err", err)
		return resolved{task: cached, waiting: true}, nil
	}
	if err != nil {
		return resolved{}, fmt.Errorf("revalidate cached task %s at %s: %w", req.TaskID, req.URL, err)
	}
	switch compareContent(cached, info) {
	case contentSame:
		// The origin ignored the condition, but its validators are unchanged.
		return resolved{task: cached, validated: now}, nil
	case contentUnknown:
		// No validators to compare. A complete copy stays (as in the peers'
		// engine); a partial one is resumed only when a declared digest will
		// catch a mix of two versions, else it is fetched again.
		if cached.State == blockstore.StateComplete || cached.Digest != "" {
			return resolved{task: cached, validated: now}, nil
		}
		s.log.Info("origin sends no validators and no digest is declared; fetching the partial copy again rather than risk mixing two versions",
			"task", req.TaskID, "url", req.URL)
	default:
		s.log.Info("origin content changed; dropping the stored copy and fetching the new content",
			"task", req.TaskID, "url", req.URL, "old_length", cached.Length, "new_length", info.Length)
	}
	t, err := s.retire(ctx, req, info)
	return resolved{task: t, validated: now}, err
}

// retire drops the stored copy of a task whose origin content changed (its
// blocks and digests), tells OnReset that every copy of it is void, and
// creates the task anew from info.
func (s *Seed) retire(ctx context.Context, req SeedRequest, info source.Info) (blockstore.Task, error) {
	if err := s.cfg.Store.DeleteTask(req.TaskID); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
		return blockstore.Task{}, fmt.Errorf("drop stale copy of task %s: %w", req.TaskID, err)
	}
	s.cfg.OnReset(req.TaskID)
	return s.create(ctx, req, info)
}

// markPrivate records that blocks of a task are fetched with credentials.
// Private never goes back to false: whoever fetched it needed them, as far
// as the seed knows. (A revalidation with credentials alone does not make
// a copy fetched without them private.)
func (s *Seed) markPrivate(t blockstore.Task, creds bool) (blockstore.Task, error) {
	if !creds || t.Private {
		return t, nil
	}
	t, err := s.cfg.Store.UpdateTask(t.ID, func(t *blockstore.Task) error { t.Private = true; return nil })
	if err != nil {
		return blockstore.Task{}, fmt.Errorf("seed task %s: mark it private in the seed's store: %w", t.ID, err)
	}
	return t, nil
}

func (s *Seed) create(ctx context.Context, req SeedRequest, info source.Info) (blockstore.Task, error) {
	if info.Length < 0 {
		return blockstore.Task{}, fmt.Errorf("seed task %s: origin %s declares no Content-Length, so the content cannot be cut into blocks; peers fetch it from the origin", req.TaskID, req.URL)
	}
	digest := req.Digest
	if digest == "" {
		digest = info.Digest
	}
	creds := source.Sensitive(req.Header)
	t := blockstore.Task{
		ID: req.TaskID, Source: req.URL, Length: info.Length, Digest: digest,
		ETag: info.ETag, LastModified: info.LastModified, Private: creds,
	}
	if req.E2E {
		if s.keys == nil {
			return blockstore.Task{}, fmt.Errorf("seed task %s: this seed has no secret for end-to-end encrypted tasks: %w", req.TaskID, blockstore.ErrE2EKey)
		}
		var err error
		if t, err = s.keys.withE2E(t); err != nil {
			return blockstore.Task{}, fmt.Errorf("seed task %s: %w", req.TaskID, err)
		}
	}
	t, err := s.cfg.Store.CreateTask(ctx, t)
	if err != nil {
		return blockstore.Task{}, fmt.Errorf("seed task %s: create it in the store: %w", req.TaskID, err)
	}
	return t, nil
}

// contentMatch is how an origin's answer compares with a stored task.
type contentMatch int

const (
	contentChanged contentMatch = iota
	contentSame
	contentUnknown // neither has validators; the lengths agree
)

// compareContent compares the stored task with what the origin says now:
// by ETag when either has one, else by Last-Modified, and by length. A
// validator present on one side only counts as a change.
func compareContent(t blockstore.Task, info source.Info) contentMatch {
	if info.Length >= 0 && info.Length != t.Length {
		return contentChanged
	}
	switch {
	case t.ETag != "" || info.ETag != "":
		if t.ETag == info.ETag {
			return contentSame
		}
		return contentChanged
	case t.LastModified != "" || info.LastModified != "":
		if t.LastModified == info.LastModified {
			return contentSame
		}
		return contentChanged
	case info.Length == t.Length:
		return contentUnknown
	}
	return contentChanged
}

func sameDigest(a, b string) bool {
	aa, ah, err1 := blockstore.ParseDigest(a)
	ba, bh, err2 := blockstore.ParseDigest(b)
	return err1 == nil && err2 == nil && aa == ba && ah == bh
}

// digestOfTaskID returns the digest a content-addressed task id names
// (blockstore.TaskIDForDigest: "sha256-HEX" → "sha256:HEX").
func digestOfTaskID(id string) (string, bool) {
	algo, hexsum, ok := strings.Cut(id, "-")
	if !ok {
		return "", false
	}
	d := algo + ":" + hexsum
	if canon, err := blockstore.TaskIDForDigest(d); err != nil || canon != id {
		return "", false
	}
	return d, true
}
