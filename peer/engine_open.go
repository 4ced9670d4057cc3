package peer

// Opening a task: Engine.Open and what it asks the origin.
//
// Open is single-flight: concurrent Opens of the same request share one
// operation (and its result or its error), and the task's creation — or its
// replacement when the origin's content changed — is single-flight per task
// ID across all requests, so a task is published (in Engine.tasks) only
// once its store entry exists with its final metadata.
//
// A task already in the store is used without fetching it again, but not
// always without asking the origin:
//   - a task whose ID is derived from its URL (not from an OCI digest, and
//     not pinned by a --digest equal to its verified digest) is revalidated
//     with one conditional HEAD: unchanged → the stored blocks are used;
//     changed → the task is deleted and fetched anew; origin unreachable →
//     the stored content is used, with a warning;
//   - a private task (fetched with credentials, see source.Sensitive) is
//     handed out only after the origin accepted the caller's own headers
//     (2xx or 304), on every Open; an unreachable origin or a refusal
//     fails the Open with the origin's error.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/internal/telemetry"
)

// ID returns the task ID a request maps to: Request.TaskID when set, which
// must be the ID derived from the request itself (TaskIDForDigest of its
// digest, or TaskIDForURL of its URL and tag), else the URL-derived ID. So
// a caller can never make content known under another content's ID.
func (r Request) ID() (string, error) {
	if r.E2E {
		return blockstore.TaskIDForE2E(r.TaskID, r.URL, r.Tag, r.Digest)
	}
	return blockstore.TaskIDFor(r.TaskID, r.URL, r.Tag, r.Digest)
}

// Open resolves a task and returns its shared handle (see the top of this
// file for when it asks the origin). A task not in the store is created
// from the swarm's Resolve or the origin's Stat.
func (e *Engine) Open(ctx context.Context, req Request) (_ *Task, err error) {
	ctx, span := e.startOpenSpan(ctx, req)
	defer func() { telemetry.EndSpan(span, err) }()
	id, err := req.ID()
	if err != nil {
		return nil, err
	}
	if req.Digest != "" {
		if _, _, err := blockstore.ParseDigest(req.Digest); err != nil {
			return nil, err
		}
	}
	if req.E2E {
		t, err := e.openE2E(ctx, req, id)
		if !errors.Is(err, errNoTaskKey) {
			return t, err
		}
		e.log.Warn("end-to-end encryption needs the task key from the supernode, which is not to be had; fetching the content in the clear",
			"task", id, "err", err)
		req = plainRequest(req)
		if id, err = req.ID(); err != nil {
			return nil, err
		}
	}
	o := &opener{e: e, id: id, req: req, cred: credentials(req.Header)}
	return e.opens.do(ctx, o.key(), o.open)
}

// opener is one Open: the request and what is derived from it.
type opener struct {
	e    *Engine
	id   string
	req  Request
	cred string          // fingerprint of the request's headers when they are sensitive, else ""
	x    *blockstore.E2E // the key of an end-to-end encrypted task, else nil
}

// key identifies the Opens that can share one operation: same task, URL,
// credentials and digest.
func (o *opener) key() string {
	return strings.Join([]string{o.id, o.req.URL, o.cred, strings.ToLower(o.req.Digest)}, "\x00")
}

// credentials fingerprints headers that may carry credentials ("" when none
// do): two requests with the same fingerprint present the same credentials.
func credentials(h http.Header) string {
	if !source.Sensitive(h) {
		return ""
	}
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, http.CanonicalHeaderKey(k))
	}
	slices.Sort(names)
	s := sha256.New()
	for _, k := range names {
		for _, v := range h.Values(k) {
			fmt.Fprintf(s, "%s\x00%s\x00", k, v)
		}
	}
	return hex.EncodeToString(s.Sum(nil))
}

// created is the result of a task's creation or replacement.
type created struct {
	t       *Task
	cred    string // the credentials it was created with
	private bool
	existed bool // the task was in the store already: nothing was created
}

// maxOpenRounds bounds how often one Open goes round when other Opens
// create or replace the task under it.
const maxOpenRounds = 4

