package peer

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func TestBeatFresh(t *testing.T) {
	now := time.Unix(1000, 0)
	at := func(ago time.Duration) int64 { return now.Add(-ago).UnixNano() }
	for _, tc := range []struct {
		name  string
		last  int64
		every time.Duration
		want  string // "" = ready; else a substring of the error
	}{
		{"never answered", 0, time.Second, "has not answered a heartbeat yet"},
		{"just answered", at(0), time.Second, ""},
		{"within three intervals", at(2900 * time.Millisecond), time.Second, ""},
		{"three intervals exactly", at(3 * time.Second), time.Second, ""},
		{"past three intervals", at(3100 * time.Millisecond), time.Second, "has not answered a heartbeat for 3.1s"},
		{"unknown interval: 2s", at(5 * time.Second), 0, ""},
		{"unknown interval, past 6s", at(7 * time.Second), 0, "intervals of 2s"},
	} {
		err := beatFresh("sn:8002", tc.last, tc.every, now)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want ready", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "sn:8002")):
			t.Errorf("%s: %v, want an error naming the supernode and %q", tc.name, err, tc.want)
		}
	}
}

// TestCheckSupernode: ready while the (fake) supernode answers heartbeats,
// not ready, naming it, once it is gone for three intervals (100ms here).
func TestCheckSupernode(t *testing.T) {
	f := newFakeScheduler()
	gs := grpc.NewServer()
	api.RegisterSchedulerServer(gs, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	defer gs.Stop()
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{GCInterval: -1, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sw, err := NewSwarm(context.Background(), SwarmConfig{Supernode: ln.Addr().String(), Store: st, HostID: "h", RPCTimeout: time.Second, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close()
	if err := sw.CheckSupernode(context.Background()); err != nil {
		t.Fatalf("supernode answering: %v", err)
	}
	gs.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := sw.CheckSupernode(context.Background())
		if err != nil {
			if !strings.Contains(err.Error(), ln.Addr().String()) {
				t.Fatalf("error does not name the supernode: %v", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("still ready 10s after the supernode stopped")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStoreCheck(t *testing.T) {
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{GCInterval: -1, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	check := StoreCheck(st)
	if err := check(context.Background()); err != nil {
		t.Fatalf("open store: %v", err)
	}
	st.Close()
	if err := check(context.Background()); !errors.Is(err, blockstore.ErrClosed) {
		t.Fatalf("closed store: %v, want ErrClosed", err)
	}
}

// TestDaemonReady: an origin-mode daemon is ready while its store is
// open; one in a swarm also needs its supernode.
func TestDaemonReady(t *testing.T) {
	d := startTestDaemon(t, "")
	if err := d.Ready(context.Background()); err != nil {
		t.Fatalf("origin mode: %v", err)
	}
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.Addr().String()
	dead.Close()
	dir := t.TempDir()
	d2, err := StartDaemon(context.Background(), DaemonConfig{Supernode: addr, Listen: "127.0.0.1:0", Sock: filepath.Join(dir, "d.sock"),
		StoreDir: filepath.Join(dir, "store"), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if err := d2.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("unreachable supernode: %v, want an error naming %s", err, addr)
	}
}
