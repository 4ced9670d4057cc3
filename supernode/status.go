package supernode

// Swarm status: GET /api/v1/status?window=5m (upload server and
// --api-listen; loopback or the admin token, like the preheat API), the
// supernode's half of `dfctl status --supernode`. Hosts send their counters
// (api.HostStats, cumulative since their daemon started) with every
// heartbeat; the statusBook keeps per host the last report and a thinned
// history, and turns it into what each host did in the window, judged by
// the rules of internal/p2pstatus. See docs/status.md.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dfly-p2p/dfly/internal/p2pstatus"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// sampleEvery thins the history: a report younger than this after the last
// kept sample only replaces the host's latest figures. With heartbeats
// every 2s a host keeps at most an hour / 15s = 240 samples.
const sampleEvery = 15 * time.Second

// counters are cumulative figures of a host (or of the seed).
type counters struct {
	local, origin, seed, peers int64
	ok, failed, fallbacks      int64
	served                     int64 // the seed's upload bytes
}

func (c counters) plus(o counters) counters {
	return counters{c.local + o.local, c.origin + o.origin, c.seed + o.seed, c.peers + o.peers,
		c.ok + o.ok, c.failed + o.failed, c.fallbacks + o.fallbacks, c.served + o.served}
}

// since is the increase from c to n, a counter that went down counting
// from zero again.
func (n counters) since(c counters) counters {
	d := func(a, b int64) int64 {
		if a < b {
			return a
		}
		return a - b
	}
	return counters{d(n.local, c.local), d(n.origin, c.origin), d(n.seed, c.seed), d(n.peers, c.peers),
		d(n.ok, c.ok), d(n.failed, c.failed), d(n.fallbacks, c.fallbacks), d(n.served, c.served)}
}

// sample is the counters at a time; started identifies the run of the
// process that counted them (a new run starts from zero).
type sample struct {
	at      time.Time
	started int64
	c       counters
}

// series is a thinned history of one process's counters, oldest first.
type series struct {
	kept   []sample
	latest sample // the newest report (zero at: none)
}

func (s *series) add(x sample) {
	s.latest = x
	if n := len(s.kept); n == 0 || x.at.Sub(s.kept[n-1].at) >= sampleEvery {
		s.kept = append(s.kept, x)
	}
}

// prune drops the samples no window needs any more: all older than cutoff
// but the newest of them (the base of the longest window).
func (s *series) prune(cutoff time.Time) {
	i := 0
	for i+1 < len(s.kept) && !s.kept[i+1].at.After(cutoff) {
		i++
	}
	s.kept = s.kept[i:]
}

// increase sums what was counted after from: from the last sample at or
// before from (or, when the first sample is younger, from zero if its run
// started after from, else from that sample) to the latest report,
// counting across restarts (a new started, or a counter that went down).
func (s *series) increase(from time.Time) counters {
	all := s.kept
	if !s.latest.at.IsZero() && (len(all) == 0 || s.latest.at.After(all[len(all)-1].at)) {
		all = append(all[:len(all):len(all)], s.latest)
	}
	if len(all) == 0 {
		return counters{}
	}
	i := 0
	for i+1 < len(all) && !all[i+1].at.After(from) {
		i++
	}
	var sum counters
	prev := all[i]
	if prev.at.After(from) && prev.started > from.UnixMilli() {
		sum = prev.c // its run began in the window: all it counted is new
	}
	for _, x := range all[i+1:] {
		if x.started != prev.started {
			sum = sum.plus(x.c)
		} else {
			sum = sum.plus(x.c.since(prev.c))
		}
		prev = x
	}
	return sum
}

// hostRecord is what the book knows of one host.
type hostRecord struct {
	id, uploadAddr, idc string
	seen                time.Time // last heartbeat
	left                time.Time // zero: has not left
	reporting           bool      // sends HostStats
	version             string
	tasksActive         int
	lastErr             *p2pstatus.Error
	hist                series
}

// statusBook keeps the hosts' reports. It is safe for concurrent use.
type statusBook struct {
	now     func() time.Time
	liveFor time.Duration // a host is live while its last heartbeat is younger
	started time.Time
	// seedCounters reads the seed's cumulative origin and upload bytes
	// (nil: none); sampled with the reports and on every status.
	seedCounters func() (origin, served int64)

	mu    sync.Mutex
	hosts map[string]*hostRecord
	seed  series
}