func (o *opener) open(ctx context.Context) (*Task, error) {
	e := o.e
	for round := 0; round < maxOpenRounds; round++ {
		meta, err := e.store.Task(o.id)
		if errors.Is(err, blockstore.ErrNotFound) {
			c, err := e.mutations.do(ctx, o.id, o.createIfMissing)
			if err != nil {
				return nil, err
			}
			if !c.existed && (c.cred == o.cred || !c.private) {
				return o.adopt(c.t)
			}
			continue // stored meanwhile, or created with other credentials: check ours
		}
		if err != nil {
			return nil, err
		}
		t := e.handle(o.id, o.req)
		v, err := o.check(ctx, meta)
		if err == nil && o.x != nil && (!meta.E2E || meta.E2EKeyID != o.x.KeyID()) {
			// Stored under another key (the supernode's secret changed):
			// unreadable, fetched again.
			e.log.Warn("stored copy of an end-to-end encrypted task is under another key; fetching it again", "task", o.id,
				"stored_key", meta.E2EKeyID, "key", o.x.KeyID())
			v = verdictChanged
		}
		if err != nil {
			return nil, err
		}
		switch v {
		case verdictSkip:
			return o.adopt(t)
		case verdictCurrent:
			if o.cred != "" && !meta.Private {
				// Fetched again with credentials: from now on the origin
				// admits every caller first.
				if _, err := e.store.UpdateTask(o.id, func(m *blockstore.Task) error { m.Private = true; return nil }); err != nil {
					return nil, fmt.Errorf("mark task %s private: %w", o.id, err)
				}
			}
			t.setRequest(o.req) // accepted just now: further origin fetches use it
			return o.adopt(t)
		}
		// verdictChanged
		c, err := e.mutations.do(ctx, o.id, func(mctx context.Context) (created, error) { return o.replace(mctx, meta) })
		if err != nil {
			return nil, err
		}
		if !c.existed && (c.cred == o.cred || !c.private) {
			return o.adopt(c.t)
		}
	}
	return nil, fmt.Errorf("open task %s: it was created or replaced by other downloads %d times while this one opened it; run again", o.id, maxOpenRounds)
}

// adopt finishes a successful Open: the request's digest, if any, becomes
// the task's.
func (o *opener) adopt(t *Task) (*Task, error) {
	if o.x != nil {
		t.e2e.Store(o.x)
	}
	if err := t.adoptDigest(o.req.Digest); err != nil {
		return nil, err
	}
	return t, nil
}

type verdict int

const (
	verdictSkip    verdict = iota // nothing to ask the origin
	verdictCurrent                // the origin admitted the caller and still has the stored content
	verdictChanged                // the origin has other content now
)

// check asks the origin what an Open of the stored task meta needs to know
// (see the top of this file). Errors fail the Open.
func (o *opener) check(ctx context.Context, meta blockstore.Task) (verdict, error) {
	e := o.e
	revalidate := o.urlDerived() && !pinned(meta, o.req)
	admit := meta.Private || o.cred != ""
	if !revalidate && !admit {
		return verdictSkip, nil
	}
	if o.req.URL == "" {
		return 0, fmt.Errorf("task %s holds private content: the request needs its origin URL and credentials, which the origin must accept first: %w", o.id, blockstore.ErrInvalid)
	}
	same, err := e.revalidate(ctx, o.req, meta)
	switch {
	case err == nil && (same || !revalidate):
		return verdictCurrent, nil
	case err == nil:
		return verdictChanged, nil
	case ctx.Err() != nil:
		return 0, ctx.Err()
	case transient(err) && !admit:
		e.log.Warn("origin not answering; using the stored content without revalidating it", "task", o.id, "url", o.req.URL, "err", err)
		return verdictCurrent, nil
	case transient(err):
		return 0, fmt.Errorf("task %s is private and the origin could not check this caller's credentials; try again when it answers: %w", o.id, err)
	}
	return 0, fmt.Errorf("ask origin about %s: %w", o.req.URL, err)
}

// urlDerived reports whether the task's ID is the one derived from the
// request's URL (so its content is whatever the origin has there now).
func (o *opener) urlDerived() bool {
	if o.req.URL == "" {
		return false
	}
	id, err := blockstore.TaskIDForURL(o.req.URL, o.req.Tag, "")
	if o.req.E2E {
		id = blockstore.E2ETaskID(id)
	}
	return err == nil && id == o.id
}

// pinned reports whether the request names the stored content by a digest
// the stored content was verified against.
func pinned(meta blockstore.Task, req Request) bool {
	return req.Digest != "" && meta.Verified && strings.EqualFold(meta.Digest, req.Digest)
}

// transient reports whether an origin error says nothing about the content
// (unreachable, timing out, failing): unlike a refusal (4xx).
func transient(err error) bool {
	var he *source.HTTPError
	if errors.As(err, &he) {
		return he.Status >= 500 || he.Status == http.StatusRequestTimeout || he.Status == http.StatusTooManyRequests
	}
	return errors.Is(err, source.ErrUnreachable) || errors.Is(err, context.DeadlineExceeded)
}

// methodRefused reports an origin that refuses HEAD (signed URLs, some
// registries' redirect targets): source.Stat then asks with a one-byte GET.
func methodRefused(err error) bool {
	var he *source.HTTPError
	return errors.As(err, &he) && (he.Status == http.StatusMethodNotAllowed || he.Status == http.StatusForbidden || he.Status == http.StatusNotImplemented)
}

// revalidate asks the origin, with the caller's headers, whether it still
// has the stored content: one conditional HEAD (a one-byte GET when HEAD is
// refused), bounded by Config.RevalidateTimeout.
func (e *Engine) revalidate(ctx context.Context, req Request, meta blockstore.Task) (same bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.RevalidateTimeout)
	defer cancel()
	info, err := e.src.Revalidate(ctx, req.URL, req.Header, meta.ETag, meta.LastModified)
	if methodRefused(err) {
		info, err = e.src.Stat(ctx, req.URL, req.Header)
	}
	if errors.Is(err, source.ErrNotModified) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return sameContent(meta, info), nil
}

