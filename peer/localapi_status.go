package peer

// GET /v1/status?window=5m on the local API: is P2P working on this host?
// The answer is a p2pstatus.Host — supernode configured and reachable,
// tasks in flight, bytes by provenance and errors in the window (kept by
// the daemon's Recent), the version, and the verdict of p2pstatus.Decide.
// Every local user may ask: the errors carry no URL query strings. See
// docs/status.md; `dfctl status` prints it in plain words.

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/dfly-p2p/dfly/internal/p2pstatus"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// Status returns what the host did in the last window (cut to [10s, 1h])
// and its verdict.
func (d *Daemon) Status(window time.Duration) p2pstatus.Host {
	now := time.Now()
	w := d.recent.Window(window)
	st := p2pstatus.Host{
		Version: telemetry.Version(), Time: now, Window: p2pstatus.FormatWindow(w.Window), WindowSeconds: w.Window.Seconds(),
		TasksInFlight: w.TasksInFlight, Bytes: w.Bytes, Share: w.Bytes.Share(), Downloads: w.Downloads,
		OriginFallbacks: w.Fallbacks, Errors: w.Errors,
	}
	if st.Errors == nil {
		st.Errors = []p2pstatus.Error{}
	}
	in := p2pstatus.Input{Window: w.Window, Bytes: w.Bytes, Fallbacks: w.Fallbacks, DownloadsFailed: w.Downloads.Failed}
	if d.swarm != nil {
		st.HostID = d.swarm.HostID()
		st.Supernode, in.Unreachable = supernodeView(d.cfg.Supernode, d.swarm.lastBeat.Load(), time.Duration(d.swarm.beatEvery.Load()), now)
		in.Configured, in.Reachable = true, st.Supernode.Reachable
	}
	st.Verdict = p2pstatus.Decide(in)
	return st
}

// supernodeView is the host's view of its supernode from the last
// answered heartbeat (unix nanos, 0 = never) and the heartbeat interval:
// reachable when it answered within the last three intervals (as
// CheckSupernode, the readiness check, decides), and if not, why.
func supernodeView(addr string, last int64, every time.Duration, now time.Time) (p2pstatus.Supernode, string) {
	if every <= 0 {
		every = 2 * time.Second
	}
	sn := p2pstatus.Supernode{Configured: true, Address: addr, HeartbeatInterval: every.String(),
		Reachable: beatFresh(addr, last, every, now) == nil}
	why := fmt.Sprintf("supernode %s unreachable: it never answered a heartbeat (is it running, and does --supernode name it?)", addr)
	if last != 0 {
		t := time.Unix(0, last)
		sn.LastHeartbeat, sn.HeartbeatAgoSeconds = &t, max(now.Sub(t), 0).Seconds()
		why = fmt.Sprintf("supernode %s unreachable: last heartbeat %s (heartbeats every %s)", addr, p2pstatus.Ago(t, now), every)
	}
	return sn, why
}

// hostStats is the host's counters for the heartbeat (SwarmConfig.HostStats).
func (d *Daemon) hostStats() *api.HostStats {
	t := d.recent.Totals()
	hs := &api.HostStats{
		StartedUnixMs: t.Started.UnixMilli(), BytesLocal: t.Bytes.Local, BytesOrigin: t.Bytes.Origin, BytesSeed: t.Bytes.Seed,
		BytesPeers: t.Bytes.Peers, DownloadsOk: t.Downloads.OK, DownloadsFailed: t.Downloads.Failed,
		OriginFallbacks: t.Fallbacks, TasksActive: int32(t.TasksInFlight), Version: telemetry.Version(),
	}
	if e := t.LastError; e != nil {
		hs.LastError, hs.LastErrorUnixMs = e.Message, e.Time.UnixMilli()
	}
	return hs
}

func (a *localAPI) status(w http.ResponseWriter, r *http.Request) {
	window, err := p2pstatus.ParseWindow(r.URL.Query().Get("window"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, a.d.Status(window))
}

// Status asks the daemon what it did in the last window (0: the default,
// five minutes) and whether P2P works (GET /v1/status).
func (c *DaemonClient) Status(ctx context.Context, window time.Duration) (p2pstatus.Host, error) {
	path := "/v1/status"
	if window > 0 {
		path += "?window=" + url.QueryEscape(window.String())
	}
	var st p2pstatus.Host
	err := c.getJSON(ctx, path, &st)
	return st, err
}