func newStatusBook(now func() time.Time, liveFor time.Duration, seedCounters func() (int64, int64)) *statusBook {
	if now == nil {
		now = time.Now
	}
	return &statusBook{now: now, liveFor: liveFor, started: now(), seedCounters: seedCounters, hosts: map[string]*hostRecord{}}
}

// report records a heartbeat of host h (st nil: the host does not report
// its counters).
func (b *statusBook) report(h *api.Host, st *api.HostStats) {
	if b == nil || h.GetId() == "" {
		return
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.hosts[h.GetId()]
	if r == nil {
		r = &hostRecord{id: h.GetId()}
		b.hosts[r.id] = r
	}
	r.uploadAddr, r.idc, r.seen, r.left = h.GetUploadAddr(), h.GetIdc(), now, time.Time{}
	r.reporting = st != nil
	if st != nil {
		r.version, r.tasksActive = st.GetVersion(), int(st.GetTasksActive())
		r.hist.add(sample{at: now, started: st.GetStartedUnixMs(), c: counters{
			local: st.GetBytesLocal(), origin: st.GetBytesOrigin(), seed: st.GetBytesSeed(), peers: st.GetBytesPeers(),
			ok: st.GetDownloadsOk(), failed: st.GetDownloadsFailed(), fallbacks: st.GetOriginFallbacks()}})
		if msg := st.GetLastError(); msg != "" {
			r.lastErr = &p2pstatus.Error{Time: time.UnixMilli(st.GetLastErrorUnixMs()), Message: p2pstatus.RedactURLs(msg), Host: r.id}
		} else {
			r.lastErr = nil
		}
	}
	b.sampleSeedLocked(now)
	b.pruneLocked(now)
}

// leave records that a host left the swarm (its daemon stopped cleanly).
func (b *statusBook) leave(hostID string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if r := b.hosts[hostID]; r != nil {
		r.left = b.now()
	}
}

func (b *statusBook) sampleSeedLocked(now time.Time) {
	if b.seedCounters == nil {
		return
	}
	origin, served := b.seedCounters()
	b.seed.add(sample{at: now, started: b.started.UnixMilli(), c: counters{origin: origin, served: served}})
}

// pruneLocked forgets hosts silent for longer than any window and the
// samples no window needs.
func (b *statusBook) pruneLocked(now time.Time) {
	cutoff := now.Add(-p2pstatus.MaxWindow)
	for id, r := range b.hosts {
		if r.seen.Before(cutoff) {
			delete(b.hosts, id)
			continue
		}
		r.hist.prune(cutoff)
	}
	b.seed.prune(cutoff)
}

// hosts returns every host seen in the window, sorted by id, each with its
// verdict, and the seed's origin and upload bytes in the window.
func (b *statusBook) window(window time.Duration) (hosts []p2pstatus.SwarmHost, seed counters) {
	now := b.now()
	from := now.Add(-window)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sampleSeedLocked(now)
	b.pruneLocked(now)
	for _, r := range b.hosts {
		if !r.seen.After(from) {
			continue
		}
		c := r.hist.increase(from)
		age := now.Sub(r.seen)
		h := p2pstatus.SwarmHost{
			ID: r.id, UploadAddr: r.uploadAddr, IDC: r.idc, Version: r.version,
			Live: r.left.IsZero() && age <= b.liveFor, Left: !r.left.IsZero(),
			LastSeen: r.seen, LastSeenAgoSeconds: age.Seconds(), Reporting: r.reporting, TasksActive: r.tasksActive,
			Bytes:           p2pstatus.Bytes{Local: c.local, Origin: c.origin, Seed: c.seed, Peers: c.peers},
			Downloads:       p2pstatus.Downloads{OK: c.ok, Failed: c.failed},
			OriginFallbacks: c.fallbacks,
		}
		if !h.Live {
			h.TasksActive = 0
		}
		h.Share = h.Bytes.Share()
		if r.lastErr != nil && r.lastErr.Time.After(from) {
			e := *r.lastErr
			h.LastError = &e
		}
		in := p2pstatus.Input{Configured: true, Reachable: h.Live || h.Left, Window: window, Bytes: h.Bytes,
			Fallbacks: h.OriginFallbacks, DownloadsFailed: h.Downloads.Failed,
			Unreachable: fmt.Sprintf("no heartbeat from this host for %s: it stopped without leaving the swarm, or cannot reach the supernode",
				p2pstatus.FormatWindow(age.Round(time.Second)))}
		h.Verdict = p2pstatus.Decide(in)
		if h.Left {
			h.Verdict.Reasons = append(h.Verdict.Reasons, "left the swarm "+p2pstatus.Ago(r.left, now))
		}
		hosts = append(hosts, h)
	}
	slices.SortFunc(hosts, func(a, b p2pstatus.SwarmHost) int { return strings.Compare(a.ID, b.ID) })
	return hosts, b.seed.increase(from)
}

// maxSeedErrors bounds the failed seed tasks a status lists.
const maxSeedErrors = 5

// SwarmStatus returns what the swarm did in the window (cut to
// [10s, 1h]): every host seen, its verdict and the swarm's.
func (s *Supernode) SwarmStatus(window time.Duration) p2pstatus.Swarm {
	window = min(max(window, p2pstatus.MinWindow), p2pstatus.MaxWindow)
	hosts, seedWin := s.status.window(window)
	out := p2pstatus.Swarm{
		Version: telemetry.Version(), Time: s.status.now(), Window: p2pstatus.FormatWindow(window), WindowSeconds: window.Seconds(),
		Supernode: p2pstatus.SupernodeRef{Advertise: s.cfg.Advertise},
		Hosts:     hosts, HostsSeen: len(hosts), TasksKnown: s.sched.Counts().Tasks,
		Seed: p2pstatus.SeedStatus{ID: s.cfg.SeedID, OriginBytes: seedWin.origin, UploadBytes: seedWin.served,
			OriginBytesTotal: s.seed.BytesFromOrigin(), UploadBytesTotal: s.upload.Stats().BytesServed},
		Errors: []p2pstatus.Error{},
	}
	if out.Hosts == nil {
		out.Hosts = []p2pstatus.SwarmHost{}
	}
	for _, h := range hosts {
		if h.Live {
			out.HostsLive++
		}
		out.TasksActive += h.TasksActive
		out.Bytes = out.Bytes.Plus(h.Bytes)
		out.Downloads.OK += h.Downloads.OK
		out.Downloads.Failed += h.Downloads.Failed
		out.OriginFallbacks += h.OriginFallbacks
		if h.LastError != nil {
			out.Errors = append(out.Errors, *h.LastError)
		}
	}
	out.Share = out.Bytes.Share()
	for _, t := range s.seed.State() {
		out.Seed.Tasks++
		switch t.State {
		case SeedComplete:
			out.Seed.Complete++
		case SeedFailed:
			out.Seed.Failed++
			if len(out.Seed.Errors) < maxSeedErrors {
				out.Seed.Errors = append(out.Seed.Errors, p2pstatus.RedactURLs("task "+t.ID+": "+t.Error))
			}
		default:
			out.Seed.Fetching++
		}
	}
	slices.SortStableFunc(out.Errors, func(a, b p2pstatus.Error) int { return b.Time.Compare(a.Time) })
	out.Verdict = p2pstatus.DecideSwarm(window, hosts)
	return out
}

// mountStatus serves GET /api/v1/status on the upload server and, with the
// preheat API, on --api-listen (both behind the admin guard).
func (s *Supernode) mountStatus(adminToken string) {
	sc := s.sched.Config()
	s.status = newStatusBook(sc.Now, time.Duration(sc.MissedHeartbeats)*sc.HeartbeatInterval, func() (int64, int64) {
		return s.seed.BytesFromOrigin(), s.upload.Stats().BytesServed
	})
	h := adminGuard(adminToken, http.HandlerFunc(s.serveStatus))
	s.upload.Handle("GET /api/v1/status", h)
	mux := http.NewServeMux()
	mux.Handle("GET /api/v1/status", h)
	if s.api != nil {
		mux.Handle("/", s.api)
	}
	s.api = mux
}

func (s *Supernode) serveStatus(w http.ResponseWriter, r *http.Request) {
	window, err := p2pstatus.ParseWindow(r.URL.Query().Get("window"))
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s.SwarmStatus(window)); err != nil {
		s.log.Debug("write /api/v1/status", "err", err)
	}
}
