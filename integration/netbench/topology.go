package netbench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// NamePrefix starts the name of every network namespace the harness creates:
// "dfnb<owner pid>-<random>-<host>".
const NamePrefix = "dfnb"

// Spec describes a topology to build.
type Spec struct {
	// Prefix of every namespace name; NewPrefix() when empty.
	Prefix string
	// Peers is the number of downloading hosts.
	Peers int
	// IDCs is 1 (one bridge) or 2 (two bridges joined by a link of
	// InterIDCRate; origin and supernode in the first idc, peers split).
	IDCs int
	// Rates in bit/s, applied both ways with tc tbf.
	PeerRate, OriginRate, SupernodeRate, InterIDCRate int64
	// DynamicARP leaves neighbour resolution to ARP. By default every host
	// gets permanent neighbour entries for all the others: with ARP, its
	// requests and replies wait in the same 20 ms tail-drop queues as the
	// bulk data, and at N=40 they were lost often enough that new
	// connections stalled for seconds (1,701 dial timeouts, 33 "no route
	// to host" in one run; none with static entries). Real hosts queue
	// far more on their own egress and fabrics protect control traffic;
	// ARP is not what the benchmark measures.
	DynamicARP bool
}

// Host is one emulated machine: a network namespace with one interface
// (eth0) whose peer end is a port of its idc's bridge.
type Host struct {
	Name   string     // "origin", "sn", "p001"
	NS     string     // network namespace name
	IP     netip.Addr // address of eth0 (10.77.0.0/16)
	IDC    string     // "idc-a" or "idc-b"
	MAC    string     // of eth0, derived from IP
	Port   string     // bridge-side veth name in the bridge namespace
	Rate   int64      // bit/s, upload and download
	bridge string
}

// Topology is a built emulated datacenter.
type Topology struct {
	Spec      Spec
	BridgeNS  string
	Origin    *Host
	Supernode *Host
	Peers     []*Host
	log       *slog.Logger
}

// InterIDCPort is the bridge-namespace interface (in idc-a's bridge) of the
// link between the two idcs; its counters are the cross-idc bytes.
const InterIDCPort = "x-a"

// NewPrefix returns a namespace-name prefix unique to this process and call.
func NewPrefix() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s%d-%s", NamePrefix, os.Getpid(), hex.EncodeToString(b[:]))
}

// Hosts returns every host: origin, supernode, then the peers.
func (t *Topology) Hosts() []*Host {
	return append([]*Host{t.Origin, t.Supernode}, t.Peers...)
}

// run runs a command and returns its combined output; the error says which
// command failed and what it printed.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return runInput(ctx, "", name, args...)
}

// runInput is run with stdin fed from input.
func runInput(ctx context.Context, input, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(input)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// Preflight checks that the harness can run: root, ip and tc.
func Preflight() error {
	if os.Geteuid() != 0 {
		return errors.New("netbench needs root (network namespaces, veth, tc): run it as root")
	}
	for _, b := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("netbench needs %q (iproute2): %w", b, err)
		}
	}
	return nil
}

