// Package p2pstatus answers "is P2P actually working?" for a host or a whole
// swarm: the JSON of a dfdaemon's GET /v1/status (Host) and of the
// supernode's GET /api/v1/status (Swarm), and the rules that turn what a
// host did in a window into a verdict (verdict.go). dfdaemon, the supernode
// and `dfctl status` share it; docs/status.md describes the endpoints.
package p2pstatus

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Verdicts, from best to worst (Disabled stands apart: no swarm by choice).
const (
	Working    = "working"     // bytes came mostly from the swarm
	Idle       = "idle"        // nothing fetched in the window: working as far as anyone can tell
	Degraded   = "degraded"    // mostly the origin, because the swarm failed
	NotWorking = "not working" // the supernode (or, seen from it, the host) is unreachable
	Disabled   = "disabled"    // no supernode configured: origin mode
)

// DefaultWindow is the window of a status request without ?window=.
const DefaultWindow = 5 * time.Minute

// MaxWindow is the longest window hosts and the supernode keep history for;
// longer windows are cut to it (the answer's window says so).
const MaxWindow = time.Hour

// MinWindow is the shortest window (the resolution of the history).
const MinWindow = 10 * time.Second

// ParseWindow parses the ?window= of a status request ("" = DefaultWindow)
// and clamps it to [MinWindow, MaxWindow].
func ParseWindow(s string) (time.Duration, error) {
	if s == "" {
		return DefaultWindow, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("window %q: want a positive duration such as 30s, 5m or 1h", s)
	}
	return min(max(d, MinWindow), MaxWindow), nil
}

// Bytes are bytes delivered to tasks by provenance. Local bytes were already
// in the host's store; the others were fetched.
type Bytes struct {
	Local  int64 `json:"local"`
	Origin int64 `json:"origin"`
	Seed   int64 `json:"seed"`
	Peers  int64 `json:"peers"`
}

// Fetched is the bytes that crossed the network (origin, seed and peers).
func (b Bytes) Fetched() int64 { return b.Origin + b.Seed + b.Peers }

// Swarm is the bytes that came from the swarm (peers and the seed).
func (b Bytes) Swarm() int64 { return b.Seed + b.Peers }

// Plus returns b + o.
func (b Bytes) Plus(o Bytes) Bytes {
	return Bytes{Local: b.Local + o.Local, Origin: b.Origin + o.Origin, Seed: b.Seed + o.Seed, Peers: b.Peers + o.Peers}
}

// Share returns the fractions (0..1) of the fetched bytes by provenance
// (all 0 when nothing was fetched).
func (b Bytes) Share() Share {
	f := b.Fetched()
	if f <= 0 {
		return Share{}
	}
	return Share{Peers: float64(b.Peers) / float64(f), Seed: float64(b.Seed) / float64(f),
		Origin: float64(b.Origin) / float64(f), Swarm: float64(b.Swarm()) / float64(f)}
}

// Share is where the fetched bytes came from, as fractions 0..1; Swarm is
// Peers + Seed.
type Share struct {
	Peers  float64 `json:"peers"`
	Seed   float64 `json:"seed"`
	Origin float64 `json:"origin"`
	Swarm  float64 `json:"swarm"`
}

// Downloads counts finished downloads (whole tasks, including preheats).
// Canceled ones were given up by their caller.
type Downloads struct {
	OK       int64 `json:"ok"`
	Failed   int64 `json:"failed"`
	Canceled int64 `json:"canceled,omitempty"`
}

// Error is a recent error: when it last happened, its message (URLs without
// their query strings), how often it happened in a row, and (in a Swarm)
// the host that had it.
type Error struct {
	Time    time.Time `json:"time"`
	Message string    `json:"message"`
	Count   int       `json:"count,omitempty"`
	Host    string    `json:"host,omitempty"`
}

// Verdict is the answer in one word (P2P) and why (Reasons, plain sentences).
type Verdict struct {
	P2P     string   `json:"p2p"`
	Reasons []string `json:"reasons"`
}

// OK reports whether the verdict is fine for `dfctl status`'s exit code 0:
// working, idle or disabled.
func (v Verdict) OK() bool { return v.P2P == Working || v.P2P == Idle || v.P2P == Disabled }

// Supernode is a host's view of its supernode.
type Supernode struct {
	Configured bool   `json:"configured"`
	Address    string `json:"address,omitempty"`
	// Reachable: the supernode answered a heartbeat within the last three
	// heartbeat intervals.
	Reachable bool `json:"reachable"`
	// LastHeartbeat is the last heartbeat the supernode answered (absent:
	// never); HeartbeatAgoSeconds is its age when the status was made.
	LastHeartbeat       *time.Time `json:"last_heartbeat,omitempty"`
	HeartbeatAgoSeconds float64    `json:"heartbeat_ago_seconds,omitempty"`
	HeartbeatInterval   string     `json:"heartbeat_interval,omitempty"`
}

