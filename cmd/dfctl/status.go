package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/internal/p2pstatus"
	"github.com/dfly-p2p/dfly/peer"
)

const statusUsage = `usage:
  dfctl status [--sock PATH] [--window 5m] [--json]
                 is P2P working on this host? Asks the dfdaemon on its socket what it
                 did in the window: supernode reachable, bytes from peers, the seed,
                 the origin, tasks in flight, recent errors
  dfctl status --supernode URL [--admin-token-file FILE] [--tls-ca ...] [--window 5m] [--json]
                 is P2P working in the swarm? Asks the supernode (its upload server or
                 --api-listen address) about every host seen in the window

Verdicts: working (most bytes came from peers and the seed), idle (nothing
fetched in the window: working as far as anyone can tell), degraded (less
than half from the swarm while swarm failures fell back to the origin; for
the swarm: also when some hosts are degraded or stopped announcing), not
working (the supernode is unreachable; for the swarm: no host announces any
more), disabled (no supernode configured: origin mode). See docs/status.md.

The supernode answers its own host (loopback) and callers with its admin
token (--admin-token-file, default $DFLY_ADMIN_TOKEN; the supernode keeps it
in STORE/admin.token). A swarm with TLS: give the same --tls-ca (and, with
mutual TLS, --tls-cert/--tls-key) as the hosts.

Exit codes: 0 working, idle or disabled; 1 degraded or not working, or the
dfdaemon or supernode did not answer; 2 bad flags or arguments.

flags:
`

