package supernode

import (
	"context"
	"errors"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dfly-p2p/dfly/blockstore"
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
	for _, held := range req.GetHeld() {
		v.applyHeld(h.GetId(), held)
	}
	return &api.AnnounceResponse{
		HeartbeatIntervalMs: sched.Config().HeartbeatInterval.Milliseconds(),
		TokenKey:            v.sn.key,
	}, nil
}

// applyHeld records a held task announced by a host. A task unknown to the
// scheduler (as after a supernode restart) is recreated from what the host
// says about it; one known with another shape is ignored.
func (v *service) applyHeld(hostID string, held *api.HeldTask) {
	sched := v.sn.sched
	id := held.GetTaskId()
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
	id := req.GetTaskId()
	if id == "" {
		var err error
		if req.GetDigest() != "" {
			id, err = blockstore.TaskIDForDigest(req.GetDigest())
		} else {
			id, err = blockstore.TaskIDForURL(req.GetUrl(), "", "")
		}
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "register task: derive a task id: %v", err)
		}
	}
	hdr := http.Header{}
	for _, h := range req.GetHeaders() {
		hdr.Add(h.GetName(), h.GetValue())
	}
	resp := &api.RegisterTaskResponse{Token: api.TaskToken(v.sn.key, id)}
	meta, err := v.sn.seed.Ensure(ctx, SeedRequest{TaskID: id, URL: req.GetUrl(), Header: hdr, Digest: req.GetDigest()})
	if ctx.Err() != nil {
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	resp.Meta = &api.TaskMeta{TaskId: id, Url: req.GetUrl()}
	if meta.ID != "" {
		resp.Meta = &api.TaskMeta{TaskId: id, Length: meta.Length, BlockSize: meta.BlockSize, Digest: meta.Digest,
			Etag: meta.ETag, LastModified: meta.LastModified, Url: req.GetUrl()}
		if _, known := v.sn.sched.Task(id); !known {
			// Forgotten while idle: register it again with the seed's blocks.
			v.sn.registerSeedHolding(meta)
		}
		// Record what the host already holds.
		if len(req.GetBitmap()) > 0 {
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

func (v *service) Sync(ctx context.Context, req *api.SyncRequest) (*api.SyncResponse, error) {
	if err := v.ensureHost(req.GetHostId()); err != nil {
		return nil, err
	}
	id, hostID := req.GetTaskId(), req.GetHostId()
	sched, seed := v.sn.sched, v.sn.seed
	info, ok := sched.Task(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "sync: task %s is not registered here (did the supernode restart?); call RegisterTask again", id)
	}
	// Known only from peers' announcements (after a restart), failed a while
	// ago, or lost blocks: (re)start seeding so that digests become known.
	seed.Resume(id, info.URL)
	wctx, cancel := context.WithTimeout(ctx, v.sn.cfg.SyncWait)
	seed.WaitReady(wctx, id)
	cancel()
	if len(req.GetResults()) > 0 {
		results := make([]Result, 0, len(req.GetResults()))
		for _, r := range req.GetResults() {
			results = append(results, Result{Block: int(r.GetBlock()), ParentID: r.GetParentId(), OK: r.GetOk(), BadDigest: r.GetBadDigest(),
				Bytes: r.GetBytes(), Duration: time.Duration(r.GetDurationUs()) * time.Microsecond})
			if r.GetBadDigest() {
				v.sn.log.Warn("host reported a bad block; parent blocked for the task", "task", id, "reporter", hostID, "parent", r.GetParentId(), "block", r.GetBlock())
			}
		}
		sched.Report(id, hostID, results)
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
		seed.WaitBlocks(wctx, id, pending)
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
	v.sn.sched.Leave(req.GetHostId(), req.GetTaskId())
	return &api.LeaveResponse{}, nil
}