// sameContent compares the stored task's length and validators with the
// origin's answer. With no validator on either side only the length can
// tell.
func sameContent(meta blockstore.Task, info source.Info) bool {
	if info.Length >= 0 && info.Length != meta.Length {
		return false
	}
	if meta.ETag != "" && info.ETag != "" {
		return meta.ETag == info.ETag
	}
	if meta.LastModified != "" && info.LastModified != "" {
		return meta.LastModified == info.LastModified
	}
	return true
}

// createIfMissing creates the task unless it is in the store (runs as the
// task's single mutation).
func (o *opener) createIfMissing(ctx context.Context) (created, error) {
	if _, err := o.e.store.Task(o.id); err == nil {
		return created{existed: true}, nil
	} else if !errors.Is(err, blockstore.ErrNotFound) {
		return created{}, err
	}
	return o.create(ctx)
}

// replace deletes the stored task checked (the origin's content changed
// since) and creates it anew, unless another Open replaced it already
// (runs as the task's single mutation).
func (o *opener) replace(ctx context.Context, checked blockstore.Task) (created, error) {
	e := o.e
	cur, err := e.store.Task(o.id)
	switch {
	case err == nil && !cur.CreatedAt.Equal(checked.CreatedAt):
		return created{existed: true}, nil
	case err != nil && !errors.Is(err, blockstore.ErrNotFound):
		return created{}, err
	}
	e.log.Warn("origin content changed since it was stored; fetching it again", "task", o.id, "url", o.req.URL,
		"etag", checked.ETag, "last_modified", checked.LastModified, "length", checked.Length)
	e.retire(o.id)
	if err == nil {
		if err := e.store.DeleteTask(o.id); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
			return created{}, fmt.Errorf("delete the outdated copy of task %s: %w", o.id, err)
		}
	}
	return o.create(ctx)
}

// create asks the swarm (else the origin) for the task's metadata and
// creates it in the store; the handle is published only then.
func (o *opener) create(ctx context.Context) (created, error) {
	e, id, req := o.e, o.id, o.req
	var meta blockstore.Task
	var err error
	if e.cfg.Swarm != nil {
		meta, err = e.cfg.Swarm.Resolve(ctx, req, id)
		if err != nil {
			e.fallbacks.Add(1)
			e.cfg.Recent.Fallback(err)
			e.log.Warn("swarm could not resolve the task; asking the origin", "task", id, "err", err)
		}
	}
	if e.cfg.Swarm == nil || err != nil {
		if req.URL == "" {
			return created{}, fmt.Errorf("task %s is not in the store and the request has no URL: %w", id, blockstore.ErrNotFound)
		}
		info, err := e.src.Stat(ctx, req.URL, req.Header)
		if err != nil {
			return created{}, fmt.Errorf("ask origin about %s: %w", req.URL, err)
		}
		if info.Length < 0 {
			return created{}, fmt.Errorf("origin %s did not report the content length; dfly needs it to cut the content into blocks: %w", req.URL, blockstore.ErrInvalid)
		}
		meta = blockstore.Task{Length: info.Length, Digest: info.Digest, ETag: info.ETag, LastModified: info.LastModified}
	}
	meta.ID = id
	meta.Tag = req.Tag
	if meta.Source == "" {
		meta.Source = req.URL
	}
	if req.Digest != "" {
		meta.Digest = req.Digest // the user's digest wins over the origin's
	}
	meta.Private = o.cred != ""
	meta.E2E, meta.E2EKeyID, meta.E2ESalt = false, "", ""
	if o.x != nil {
		meta.E2E, meta.E2EKeyID = true, o.x.KeyID()
	}
	stored, err := e.store.CreateTask(ctx, meta)
	if err != nil {
		return created{}, err
	}
	if o.cred != "" && !stored.Private { // it existed (a store shared with another engine)
		if _, err := e.store.UpdateTask(id, func(m *blockstore.Task) error { m.Private = true; return nil }); err != nil {
			return created{}, fmt.Errorf("mark task %s private: %w", id, err)
		}
	}
	return created{t: e.handle(id, req), cred: o.cred, private: o.cred != "" || stored.Private}, nil
}

// handle returns the open handle of a task that is in the store, making
// one if there is none.
func (e *Engine) handle(id string, req Request) *Task {
	e.mu.Lock()
	defer e.mu.Unlock()
	if t, ok := e.tasks[id]; ok {
		return t
	}
	t := &Task{e: e, id: id, req: req, inflight: map[int]*call{}, cache: newBlockCache(e.cfg.CacheBlocks),
		completing: make(chan struct{}, 1)}
	e.tasks[id] = t
	return t
}

// retire forgets the open handle of a task about to be replaced and stops
// it from storing anything more (waiting for the blocks being stored), so a
// download still running on it cannot mix the old content into the new.
func (e *Engine) retire(id string) {
	e.mu.Lock()
	t := e.tasks[id]
	delete(e.tasks, id)
	e.mu.Unlock()
	if t != nil {
		t.gen.Lock()
		t.retired = true
		t.gen.Unlock()
	}
}

// defaultRevalidateTimeout bounds the origin check of an Open.
const defaultRevalidateTimeout = 10 * time.Second
