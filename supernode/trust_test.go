package supernode

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// TestTaskIDsNameTheirContent: nobody can register a task id with a URL
// (or announce one) whose content the id does not name — before, any
// client could bind the id of an honest URL to its own content, and every
// later download of that URL got the attacker's bytes.
func TestTaskIDsNameTheirContent(t *testing.T) {
	o := startOrigin(t)
	rel := origin.Content{Size: 3 << 20, Seed: 1}
	honest := o.Add("release.bin", rel)
	relDigest := rel.Digest("sha256")
	evil := o.Add("evil.bin", origin.Content{Size: 3 << 20, Seed: 2})
	honestID, _ := blockstore.TaskIDForURL(honest, "", "")
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	defer sn.Close()
	c := dial(t, sn)
	attacker := newPeer(t, c, "attacker", "")
	attacker.announce(false)

	for _, tc := range []struct {
		name string
		req  *api.RegisterTaskRequest
	}{
		{"the honest URL's id with another URL", &api.RegisterTaskRequest{TaskId: honestID, Url: evil}},
		{"a made-up id", &api.RegisterTaskRequest{TaskId: "anything", Url: evil}},
		{"the honest id with a tag", &api.RegisterTaskRequest{TaskId: honestID, Url: honest, Tag: "v2"}},
		{"a digest's id with another digest", &api.RegisterTaskRequest{TaskId: "sha256-" + strings.Repeat("a", 64), Url: evil, Digest: "sha256:" + strings.Repeat("b", 64)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.HostId = "attacker"
			_, err := c.RegisterTask(context.Background(), tc.req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "does not name this content") {
				t.Fatalf("RegisterTask = %v, want InvalidArgument naming the mismatch", err)
			}
		})
	}
	if _, known := sn.Scheduler().Task(honestID); known {
		t.Fatal("a refused registration created the task")
	}

	// Announcing the honest id as held, with the evil URL, is ignored too
	// (the seed would otherwise resume the task from that URL).
	attacker.held[honestID] = blockstore.Bitmap{0xff}
	attacker.urls[honestID] = evil
	attacker.announce(true)
	if _, known := sn.Scheduler().Task(honestID); known {
		t.Fatal("an announced task whose id does not match its URL was accepted")
	}

	// The derived id (or none) works; a URL task with a --digest may keep
	// its URL id, and a digest task its digest id.
	for _, req := range []*api.RegisterTaskRequest{
		{Url: honest},
		{TaskId: honestID, Url: honest},
		{TaskId: honestID, Url: honest, Digest: relDigest},
		{TaskId: "sha256-" + strings.TrimPrefix(relDigest, "sha256:"), Url: honest, Digest: relDigest},
	} {
		req.HostId = "attacker"
		resp, err := c.RegisterTask(context.Background(), req)
		if err != nil || resp.Meta.SeedError != "" {
			t.Fatalf("RegisterTask(%v) = %v, %v", req, resp, err)
		}
	}
	for id, want := range map[string]int64{honestID: 3 << 20} {
		if info, ok := sn.Scheduler().Task(id); !ok || info.Length != want || info.URL != honest {
			t.Fatalf("task %s: %+v", id, info)
		}
	}
}