// Host is a dfdaemon's GET /v1/status: what the host did in the window.
type Host struct {
	Version       string    `json:"version"`
	HostID        string    `json:"host_id,omitempty"`
	Time          time.Time `json:"time"`
	Window        string    `json:"window"`
	WindowSeconds float64   `json:"window_seconds"`
	Supernode     Supernode `json:"supernode"`
	// TasksInFlight is the number of tasks with a download running now.
	TasksInFlight   int       `json:"tasks_in_flight"`
	Bytes           Bytes     `json:"bytes"`
	Share           Share     `json:"share"`
	Downloads       Downloads `json:"downloads"`
	OriginFallbacks int64     `json:"origin_fallbacks"`
	Errors          []Error   `json:"errors"` // newest first, in the window
	Verdict         Verdict   `json:"verdict"`
}

// Swarm is the supernode's GET /api/v1/status: every host seen in the
// window, with its own verdict, and the swarm's.
type Swarm struct {
	Version       string    `json:"version"`
	Time          time.Time `json:"time"`
	Window        string    `json:"window"`
	WindowSeconds float64   `json:"window_seconds"`
	// HostsSeen announced in the window; HostsLive are still announcing.
	HostsSeen int `json:"hosts_seen"`
	HostsLive int `json:"hosts_live"`
	// TasksKnown is the number of tasks the scheduler knows now.
	TasksKnown      int          `json:"tasks_known"`
	TasksActive     int          `json:"tasks_active"` // downloads in flight on the hosts, by their last report
	Bytes           Bytes        `json:"bytes"`        // summed over the hosts, in the window
	Share           Share        `json:"share"`
	Downloads       Downloads    `json:"downloads"`
	OriginFallbacks int64        `json:"origin_fallbacks"`
	Seed            SeedStatus   `json:"seed"`
	Hosts           []SwarmHost  `json:"hosts"`
	Errors          []Error      `json:"errors"` // newest first, in the window
	Verdict         Verdict      `json:"verdict"`
	Supernode       SupernodeRef `json:"supernode"`
}

// SupernodeRef names the supernode that answered.
type SupernodeRef struct {
	Advertise string `json:"advertise"` // the seed's upload address given to peers
}

// SeedStatus is the supernode's seed: its tasks by state and its origin
// traffic (in the window and since the supernode started).
type SeedStatus struct {
	ID               string `json:"id"`
	Tasks            int    `json:"tasks"`
	Complete         int    `json:"complete"`
	Fetching         int    `json:"fetching"`
	Failed           int    `json:"failed"`
	OriginBytes      int64  `json:"origin_bytes"` // in the window
	OriginBytesTotal int64  `json:"origin_bytes_total"`
	UploadBytes      int64  `json:"upload_bytes"` // served to peers, in the window
	UploadBytesTotal int64  `json:"upload_bytes_total"`
	// Errors of failed tasks (at most five; URLs without their queries).
	Errors []string `json:"errors,omitempty"`
}

// SwarmHost is one host in a Swarm.
type SwarmHost struct {
	ID         string `json:"id"`
	UploadAddr string `json:"upload_addr,omitempty"`
	IDC        string `json:"idc,omitempty"`
	Version    string `json:"version,omitempty"`
	// Live: the host announced within its last missed-heartbeat budget
	// (3 heartbeats).
	Live bool `json:"live"`
	// Left: the host left the swarm (its daemon stopped cleanly); such a
	// host is not live and is no sign of trouble.
	Left               bool      `json:"left,omitempty"`
	LastSeen           time.Time `json:"last_seen"`
	LastSeenAgoSeconds float64   `json:"last_seen_ago_seconds"`
	// Reporting: the host sends its counters with its heartbeats (older
	// daemons and embedded dfget leeches do not: their figures are 0).
	Reporting       bool      `json:"reporting"`
	TasksActive     int       `json:"tasks_active"`
	Bytes           Bytes     `json:"bytes"`
	Share           Share     `json:"share"`
	Downloads       Downloads `json:"downloads"`
	OriginFallbacks int64     `json:"origin_fallbacks"`
	LastError       *Error    `json:"last_error,omitempty"`
	Verdict         Verdict   `json:"verdict"`
}

var urlInText = regexp.MustCompile(`https?://[^\s"'<>]+`)

// RedactURLs drops the query strings, fragments and credentials of the
// URLs in msg: a signed URL's query is a credential, and status answers
// every local user of a host (and goes to the supernode).
func RedactURLs(msg string) string {
	return urlInText.ReplaceAllStringFunc(msg, func(s string) string {
		// Punctuation after a URL ("GET URL: HTTP 404") is not part of it.
		trimmed := strings.TrimRight(s, ":,;.)")
		tail := s[len(trimmed):]
		u, err := url.Parse(trimmed)
		if err != nil {
			return "[URL]" + tail
		}
		if u.RawQuery == "" && u.Fragment == "" && u.User == nil && !u.ForceQuery {
			return s
		}
		u.RawQuery, u.Fragment, u.User, u.ForceQuery = "", "", nil, false
		return u.String() + tail
	})
}