type statusOptions struct {
	sock, supernode, tokenFile string
	window, timeout            time.Duration
	json                       bool
	tls                        *cli.TLSFlags
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("dfctl status", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var o statusOptions
	fs.StringVar(&o.sock, "sock", peer.DefaultSocketPath(), "the dfdaemon's local API socket (dfdaemon --sock)")
	fs.StringVar(&o.supernode, "supernode", "", "the whole swarm instead: the supernode's upload server or --api-listen URL, e.g. http://10.0.0.1:8001")
	fs.StringVar(&o.tokenFile, "admin-token-file", "", "with --supernode: file with the supernode's admin token (default: $DFLY_ADMIN_TOKEN; none on the supernode's host)")
	fs.DurationVar(&o.window, "window", p2pstatus.DefaultWindow, "look at the last WINDOW (10s to 1h)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "give up on a dfdaemon or supernode that does not answer within this long")
	fs.BoolVar(&o.json, "json", false, "print the answer as JSON (docs/status.md) instead of words")
	o.tls = cli.AddTLSFlags(fs, false)
	fs.Usage = func() { _, _ = fmt.Fprint(stderr, statusUsage+fs.FlagUsages()) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		_, _ = fmt.Fprintf(stderr, "dfctl status: %v (see dfctl status --help)\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		_, _ = fmt.Fprintf(stderr, "dfctl status: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	if o.window <= 0 || o.timeout <= 0 {
		_, _ = fmt.Fprintln(stderr, "dfctl status: --window and --timeout must be positive")
		return 2
	}
	if o.supernode == "" && (o.tokenFile != "" || o.tls.Enabled()) {
		_, _ = fmt.Fprintln(stderr, "dfctl status: --admin-token-file and --tls-* go with --supernode")
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var v p2pstatus.Verdict
	var answer any
	var words string
	if o.supernode != "" {
		st, code, err := swarmStatus(ctx, o)
		if err != nil {
			_, _ = fmt.Fprintln(stderr, "dfctl status:", err)
			return code
		}
		v, answer, words = st.Verdict, st, swarmWords(st)
	} else {
		st, err := hostStatus(ctx, o.sock, o.window)
		if err != nil {
			_, _ = fmt.Fprintln(stderr, "dfctl status:", err)
			return 1
		}
		v, answer, words = st.Verdict, st, hostWords(st)
	}
	if o.json {
		printJSON(stdout, answer)
	} else {
		_, _ = fmt.Fprint(stdout, words)
	}
	if !v.OK() {
		return 1
	}
	return 0
}

// hostStatus asks the dfdaemon on sock.
func hostStatus(ctx context.Context, sock string, window time.Duration) (p2pstatus.Host, error) {
	c, err := peer.DialDaemon(ctx, sock)
	if err != nil {
		if errors.Is(err, peer.ErrNoDaemon) {
			return p2pstatus.Host{}, fmt.Errorf("no dfdaemon answers on %s: start it, or pass --sock (or --supernode URL for the swarm): %w", sock, err)
		}
		return p2pstatus.Host{}, fmt.Errorf("the dfdaemon on %s does not answer: %w", sock, err)
	}
	defer c.Close()
	st, err := c.Status(ctx, window)
	if err != nil {
		return st, fmt.Errorf("ask the dfdaemon on %s (a dfdaemon older than dfctl answers HTTP 404): %w", sock, err)
	}
	return st, nil
}

// swarmStatus asks the supernode; the int is the exit code of a failure
// (2: bad flags).
func swarmStatus(ctx context.Context, o statusOptions) (p2pstatus.Swarm, int, error) {
	var st p2pstatus.Swarm
	c, err := newPreheatClient(preheatOptions{api: o.supernode, tokenFile: o.tokenFile, tls: o.tls})
	if err != nil {
		return st, 2, err
	}
	u := c.base + "/api/v1/status?window=" + url.QueryEscape(o.window.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return st, 2, fmt.Errorf("--supernode %q: %w", o.supernode, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return st, 1, fmt.Errorf("supernode %s does not answer (is it running? is --supernode its upload server or --api-listen address?): %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return st, 1, fmt.Errorf("read the supernode's answer: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return st, 1, fmt.Errorf("supernode %s: not allowed from this host: pass --admin-token-file (its STORE/%s) or set $DFLY_ADMIN_TOKEN", c.base, "admin.token")
	case resp.StatusCode == http.StatusNotFound:
		return st, 1, fmt.Errorf("supernode %s has no /api/v1/status (a supernode older than dfctl?)", c.base)
	case resp.StatusCode != http.StatusOK:
		return st, 1, fmt.Errorf("supernode %s: HTTP %d: %s", c.base, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, 1, fmt.Errorf("the supernode's answer is not a status: %w", err)
	}
	return st, 0, nil
}

// headline is "P2P working" and the like.
func headline(v p2pstatus.Verdict) string {
	if v.P2P == p2pstatus.NotWorking {
		return "P2P NOT working"
	}
	return "P2P " + v.P2P
}

// traffic says what was fetched in the window: "last 5m: 1.2 GiB, 94% from
// peers, 6% from the seed, 0% from the origin".
func traffic(window string, b p2pstatus.Bytes) string {
	if b.Fetched() == 0 {
		s := "last " + window + ": nothing fetched"
		if b.Local > 0 {
			s += " (" + p2pstatus.HumanBytes(b.Local) + " from the local store)"
		}
		return s
	}
	sh := b.Share()
	return fmt.Sprintf("last %s: %s, %s from peers, %s from the seed, %s from the origin", window, p2pstatus.HumanBytes(b.Fetched()),
		p2pstatus.Percent(sh.Peers), p2pstatus.Percent(sh.Seed), p2pstatus.Percent(sh.Origin))
}

func count(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	if n == 0 {
		return "no " + many
	}
	return fmt.Sprintf("%d %s", n, many)
}

// hostWords is a host's status in plain words: one headline sentence, then
// the reasons and errors.
func hostWords(st p2pstatus.Host) string {
	var sb strings.Builder
	parts := []string{}
	sn := st.Supernode
	switch {
	case !sn.Configured:
		parts = append(parts, "no supernode configured (origin mode)")
	case sn.Reachable:
		parts = append(parts, fmt.Sprintf("supernode %s reachable (heartbeat %s)", sn.Address, heartbeatAge(sn, st.Time)))
	default:
		parts = append(parts, fmt.Sprintf("supernode %s UNREACHABLE (last heartbeat %s)", sn.Address, heartbeatAge(sn, st.Time)))
	}
	parts = append(parts, traffic(st.Window, st.Bytes), count(st.TasksInFlight, "task in flight", "tasks in flight"), count(len(st.Errors), "error", "errors"))
	_, _ = fmt.Fprintf(&sb, "%s: %s.\n", headline(st.Verdict), strings.Join(parts, "; "))
	writeDetails(&sb, st.Verdict, st.Errors, st.Time)
	who := "dfly " + st.Version
	if st.HostID != "" {
		who = "host " + st.HostID + ", " + who
	}
	_, _ = fmt.Fprintf(&sb, "  %s\n", who)
	return sb.String()
}

func heartbeatAge(sn p2pstatus.Supernode, now time.Time) string {
	if sn.LastHeartbeat == nil {
		return "never"
	}
	return p2pstatus.Ago(*sn.LastHeartbeat, now)
}

// writeDetails lists the verdict's reasons and the errors, indented.
func writeDetails(sb *strings.Builder, v p2pstatus.Verdict, errs []p2pstatus.Error, now time.Time) {
	for _, r := range v.Reasons {
		_, _ = fmt.Fprintf(sb, "  why: %s\n", r)
	}
	for _, e := range errs {
		times := ""
		if e.Count > 1 {
			times = fmt.Sprintf(" (%d times)", e.Count)
		}
		host := ""
		if e.Host != "" {
			host = " on " + e.Host
		}
		_, _ = fmt.Fprintf(sb, "  error %s%s%s: %s\n", p2pstatus.Ago(e.Time, now), host, times, e.Message)
	}
}

// swarmWords is the swarm's status in plain words: a headline sentence,
// one line per host and for the seed, then the reasons and errors.
func swarmWords(st p2pstatus.Swarm) string {
	var sb strings.Builder
	hosts := fmt.Sprintf("%s seen in the last %s, %d live", count(st.HostsSeen, "host", "hosts"), st.Window, st.HostsLive)
	parts := []string{hosts, strings.TrimPrefix(traffic(st.Window, st.Bytes), "last "+st.Window+": "),
		count(st.TasksActive, "task in flight", "tasks in flight"), count(st.TasksKnown, "task known", "tasks known"),
		count(len(st.Errors), "error", "errors")}
	_, _ = fmt.Fprintf(&sb, "%s: %s.\n", headline(st.Verdict), strings.Join(parts, "; "))
	for _, h := range st.Hosts {
		state := "live"
		switch {
		case h.Left:
			state = "left"
		case !h.Live:
			state = "SILENT"
		}
		line := fmt.Sprintf("  %-12s %s, %s (seen %s)", h.ID, h.Verdict.P2P, state, p2pstatus.Ago(h.LastSeen, st.Time))
		if h.Bytes.Fetched() > 0 {
			sh := h.Bytes.Share()
			line += fmt.Sprintf("; %s, %s peers / %s seed / %s origin", p2pstatus.HumanBytes(h.Bytes.Fetched()),
				p2pstatus.Percent(sh.Peers), p2pstatus.Percent(sh.Seed), p2pstatus.Percent(sh.Origin))
		}
		if h.TasksActive > 0 {
			line += "; " + count(h.TasksActive, "task in flight", "tasks in flight")
		}
		if !h.Reporting {
			line += "; sends no counters"
		} else if h.Version != "" {
			line += "; dfly " + h.Version
		}
		_, _ = fmt.Fprintln(&sb, line)
	}
	s := st.Seed
	_, _ = fmt.Fprintf(&sb, "  seed %s: %s (%d complete, %d fetching, %d failed); %s from the origin, %s to peers in the last %s\n",
		s.ID, count(s.Tasks, "task", "tasks"), s.Complete, s.Fetching, s.Failed, p2pstatus.HumanBytes(s.OriginBytes), p2pstatus.HumanBytes(s.UploadBytes), st.Window)
	for _, e := range s.Errors {
		_, _ = fmt.Fprintf(&sb, "  seed error: %s\n", e)
	}
	writeDetails(&sb, st.Verdict, st.Errors, st.Time)
	_, _ = fmt.Fprintf(&sb, "  supernode %s, dfly %s\n", st.Supernode.Advertise, st.Version)
	return sb.String()
}
