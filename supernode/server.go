package supernode

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// maxWants bounds the wanted blocks answered per Sync.
const maxWants = 256

// service implements api.SchedulerServer: it translates RPCs into scheduler
// and seed calls and holds no scheduling logic of its own.
type service struct {
	api.UnimplementedSchedulerServer
	sn *Supernode
}

func (v *service) Announce(_ context.Context, req *api.AnnounceRequest) (*api.AnnounceResponse, error) {
	h := req.GetHost()
	if h.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "announce: host.id is required")
	}
	if h.GetId() == v.sn.cfg.SeedID {
		return nil, status.Errorf(codes.InvalidArgument, "announce: host id %q is reserved for the supernode's seed; choose another", h.GetId())
	}
	sched := v.sn.sched
	sched.UpsertHost(HostInfo{ID: h.GetId(), UploadAddr: h.GetUploadAddr(), IDC: h.GetIdc(), Rack: h.GetRack(), Capacity: h.GetUploadCapacity()},
		int(req.GetUploadsInFlight()))
	v.sn.status.report(h, req.GetStats())
	for _, held := range req.GetHeld() {
		v.applyHeld(h.GetId(), held)
	}
	resp := &api.AnnounceResponse{
		HeartbeatIntervalMs: sched.Config().HeartbeatInterval.Milliseconds(),
		TokenPublicKeys:     [][]byte{v.sn.TokenPublicKey()},
	}
	if o := v.sn.orders; o != nil {
		o.report(h.GetId(), req.GetPreheatReports())
		resp.Preheat = o.pending(h.GetId())
	}
	return resp, nil
}

// consistentID reports whether id names the content of url + tag (or is
// content-addressed, so that the content is checked against the digest the
// id carries).
func consistentID(id, url, tag string) bool {
	if d, ok := digestOfID(id); ok {
		_, err := blockstore.TaskIDForDigest(d)
		return err == nil
	}
	want, err := blockstore.TaskIDForURL(url, tag, "")
	return err == nil && want == id
}

// digestOfID returns the digest of a content-addressed task id ("sha256-HEX").
func digestOfID(id string) (string, bool) {
	algo, hexsum, ok := strings.Cut(id, "-")
	if !ok {
		return "", false
	}
	return algo + ":" + hexsum, true
}

// applyHeld records a held task announced by a host. A task unknown to the
// scheduler (as after a supernode restart) is recreated from what the host
// says about it; one known with another shape is ignored.
func (v *service) applyHeld(hostID string, held *api.HeldTask) {
	sched := v.sn.sched
	id := held.GetTaskId()
	if held.GetE2E() {
		// An end-to-end id derives from the plain one, which a digest-named
		// holding does not carry: such a holding counts only for a task the
		// supernode knows (registered with its digest since it started).
		plain, err := blockstore.TaskIDForURL(held.GetUrl(), held.GetTag(), "")
		if _, known := sched.Task(id); (err != nil || blockstore.E2ETaskID(plain) != id) && !known {
			v.sn.log.Debug("host announced an end-to-end encrypted task not registered since the supernode started; ignored until it is", "host", hostID, "task", id)
			return
		}
	} else if !consistentID(id, held.GetUrl(), held.GetTag()) {
		v.sn.log.Warn("host announced a task whose id does not match its URL; ignored", "host", hostID, "task", id)
		return
	}
	if t, ok := sched.Task(id); ok {
		if held.GetLength() != 0 && (t.Length != held.GetLength() || t.BlockSize != held.GetBlockSize()) {
			v.sn.log.Warn("host announced a task with another shape; ignored", "host", hostID, "task", id,
				"length", held.GetLength(), "block_size", held.GetBlockSize(), "want_length", t.Length, "want_block_size", t.BlockSize)
			return
		}
	} else if err := sched.EnsureTask(TaskInfo{ID: id, URL: held.GetUrl(), Length: held.GetLength(), BlockSize: held.GetBlockSize()}); err != nil {
		v.sn.log.Warn("host announced an unusable task; ignored", "host", hostID, "task", id, "err", err)
		return
	}
	if v.stale(id, held.GetEtag()) {
		v.sn.log.Debug("host announced blocks of content the origin has since changed; ignored", "host", hostID, "task", id)
		return
	}
	if err := sched.SetHolding(id, hostID, held.GetBitmap()); err != nil {
		v.sn.log.Warn("record holding", "host", hostID, "task", id, "err", err)
	}
}