// TestHostsCannotSpeakForOthers: every call is bound to the secret of the
// process that first used the host id; another process cannot Sync, report
// bad blocks or Leave in its name.
func TestHostsCannotSpeakForOthers(t *testing.T) {
	o := startOrigin(t)
	url := o.Add("f.bin", origin.Content{Size: 2 << 20, Seed: 3})
	id, _ := blockstore.TaskIDForURL(url, "", "")
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	defer sn.Close()
	honest := newPeer(t, dial(t, sn), "peer-a", "")
	honest.announce(false)
	honest.register(id, url)
	evil := dial(t, sn)
	anon := dialAs(t, sn, "")

	ctx := context.Background()
	calls := map[string]func(api.SchedulerClient) error{
		"Announce": func(c api.SchedulerClient) error {
			_, err := c.Announce(ctx, &api.AnnounceRequest{Host: &api.Host{Id: "peer-a", UploadAddr: "evil:1"}})
			return err
		},
		"Sync with a bad-digest report": func(c api.SchedulerClient) error {
			_, err := c.Sync(ctx, &api.SyncRequest{HostId: "peer-a", TaskId: id, Results: []*api.BlockResult{{Block: 0, ParentId: "peer-b", BadDigest: true}}})
			return err
		},
		"RegisterTask": func(c api.SchedulerClient) error {
			_, err := c.RegisterTask(ctx, &api.RegisterTaskRequest{HostId: "peer-a", Url: url})
			return err
		},
		"Leave": func(c api.SchedulerClient) error {
			_, err := c.Leave(ctx, &api.LeaveRequest{HostId: "peer-a"})
			return err
		},
	}
	for name, call := range calls {
		for who, c := range map[string]api.SchedulerClient{"another process": evil, "no secret": anon} {
			if err := call(c); status.Code(err) != codes.Unauthenticated {
				t.Errorf("%s as peer-a from %s: %v, want Unauthenticated", name, who, err)
			}
		}
	}
	if !sn.Scheduler().HasHost("peer-a") {
		t.Fatal("a forged Leave removed peer-a")
	}
	if h, _ := sn.Scheduler().Host("peer-a"); h.UploadAddr != honest.host.UploadAddr {
		t.Fatalf("a forged Announce changed peer-a's upload address to %q", h.UploadAddr)
	}
	// The honest process still speaks for itself; once it left, the id is free.
	honest.announce(false)
	if _, err := honest.c.Leave(ctx, &api.LeaveRequest{HostId: "peer-a"}); err != nil {
		t.Fatal(err)
	}
	if err := calls["Announce"](evil); err != nil {
		t.Fatalf("announce after the honest host left: %v", err)
	}
}

// blockServer is a peer's upload server that serves the content's blocks,
// or wrong bytes of the right length when lie is set.
func blockServer(t *testing.T, content origin.Content, blockSize int64, lie bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(r.URL.Path, "/") // "", "blocks", task, idx
		idx, err := strconv.Atoi(parts[len(parts)-1])
		if err != nil || r.Header.Get(api.TokenHeader) == "" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		buf := make([]byte, blockstore.BlockLen(content.Size, blockSize, idx))
		content.ReadAt(buf, int64(idx)*blockSize)
		if lie {
			buf[0] ^= 0xff
		}
		w.Write(buf)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestBadBlockReports: a bad-block report blocks the parent for everyone
// only when the supernode's own check of that block fails; a false report
// only makes the reporter avoid the parent, and a host that keeps making
// false reports is no longer heard.
func TestBadBlockReports(t *testing.T) {
	o := startOrigin(t)
	content := origin.Content{Size: 4 << 20, Seed: 5}
	url := o.Add("f.bin", content)
	id, _ := blockstore.TaskIDForURL(url, "", "")
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	defer sn.Close()
	c := dial(t, sn)
	holders := map[string]*httptest.Server{
		"liar":   blockServer(t, content, 1<<20, true),
		"honest": blockServer(t, content, 1<<20, false),
	}
	for name, srv := range holders {
		p := newPeer(t, c, name, "")
		p.host.UploadAddr = strings.TrimPrefix(srv.URL, "http://")
		p.announce(false)
		p.register(id, url)
	}
	waitSeedComplete(t, sn, id)
	for name := range holders {
		p := newPeer(t, c, name, "")
		p.sync(&api.SyncRequest{TaskId: id, Have: []int32{0, 1, 2, 3}})
	}
	reporter := newPeer(t, c, "reporter", "")
	reporter.announce(false)
	reporter.register(id, url)
	other := newPeer(t, c, "other", "")
	other.announce(false)
	other.register(id, url)

	report := func(parent string, block int32) {
		reporter.sync(&api.SyncRequest{TaskId: id, Results: []*api.BlockResult{{Block: block, ParentId: parent, BadDigest: true}}})
	}
	waitChecks := func() {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			sn.checks.mu.Lock()
			n := len(sn.checks.inflight)
			sn.checks.mu.Unlock()
			if n == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("bad-block checks did not finish")
			}
		}
	}
	report("liar", 0)
	report("honest", 1)
	waitChecks()
	s := sn.Scheduler()
	if !s.Blocked(id, "liar") {
		t.Fatal("a confirmed liar is not blocked for the task")
	}
	if s.Blocked(id, "honest") || !s.Excluded(id, "reporter", "honest") {
		t.Fatal("a false report must only make the reporter avoid the parent")
	}
	resp := other.sync(&api.SyncRequest{TaskId: id, Want: []int32{1}})
	if len(resp.Assignments) != 1 || !slices.Contains(parentsOf(resp.Assignments[0]), "honest") || slices.Contains(parentsOf(resp.Assignments[0]), "liar") {
		t.Fatalf("another host's parents %v: want honest, never the liar", resp.Assignments)
	}
	// Two more false reports: the reporter is no longer heard at all.
	report("honest", 2)
	waitChecks()
	report("honest", 3)
	waitChecks()
	sn.checks.mu.Lock()
	n := sn.checks.falsely["reporter"]
	sn.checks.mu.Unlock()
	if n != maxFalseAccusations {
		t.Fatalf("false reports counted %d, want %d", n, maxFalseAccusations)
	}
	report("honest", 0)
	sn.checks.mu.Lock()
	started := len(sn.checks.inflight)
	sn.checks.mu.Unlock()
	if started != 0 || s.Blocked(id, "honest") {
		t.Fatalf("a discredited reporter's report was acted on (%d checks started)", started)
	}
}

