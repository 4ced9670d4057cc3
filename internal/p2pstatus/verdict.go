package p2pstatus

import (
	"fmt"
	"strings"
	"time"
)

// SwarmShareMin is the share of fetched bytes the swarm (peers and seed)
// must deliver; below it, with swarm failures that fell back to the
// origin, a host is degraded.
const SwarmShareMin = 0.5

// Input is what the rules look at for one host over a window.
type Input struct {
	// Configured: the host has a supernode (dfdaemon --supernode); false
	// is origin mode.
	Configured bool
	// Reachable: the supernode answered one of the last three heartbeats
	// (seen from the supernode: the host announced within them).
	Reachable bool
	// Unreachable says in one sentence why Reachable is false (it becomes
	// the first reason), e.g. "supernode 10.0.0.1:8002 unreachable: last
	// heartbeat 12s ago".
	Unreachable string
	Window      time.Duration
	Bytes       Bytes // delivered to tasks in the window
	// Fallbacks counts the swarm failures in the window whose blocks (or
	// task resolutions) went to the origin instead.
	Fallbacks int64
	// DownloadsFailed in the window (mentioned, never decisive: an origin
	// answering 404 is not P2P's fault).
	DownloadsFailed int64
}

// Decide applies the rules to one host, in this order:
//
//  1. no supernode configured → "disabled" (origin mode: by choice);
//  2. supernode unreachable → "not working";
//  3. nothing fetched in the window (only bytes already in the store, or
//     none) → "idle": working as far as anyone can tell;
//  4. less than half (SwarmShareMin) of the fetched bytes came from the
//     swarm (peers and seed) and swarm failures fell back to the origin
//     → "degraded";
//  5. otherwise → "working".
//
// The reasons are plain sentences: what was decided and the figures behind it.
func Decide(in Input) Verdict {
	w := FormatWindow(in.Window)
	b := in.Bytes
	var v Verdict
	switch {
	case !in.Configured:
		v = Verdict{P2P: Disabled, Reasons: []string{"no supernode configured (origin mode): every download goes to the origin"}}
	case !in.Reachable:
		why := in.Unreachable
		if why == "" {
			why = "supernode unreachable"
		}
		v = Verdict{P2P: NotWorking, Reasons: []string{why}}
		if b.Fetched() > 0 {
			v.Reasons = append(v.Reasons, "last "+w+": "+spread(b))
		}
	case b.Fetched() == 0:
		r := "nothing fetched in the last " + w
		if b.Local > 0 {
			r += "; " + HumanBytes(b.Local) + " served from the local store"
		}
		v = Verdict{P2P: Idle, Reasons: []string{r}}
	case b.Share().Swarm < SwarmShareMin && in.Fallbacks > 0:
		v = Verdict{P2P: Degraded, Reasons: []string{
			fmt.Sprintf("only %s of the %s fetched in the last %s came from the swarm (peers and seed)", Percent(b.Share().Swarm), HumanBytes(b.Fetched()), w),
			fmt.Sprintf("%d swarm %s fell back to the origin", in.Fallbacks, plural(in.Fallbacks, "failure", "failures")),
		}}
	default:
		v = Verdict{P2P: Working, Reasons: []string{"last " + w + ": " + spread(b)}}
		if in.Fallbacks > 0 {
			v.Reasons = append(v.Reasons, fmt.Sprintf("%d swarm %s fell back to the origin", in.Fallbacks, plural(in.Fallbacks, "failure", "failures")))
		}
	}
	if in.DownloadsFailed > 0 && v.P2P != Disabled {
		v.Reasons = append(v.Reasons, fmt.Sprintf("%d %s failed in the last %s (see the errors)", in.DownloadsFailed, plural(in.DownloadsFailed, "download", "downloads"), w))
	}
	return v
}

// maxHostReasons bounds the hosts a swarm verdict names.
const maxHostReasons = 5

// DecideSwarm gives the swarm's verdict from its hosts (each with its own
// verdict from Decide), in this order:
//
//  1. no host announced in the window → "idle";
//  2. hosts were seen but none is live, and not all of them left the swarm
//     (stopped cleanly) → "not working";
//  3. the rules of Decide on the sum of the hosts' figures (supernode
//     configured and reachable: it answered) → that verdict, except that
//  4. a swarm that would be "working" or "idle" while some hosts are
//     "degraded" or "not working" is "degraded", naming them.
func DecideSwarm(window time.Duration, hosts []SwarmHost) Verdict {
	w := FormatWindow(window)
	if len(hosts) == 0 {
		return Verdict{P2P: Idle, Reasons: []string{"no dfdaemon announced in the last " + w}}
	}
	in := Input{Configured: true, Reachable: true, Window: window}
	live, gone := 0, 0
	var bad []string
	for _, h := range hosts {
		in.Bytes = in.Bytes.Plus(h.Bytes)
		in.Fallbacks += h.OriginFallbacks
		in.DownloadsFailed += h.Downloads.Failed
		switch {
		case h.Live:
			live++
		case !h.Left:
			gone++
		}
		if h.Verdict.P2P == Degraded || h.Verdict.P2P == NotWorking {
			r := "host " + h.ID + ": " + h.Verdict.P2P
			if len(h.Verdict.Reasons) > 0 {
				r += " (" + h.Verdict.Reasons[0] + ")"
			}
			bad = append(bad, r)
		}
	}
	if len(bad) > maxHostReasons {
		bad = append(bad[:maxHostReasons], fmt.Sprintf("and %d more hosts", len(bad)-maxHostReasons))
	}
	if live == 0 && gone > 0 {
		return Verdict{P2P: NotWorking, Reasons: []string{fmt.Sprintf("none of the %d %s seen in the last %s announces any more",
			len(hosts), plural(int64(len(hosts)), "host", "hosts"), w)}}
	}
	v := Decide(in)
	if len(bad) > 0 && (v.P2P == Working || v.P2P == Idle) {
		v.P2P = Degraded
	}
	v.Reasons = append(v.Reasons, bad...)
	return v
}

// spread says how much was fetched and where it came from.
func spread(b Bytes) string {
	s := b.Share()
	return fmt.Sprintf("%s fetched, %s from peers, %s from the seed, %s from the origin",
		HumanBytes(b.Fetched()), Percent(s.Peers), Percent(s.Seed), Percent(s.Origin))
}

// Percent formats a fraction as a whole percentage ("94%"); a fraction
// above 0 never shows as 0% nor one below 1 as 100%.
func Percent(f float64) string {
	p := int(f*100 + 0.5)
	switch {
	case f > 0 && p == 0:
		p = 1
	case f < 1 && p == 100:
		p = 99
	}
	return fmt.Sprintf("%d%%", p)
}

// HumanBytes formats n with binary units ("1.2 GiB").
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// FormatWindow formats a window without zero parts: "5m", "1h", "1h30m", "45s".
func FormatWindow(d time.Duration) string {
	s := d.Round(time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Ago formats the age of t at now, to the second ("12s ago"), or "never".
func Ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return FormatWindow(max(now.Sub(t), 0).Round(time.Second)) + " ago"
}

func plural(n int64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