// ensureHost makes sure hostID is known (a host that has not announced yet,
// as right after a supernode restart, is recorded without an upload address
// and so cannot be a parent until it announces).
func (v *service) ensureHost(hostID string) error {
	if hostID == "" {
		return status.Error(codes.InvalidArgument, "host_id is required")
	}
	if hostID == v.sn.cfg.SeedID {
		return status.Errorf(codes.InvalidArgument, "host id %q is reserved for the supernode's seed; choose another", hostID)
	}
	if !v.sn.sched.Touch(hostID) {
		v.sn.sched.UpsertHost(HostInfo{ID: hostID}, 0)
	}
	return nil
}

func (v *service) RegisterTask(ctx context.Context, req *api.RegisterTaskRequest) (*api.RegisterTaskResponse, error) {
	if err := v.ensureHost(req.GetHostId()); err != nil {
		return nil, err
	}
	if req.GetUrl() == "" {
		return nil, status.Error(codes.InvalidArgument, "register task: url is required (the seed fetches it from there)")
	}
	// The id always names the content (see blockstore.TaskIDFor), and says
	// whether it is the end-to-end encrypted representation.
	plainID, err := blockstore.TaskIDFor("", req.GetUrl(), req.GetTag(), req.GetDigest())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "register task: %v", err)
	}
	var id string
	if req.GetE2E() {
		id, err = blockstore.TaskIDForE2E(req.GetTaskId(), req.GetUrl(), req.GetTag(), req.GetDigest())
		if err == nil && id != blockstore.E2ETaskID(plainID) {
			// Named by its digest while the URL derives another id.
			plainID, err = blockstore.TaskIDForDigest(req.GetDigest())
		}
	} else {
		id, err = blockstore.TaskIDFor(req.GetTaskId(), req.GetUrl(), req.GetTag(), req.GetDigest())
	}
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "register task: %v", err)
	}
	hdr := http.Header{}
	for _, h := range req.GetHeaders() {
		hdr.Add(h.GetName(), h.GetValue())
	}
	sreq := SeedRequest{TaskID: id, URL: req.GetUrl(), Header: hdr, Digest: req.GetDigest()}
	if req.GetE2E() {
		sreq.E2E, sreq.PlainID = true, plainID
	}
	meta, err := v.sn.seed.Ensure(ctx, sreq)
	if ctx.Err() != nil {
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if meta.ID != "" && (meta.Private || source.Sensitive(hdr)) {
		// Private content (fetched with credentials): a token only for a
		// host whose own credentials the origin accepts for this content.
		if aerr := v.checkAccess(ctx, req.GetUrl(), hdr, meta); aerr == nil {
			v.sn.grants.grant(id, req.GetHostId())
		} else {
			v.sn.log.Info("refused a private task to a host the origin did not accept", "host", req.GetHostId(), "task", id, "err", aerr)
			return nil, status.Errorf(codes.PermissionDenied, "register task %s: the content is private and the origin did not accept this host's credentials for it: %v", id, aerr)
		}
	}
	resp := &api.RegisterTaskResponse{}
	resp.Meta = &api.TaskMeta{TaskId: id, Url: req.GetUrl()}
	if meta.ID != "" {
		// A token only for content the seed resolved (and, if private,
		// the origin accepted this host for): without one, no peer or seed
		// serves the host a block of it.
		var exp time.Time
		resp.Token, exp = v.sn.IssueToken(id, req.GetHostId())
		resp.TokenExpiresUnix = exp.Unix()
		resp.Meta = &api.TaskMeta{TaskId: id, Length: meta.Length, BlockSize: meta.BlockSize, Digest: meta.Digest,
			Etag: meta.ETag, LastModified: meta.LastModified, Url: req.GetUrl(), E2E: meta.E2E}
		if meta.E2E {
			// The key goes with the token, to whom the token goes.
			key, kerr := v.sn.seed.TaskKey(meta)
			if kerr != nil {
				v.sn.log.Error("no key for an end-to-end encrypted task", "task", id, "err", kerr)
				return nil, status.Errorf(codes.Internal, "register task %s: %v", id, kerr)
			}
			resp.TaskKey = key
		}
		if _, known := v.sn.sched.Task(id); !known {
			// Forgotten while idle: register it again with the seed's blocks.
			v.sn.registerSeedHolding(meta)
		}
		// Record what the host already holds (of this version of the content).
		if len(req.GetBitmap()) > 0 && !v.stale(id, req.GetEtag()) {
			if herr := v.sn.sched.SetHolding(id, req.GetHostId(), req.GetBitmap()); herr != nil {
				v.sn.log.Warn("record holding", "host", req.GetHostId(), "task", id, "err", herr)
			}
		}
	}
	if err != nil {
		resp.Meta.SeedError = err.Error()
	}
	return resp, nil
}