// TestFalseClaims: a host that announced blocks it does not hold answers
// 404; the requester reports the block missing, the supernode checks, drops
// the claim, and after maxFalseClaims confirmed ones blocks the host for the
// task. A missing-block report against a host that holds the block counts
// as a false report against the reporter.
func TestFalseClaims(t *testing.T) {
	o := startOrigin(t)
	content := origin.Content{Size: 4 << 20, Seed: 6}
	url := o.Add("f.bin", content)
	id, _ := blockstore.TaskIDForURL(url, "", "")
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	defer sn.Close()
	c := dial(t, sn)
	empty := httptest.NewServer(http.NotFoundHandler())
	defer empty.Close()
	holders := map[string]string{
		"claimer": strings.TrimPrefix(empty.URL, "http://"),
		"honest":  strings.TrimPrefix(blockServer(t, content, 1<<20, false).URL, "http://"),
	}
	for name, addr := range holders {
		p := newPeer(t, c, name, "")
		p.host.UploadAddr = addr
		p.announce(false)
		p.register(id, url)
	}
	waitSeedComplete(t, sn, id)
	for name := range holders {
		newPeer(t, c, name, "").sync(&api.SyncRequest{TaskId: id, Have: []int32{0, 1, 2, 3}})
	}
	reporter := newPeer(t, c, "reporter", "")
	reporter.announce(false)
	reporter.register(id, url)
	s := sn.Scheduler()
	wait := func() {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			sn.checks.mu.Lock()
			n := len(sn.checks.inflight)
			sn.checks.mu.Unlock()
			if n == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("checks did not finish")
			}
		}
	}
	for b := range int32(maxFalseClaims) {
		if s.Blocked(id, "claimer") {
			t.Fatalf("blocked after %d false claims, want %d", b, maxFalseClaims)
		}
		reporter.sync(&api.SyncRequest{TaskId: id, Results: []*api.BlockResult{{Block: b, ParentId: "claimer", Missing: true}}})
		wait()
		if held, _ := s.Held(id, "claimer"); b < maxFalseClaims-1 && held != 3-int(b) {
			t.Fatalf("after %d confirmed false claims the claimer still holds %d blocks, want %d", b+1, held, 3-int(b))
		}
	}
	if !s.Blocked(id, "claimer") {
		t.Fatal("a host caught claiming blocks it lacks is not blocked for the task")
	}
	reporter.sync(&api.SyncRequest{TaskId: id, Results: []*api.BlockResult{{Block: 1, ParentId: "honest", Missing: true}}})
	wait()
	if s.Blocked(id, "honest") {
		t.Fatal("an honest holder was blocked on a false missing-block report")
	}
	if held, _ := s.Held(id, "honest"); held != 4 {
		t.Fatalf("the honest holder lost claims: %d", held)
	}
	sn.checks.mu.Lock()
	n := sn.checks.falsely["reporter"]
	sn.checks.mu.Unlock()
	if n != 1 {
		t.Fatalf("false reports of the reporter %d, want 1", n)
	}
}