// ListNamespaces returns the names of all network namespaces whose name
// starts with prefix.
func ListNamespaces(ctx context.Context, prefix string) ([]string, error) {
	out, err := run(ctx, "ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	var names []string
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// ownerPID returns the harness PID encoded in a namespace name, or 0.
func ownerPID(ns string) int {
	rest, ok := strings.CutPrefix(ns, NamePrefix)
	if !ok {
		return 0
	}
	digits, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(digits)
	if err != nil {
		return 0
	}
	return pid
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// Leftovers returns the harness namespaces whose owning process is gone
// (left behind by a crashed or killed run).
func Leftovers(ctx context.Context) ([]string, error) {
	all, err := ListNamespaces(ctx, NamePrefix)
	if err != nil {
		return nil, err
	}
	var left []string
	for _, ns := range all {
		if pid := ownerPID(ns); pid != os.Getpid() && !alive(pid) {
			left = append(left, ns)
		}
	}
	return left, nil
}

// CleanupCommand is what a user runs to remove leftover topologies.
const CleanupCommand = "go run ./integration/netbench/cmd/netbench --cleanup   (or: for n in $(ip netns list | awk '/^dfnb/{print $1}'); do ip netns pids $n | xargs -r kill -9; ip netns del $n; done)"

// ErrLeftover is returned when a previous run left namespaces behind.
var ErrLeftover = errors.New("leftover netbench topology")

// CheckLeftovers refuses to go on when a dead run left namespaces behind.
func CheckLeftovers(ctx context.Context) error {
	left, err := Leftovers(ctx)
	if err != nil {
		return fmt.Errorf("list network namespaces: %w", err)
	}
	if len(left) > 0 {
		return fmt.Errorf("%w: namespaces %s belong to a run that is gone; remove them with: %s", ErrLeftover, strings.Join(left, " "), CleanupCommand)
	}
	return nil
}

// Cleanup kills every process in the given namespaces and deletes them
// (deleting a namespace deletes its veth ends and bridges).
func Cleanup(ctx context.Context, namespaces []string) error {
	var errs []error
	for _, ns := range namespaces {
		if err := killNamespace(ctx, ns); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := run(ctx, "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killNamespace SIGKILLs every process inside ns and waits until they are gone.
func killNamespace(ctx context.Context, ns string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := run(ctx, "ip", "netns", "pids", ns)
		if err != nil {
			return err
		}
		pids := slices.DeleteFunc(strings.Fields(string(out)), func(p string) bool { return p == strconv.Itoa(os.Getpid()) })
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in namespace %s survive SIGKILL", pids, ns)
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid != os.Getpid() {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Build creates the topology. On error everything created is removed.
func Build(ctx context.Context, spec Spec, log *slog.Logger) (*Topology, error) {
	if spec.Peers <= 0 || spec.Peers > 2000 {
		return nil, fmt.Errorf("topology: %d peers: want 1..2000", spec.Peers)
	}
	if spec.IDCs != 1 && spec.IDCs != 2 {
		return nil, fmt.Errorf("topology: %d idcs: want 1 or 2", spec.IDCs)
	}
	if spec.PeerRate <= 0 || spec.OriginRate <= 0 {
		return nil, errors.New("topology: peer and origin rates must be set")
	}
	if spec.SupernodeRate <= 0 {
		spec.SupernodeRate = spec.OriginRate
	}
	if spec.IDCs == 2 && spec.InterIDCRate <= 0 {
		return nil, errors.New("topology: two idcs need an inter-idc rate")
	}
	if spec.Prefix == "" {
		spec.Prefix = NewPrefix()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Topology{Spec: spec, BridgeNS: spec.Prefix + "-br", log: log}
	mk := func(name, idc string, ip netip.Addr, rate int64) *Host {
		br := "br-a"
		if idc == "idc-b" {
			br = "br-b"
		}
		a := ip.As4()
		mac := fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3]) // locally administered
		return &Host{Name: name, NS: spec.Prefix + "-" + name, IP: ip, IDC: idc, MAC: mac, Port: "v-" + name, Rate: rate, bridge: br}
	}
	t.Origin = mk("origin", "idc-a", netip.AddrFrom4([4]byte{10, 77, 0, 1}), spec.OriginRate)
	t.Supernode = mk("sn", "idc-a", netip.AddrFrom4([4]byte{10, 77, 0, 2}), spec.SupernodeRate)
	half := (spec.Peers + 1) / 2
	for i := range spec.Peers {
		idc := "idc-a"
		if spec.IDCs == 2 && i >= half {
			idc = "idc-b"
		}
		ip := netip.AddrFrom4([4]byte{10, 77, byte(1 + i/250), byte(i%250 + 1)})
		t.Peers = append(t.Peers, mk(fmt.Sprintf("p%03d", i+1), idc, ip, spec.PeerRate))
	}
	start := time.Now()
	if err := t.build(ctx); err != nil {
		if terr := t.Teardown(); terr != nil {
			return nil, errors.Join(err, fmt.Errorf("teardown after failed build: %w", terr))
		}
		return nil, err
	}
	log.Info("topology built", "prefix", spec.Prefix, "peers", spec.Peers, "idcs", spec.IDCs, "took", time.Since(start).Round(time.Millisecond))
	return t, nil
}

// tbfArgs returns the tc arguments of a token bucket of rate bit/s: a burst
// of 4 ms, at least 128 KiB so that a whole 64 KiB GSO packet passes without
// tbf segmenting it (which costs CPU), and 20 ms of queue.
func tbfArgs(rate int64) []string {
	burst := max(rate/8/250, 128<<10)
	return []string{"root", "tbf", "rate", FormatRate(rate), "burst", strconv.FormatInt(burst, 10), "latency", "20ms"}
}

func (t *Topology) build(ctx context.Context) error {
	b := t.BridgeNS
	steps := [][]string{
		{"ip", "netns", "add", b},
		{"ip", "-n", b, "link", "set", "lo", "up"},
		{"ip", "-n", b, "link", "add", "br-a", "type", "bridge", "stp_state", "0", "forward_delay", "0"},
		{"ip", "-n", b, "link", "set", "br-a", "up"},
	}
	if t.Spec.IDCs == 2 {
		steps = append(steps,
			[]string{"ip", "-n", b, "link", "add", "br-b", "type", "bridge", "stp_state", "0", "forward_delay", "0"},
			[]string{"ip", "-n", b, "link", "set", "br-b", "up"},
			[]string{"ip", "-n", b, "link", "add", "x-a", "type", "veth", "peer", "name", "x-b"},
			[]string{"ip", "-n", b, "link", "set", "x-a", "master", "br-a", "up"},
			[]string{"ip", "-n", b, "link", "set", "x-b", "master", "br-b", "up"},
			append([]string{"tc", "-n", b, "qdisc", "add", "dev", "x-a"}, tbfArgs(t.Spec.InterIDCRate)...),
			append([]string{"tc", "-n", b, "qdisc", "add", "dev", "x-b"}, tbfArgs(t.Spec.InterIDCRate)...),
		)
	}
	for _, h := range t.Hosts() {
		steps = append(steps,
			[]string{"ip", "netns", "add", h.NS},
			[]string{"ip", "-n", h.NS, "link", "set", "lo", "up"},
			[]string{"ip", "-n", h.NS, "link", "add", "eth0", "address", h.MAC, "type", "veth", "peer", "name", h.Port, "netns", b},
			[]string{"ip", "-n", h.NS, "addr", "add", h.IP.String() + "/16", "dev", "eth0"},
			[]string{"ip", "-n", h.NS, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", b, "link", "set", h.Port, "master", h.bridge, "up"},
			// upload: egress of the host's eth0; download: egress of its bridge port.
			append([]string{"tc", "-n", h.NS, "qdisc", "add", "dev", "eth0"}, tbfArgs(h.Rate)...),
			append([]string{"tc", "-n", b, "qdisc", "add", "dev", h.Port}, tbfArgs(h.Rate)...),
		)
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("build topology: %w", err)
		}
		if _, err := run(ctx, s[0], s[1:]...); err != nil {
			return fmt.Errorf("build topology %s: %w", t.Spec.Prefix, err)
		}
	}
	if !t.Spec.DynamicARP {
		return t.staticNeighbours(ctx)
	}
	return nil
}

// staticNeighbours gives every host a permanent neighbour entry for every
// other host (see Spec.DynamicARP), with one `ip -batch` per host.
func (t *Topology) staticNeighbours(ctx context.Context) error {
	hosts := t.Hosts()
	for _, h := range hosts {
		var batch strings.Builder
		for _, o := range hosts {
			if o != h {
				fmt.Fprintf(&batch, "neigh replace %s lladdr %s nud permanent dev eth0\n", o.IP, o.MAC)
			}
		}
		if _, err := runInput(ctx, batch.String(), "ip", "-n", h.NS, "-batch", "-"); err != nil {
			return fmt.Errorf("build topology %s: neighbour entries: %w", t.Spec.Prefix, err)
		}
	}
	return nil
}

// Teardown kills every process left in the topology's namespaces and deletes
// them. It is safe to call more than once and after a partial build.
func (t *Topology) Teardown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	names, err := ListNamespaces(ctx, t.Spec.Prefix+"-")
	if err != nil {
		return fmt.Errorf("teardown %s: %w", t.Spec.Prefix, err)
	}
	if err := Cleanup(ctx, names); err != nil {
		return fmt.Errorf("teardown %s: %w", t.Spec.Prefix, err)
	}
	t.log.Info("topology removed", "prefix", t.Spec.Prefix, "namespaces", len(names))
	return nil
}

// LinkCounters are an interface's byte counters.
type LinkCounters struct {
	RxBytes, TxBytes int64
}

// Counters reads the byte counters of dev inside namespace ns.
func Counters(ctx context.Context, ns, dev string) (LinkCounters, error) {
	out, err := run(ctx, "ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev)
	if err != nil {
		return LinkCounters{}, err
	}
	var links []struct {
		Stats struct {
			Rx struct {
				Bytes int64 `json:"bytes"`
			} `json:"rx"`
			Tx struct {
				Bytes int64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return LinkCounters{}, fmt.Errorf("parse counters of %s in %s: %v: %q", dev, ns, err, out)
	}
	return LinkCounters{RxBytes: links[0].Stats.Rx.Bytes, TxBytes: links[0].Stats.Tx.Bytes}, nil
}