// accessChecker is the seed's check of a registrant's credentials.
type accessChecker interface {
	CheckAccess(ctx context.Context, url string, h http.Header, meta blockstore.Task) error
}

// checkAccess asks the origin whether it accepts the registrant's headers
// for this content. Only the origin the content came from can say so: for
// a content-addressed task the registrant's URL must be on the same
// scheme://host as the seed's source (else anyone could name a server of
// his own that says yes to everything, and get the private blob by its
// digest); a registry then checks the registrant's access to that blob in
// that repository.
func (v *service) checkAccess(ctx context.Context, rawURL string, h http.Header, meta blockstore.Task) error {
	if !sameOrigin(rawURL, meta.Source) {
		return fmt.Errorf("the content was fetched from another origin than %s; only that origin can vouch for a private copy", redactURL(rawURL))
	}
	c, ok := any(v.sn.seed).(accessChecker)
	if !ok {
		return errors.New("this supernode cannot check access to private content")
	}
	return c.CheckAccess(ctx, rawURL, h, meta)
}

// sameOrigin reports whether two URLs share scheme and host (and port).
func sameOrigin(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && ua.Host != "" && strings.EqualFold(ua.Scheme, ub.Scheme) && strings.EqualFold(ua.Host, ub.Host)
}

// redactURL is a URL without its query (signed URLs carry secrets there).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.RawQuery, u.User = "", nil
	return u.String()
}

// stale reports whether a holding of content with the given ETag is of
// another version than the seed's (the origin changed it since).
func (v *service) stale(id, etag string) bool {
	if etag == "" {
		return false
	}
	meta, err := v.sn.store.Task(id)
	return err == nil && meta.ETag != "" && meta.ETag != etag
}

