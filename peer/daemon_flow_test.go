package peer

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/flow"
)

func testEngine(t *testing.T, cfg Config) *Engine {
	t.Helper()
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg.Store, cfg.Logger = st, quietLogger()
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestEngineSetDownloadRate: the flow controller's setter creates the
// limiter on first use, changes only its rate afterwards (waiters take a
// burst at a time, so the burst stays), and 0 means unlimited.
func TestEngineSetDownloadRate(t *testing.T) {
	e := testEngine(t, Config{})
	e.SetDownloadRate(0)
	if e.limiter.Load() != nil {
		t.Fatal("SetDownloadRate(0) made a limiter")
	}
	e.SetDownloadRate(5e6)
	l := e.limiter.Load()
	if l == nil || l.Limit() != 5e6 || l.Burst() != 64<<10 {
		t.Fatalf("after SetDownloadRate(5e6): %v", l)
	}
	e.SetDownloadRate(0)
	if e.limiter.Load() != l || l.Limit() != rate.Inf {
		t.Fatalf("SetDownloadRate(0) left limit %v, want unlimited", l.Limit())
	}
	fixed := testEngine(t, Config{DownloadRate: 100 << 10})
	fixed.SetDownloadRate(3e6)
	if l := fixed.limiter.Load(); l.Limit() != 3e6 || l.Burst() != 100<<10 {
		t.Fatalf("fixed engine after SetDownloadRate: limit %v burst %d, want 3e6 and the burst it had", l.Limit(), l.Burst())
	}
	// Every byte that passes the limiter is dfly's own download traffic.
	if err := e.wait(context.Background(), 12345); err != nil {
		t.Fatal(err)
	}
	if err := fixed.wait(context.Background(), 100); err != nil {
		t.Fatal(err)
	}
	if e.ReceivedBytes() != 12345 || fixed.ReceivedBytes() != 100 {
		t.Fatalf("received %d and %d, want 12345 and 100", e.ReceivedBytes(), fixed.ReceivedBytes())
	}
}

func TestEnginePaceBackground(t *testing.T) {
	e := testEngine(t, Config{})
	if err := e.PaceBackground(context.Background(), 1<<30); err != nil {
		t.Fatalf("unlimited background pace waited: %v", err)
	}
	e.SetBackgroundRate(1) // 1 B/s: the first burst passes, then nothing
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := e.PaceBackground(ctx, 2<<20); err == nil {
		t.Fatal("a background write of 2 MiB passed a 1 B/s pace")
	}
	e.SetBackgroundRate(0)
	if err := e.PaceBackground(context.Background(), 1<<30); err != nil {
		t.Fatalf("background pace set back to unlimited waited: %v", err)
	}
}

func TestUploadSetRate(t *testing.T) {
	u := NewUploadServer(UploadConfig{})
	u.SetRate(0)
	if u.limiter.Load() != nil {
		t.Fatal("SetRate(0) made a limiter")
	}
	u.SetRate(2e6)
	if l := u.limiter.Load(); l == nil || l.Limit() != 2e6 || l.Burst() != u.burst {
		t.Fatalf("after SetRate(2e6): %v, want burst %d (the upload chunk)", l, u.burst)
	}
	fixed := NewUploadServer(UploadConfig{Rate: 100e3})
	fixed.SetRate(5e6)
	if l := fixed.limiter.Load(); l.Limit() != 5e6 || l.Burst() != fixed.burst || fixed.burst != 16<<10 {
		t.Fatalf("fixed server after SetRate: limit %v burst %d/%d", l.Limit(), l.Burst(), fixed.burst)
	}
}

func TestPreheatPacesBackground(t *testing.T) {
	var asked []int64
	boom := errors.New("cancelled by the test")
	p := newPreheater(quietLogger(), 0, nil, nil)
	p.background = func(_ context.Context, n int64) error {
		asked = append(asked, n)
		if len(asked) > 1 {
			return boom
		}
		return nil
	}
	if err := p.pace(context.Background(), 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := p.pace(context.Background(), 1<<20); !errors.Is(err, boom) {
		t.Fatalf("pace = %v, want the background pace's error", err)
	}
	if len(asked) != 2 || asked[0] != 4<<20 || asked[1] != 1<<20 {
		t.Fatalf("background pace asked for %v", asked)
	}
}

// TestDaemonFlowAuto runs a daemon with --flow auto on the loopback
// interface: the controller sets the engine's and the upload server's
// limits and the gauges, its state is in /v1/stats, and downloads count
// as dfly's own traffic.
func TestDaemonFlowAuto(t *testing.T) {
	const size = 3 << 20
	fx := newSeedFixture(t, size)
	dir := t.TempDir()
	m := NewMetrics(prometheus.NewRegistry())
	d, err := StartDaemon(context.Background(), DaemonConfig{
		Supernode: fx.addr, Listen: "127.0.0.1:0", Sock: filepath.Join(dir, "d.sock"),
		StoreDir: filepath.Join(dir, "store"), HostID: "flow-" + filepath.Base(dir), Logger: quietLogger(), Metrics: m,
		UploadRate: 64 << 20,
		Flow:       flow.Options{Mode: flow.Auto, Iface: "lo", CeilingDown: 1 << 30, CeilingUp: 1 << 30, Interval: 20 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	deadline := time.Now().Add(30 * time.Second)
	for d.engine.limiter.Load() == nil || testutil.ToFloat64(m.flow[0]) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the controller never set the download limit")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := d.swarm.cfg.ReceiveBuffer; got != 4<<20 {
		t.Fatalf("the swarm's receive buffer is %d, want 4 MiB (50 ms of a 1 GiB/s ceiling over 8 connections, capped)", got)
	}
	if l := d.upload.limiter.Load().Limit(); l <= 0 || l > 64<<20 {
		t.Fatalf("upload limit %v: want set, never above --upload-rate", l)
	}
	if up := testutil.ToFloat64(m.flow[1]); up <= 0 || up > 64<<20 {
		t.Fatalf("upload gauge %v", up)
	}
	c, err := DialDaemon(context.Background(), d.SockPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Download(context.Background(), DownloadRequest{URL: fx.url, Output: filepath.Join(t.TempDir(), "f")}, nil); err != nil {
		t.Fatal(err)
	}
	if got := d.engine.ReceivedBytes(); got < size {
		t.Fatalf("the engine counted %d received bytes, want at least %d", got, size)
	}
	st, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f := st.Flow
	if f == nil || f.Mode != "auto" || f.Iface != "lo" || f.Download == nil || f.Download.Ceiling != 1<<30 ||
		f.Download.Allowed <= 0 || f.Upload == nil || f.Upload.Allowed > 64<<20 || f.Disk != nil {
		t.Fatalf("flow status %+v (download %+v, upload %+v)", f, f.Download, f.Upload)
	}
}

func TestDaemonFlowOptions(t *testing.T) {
	start := func(o flow.Options, m *Metrics, downloadRate int64) (*Daemon, error) {
		dir := t.TempDir()
		return StartDaemon(context.Background(), DaemonConfig{Sock: filepath.Join(dir, "d.sock"), StoreDir: filepath.Join(dir, "store"),
			Logger: quietLogger(), Flow: o, Metrics: m, DownloadRate: downloadRate})
	}
	// The loopback interface has no speed: without a ceiling or a fixed
	// limit --flow auto is refused, saying what to pass.
	if d, err := start(flow.Options{Mode: flow.Auto, Iface: "lo", CeilingUp: 1 << 20}, nil, 0); err == nil || !strings.Contains(err.Error(), "--flow-ceiling") {
		if d != nil {
			d.Close()
		}
		t.Fatalf("StartDaemon = %v, want a refusal naming --flow-ceiling", err)
	}
	// In origin mode (no upload server) the download direction is enough.
	od, err := start(flow.Options{Mode: flow.Auto, Iface: "lo"}, nil, 7<<20)
	if err != nil {
		t.Fatalf("origin mode with --download-rate: %v", err)
	}
	if f := od.Stats().Flow; f == nil || f.Download == nil || f.Download.Ceiling != 7<<20 || f.Upload != nil {
		t.Fatalf("origin-mode flow status %+v", f)
	}
	od.Close()
	// Fixed (the default): no controller, no flow in the stats, and the
	// gauges show the fixed limits.
	m := NewMetrics(nil)
	d, err := start(flow.Options{}, m, 7<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Stats().Flow != nil {
		t.Fatalf("fixed mode reports flow %+v", d.Stats().Flow)
	}
	if down, up := testutil.ToFloat64(m.flow[0]), testutil.ToFloat64(m.flow[1]); down != 7<<20 || up != 0 {
		t.Fatalf("gauges %v/%v, want the fixed download rate and 0 (unlimited) up", down, up)
	}
}

func TestReceiveBufferControl(t *testing.T) {
	if receiveBufferControl(0) != nil {
		t.Fatal("a zero size gave a Control: connections must autotune")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Control: receiveBufferControl(48 << 10)}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	if err := raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) }); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if got != 2*48<<10 { // Linux doubles it for its bookkeeping
		t.Fatalf("SO_RCVBUF %d, want %d", got, 2*48<<10)
	}
}