func (v *service) Sync(ctx context.Context, req *api.SyncRequest) (*api.SyncResponse, error) {
	if err := v.ensureHost(req.GetHostId()); err != nil {
		return nil, err
	}
	began, waited := time.Now(), time.Duration(0) // scheduling time = all but the waits for the seed
	defer func() { v.sn.cfg.Metrics.observeSync(time.Since(began) - waited) }()
	id, hostID := req.GetTaskId(), req.GetHostId()
	sched, seed := v.sn.sched, v.sn.seed
	info, ok := sched.Task(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "sync: task %s is not registered here (did the supernode restart?); call RegisterTask again", id)
	}
	if meta, err := v.sn.store.Task(id); err == nil && meta.Private && !v.sn.grants.granted(id, hostID) {
		// Private content: parents and digests only for a host whose
		// credentials the origin accepted in this process (after a
		// restart the host registers again, bringing them).
		return nil, status.Errorf(codes.NotFound, "sync: task %s is private and this host's access has not been checked since the supernode started; call RegisterTask again with its credentials", id)
	}
	// Known only from peers' announcements (after a restart), failed a while
	// ago, or lost blocks: (re)start seeding so that digests become known.
	seed.Resume(id, info.URL)
	wctx, cancel := context.WithTimeout(ctx, v.sn.cfg.SyncWait)
	waited += timed(func() { seed.WaitReady(wctx, id) })
	cancel()
	if len(req.GetResults()) > 0 {
		results := make([]Result, 0, len(req.GetResults()))
		for _, r := range req.GetResults() {
			results = append(results, Result{Block: int(r.GetBlock()), ParentID: r.GetParentId(), OK: r.GetOk(), BadDigest: r.GetBadDigest(),
				Bytes: r.GetBytes(), Duration: time.Duration(r.GetDurationUs()) * time.Microsecond})
		}
		sched.Report(id, hostID, results)
		for _, r := range req.GetResults() {
			if (r.GetBadDigest() || r.GetMissing()) && r.GetParentId() != v.sn.cfg.SeedID && r.GetParentId() != hostID {
				what := "a bad block"
				if !r.GetBadDigest() {
					what = "a missing block"
				}
				v.sn.log.Warn("host reported "+what+"; checking it", "task", id, "reporter", hostID, "parent", r.GetParentId(), "block", r.GetBlock())
				v.sn.checks.report(id, hostID, r.GetParentId(), int(r.GetBlock()))
			}
		}
	}
	if have := req.GetHave(); len(have) > 0 {
		blocks := make([]int, len(have))
		for i, b := range have {
			blocks[i] = int(b)
		}
		if err := sched.AddBlocks(id, hostID, blocks); err != nil {
			return nil, status.Errorf(codes.NotFound, "sync: %v", err)
		}
	}
	wants := make([]int, 0, min(len(req.GetWant()), maxWants))
	for _, b := range req.GetWant() {
		if len(wants) == maxWants {
			break
		}
		wants = append(wants, int(b))
	}
	resp := &api.SyncResponse{}
	pending := seed.Prioritize(id, wants)
	if err := v.answerWants(id, hostID, wants, int(req.GetMaxAssignments()), resp); err != nil {
		return nil, err
	}
	if len(resp.Assignments) == 0 && len(pending) > 0 {
		// Nothing to do yet: wait (bounded) for the seed to store a wanted block.
		wctx, cancel := context.WithTimeout(ctx, v.sn.cfg.SyncWait)
		waited += timed(func() { seed.WaitBlocks(wctx, id, pending) })
		cancel()
		resp = &api.SyncResponse{}
		pending = seed.Prioritize(id, wants)
		if err := v.answerWants(id, hostID, wants, int(req.GetMaxAssignments()), resp); err != nil {
			return nil, err
		}
	}
	for _, b := range pending {
		resp.Pending = append(resp.Pending, int32(b))
	}
	_, stored, total := seed.TaskState(id)
	resp.SeedBlocks, resp.TotalBlocks = int32(stored), int32(total)
	if total == 0 {
		resp.TotalBlocks = int32(info.NumBlocks())
	}
	if err := seed.Err(id); err != nil {
		resp.SeedError = err.Error()
	}
	return resp, nil
}

// answerWants fills digests and assignments for wanted blocks. Only blocks
// whose digest the seed knows are assigned, so every block can be verified.
func (v *service) answerWants(id, hostID string, wants []int, limit int, resp *api.SyncResponse) error {
	store := v.sn.store
	known := map[int]bool{}
	for _, b := range wants {
		if sum, ok := store.BlockDigest(id, b); ok && !known[b] {
			known[b] = true
			resp.Digests = append(resp.Digests, &api.BlockDigest{Block: int32(b), Sha256: sum})
		}
	}
	as, err := v.sn.sched.Assign(id, hostID, wants, func(b int) bool { return known[b] }, limit)
	if err != nil {
		if errors.Is(err, ErrUnknownTask) {
			return status.Errorf(codes.NotFound, "sync: %v; call RegisterTask again", err)
		}
		return status.Errorf(codes.FailedPrecondition, "sync: %v", err)
	}
	v.sn.cfg.Metrics.assigned(as)
	for _, a := range as {
		pa := &api.Assignment{Block: int32(a.Block), Holders: int32(a.Holders)}
		for _, p := range a.Parents {
			pa.Parents = append(pa.Parents, &api.Parent{HostId: p.HostID, UploadAddr: p.UploadAddr, IsSeed: p.IsSeed})
		}
		resp.Assignments = append(resp.Assignments, pa)
	}
	return nil
}

func (v *service) Leave(_ context.Context, req *api.LeaveRequest) (*api.LeaveResponse, error) {
	if req.GetHostId() == "" {
		return nil, status.Error(codes.InvalidArgument, "leave: host_id is required")
	}
	if req.GetHostId() == v.sn.cfg.SeedID {
		// Nobody leaves on the seed's behalf: that would drop its holdings.
		return nil, status.Errorf(codes.InvalidArgument, "leave: host id %q is the supernode's seed", req.GetHostId())
	}
	v.sn.sched.Leave(req.GetHostId(), req.GetTaskId())
	if req.GetTaskId() == "" {
		v.sn.auth.forget(req.GetHostId())
		v.sn.grants.forget(req.GetHostId())
		v.sn.status.leave(req.GetHostId())
	}
	return &api.LeaveResponse{}, nil
}
