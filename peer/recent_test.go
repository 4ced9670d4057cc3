package peer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/internal/p2pstatus"
)

// fakeClock is a settable clock for Recent.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestRecentWindows(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	r := NewRecent(clk.now)
	r.AddBytes(FromOrigin, 100)
	clk.add(2 * time.Minute)
	r.AddBytes(FromPeer, 1000)
	r.AddBytes(FromSeed, 10)
	r.AddBytes(FromLocal, 5)
	r.AddBytes(FromPeer, 0) // nothing
	r.AddBytes(FromPeer, -3)
	r.Fallback(errors.New("parent timed out"))
	clk.add(3*time.Minute + 30*time.Second) // origin bytes are 5m30s old, the rest 3m30s

	for _, tc := range []struct {
		window time.Duration
		want   p2pstatus.Bytes
		fb     int64
	}{
		{time.Minute, p2pstatus.Bytes{}, 0},
		{4 * time.Minute, p2pstatus.Bytes{Peers: 1000, Seed: 10, Local: 5}, 1},
		{5 * time.Minute, p2pstatus.Bytes{Peers: 1000, Seed: 10, Local: 5}, 1},
		{6 * time.Minute, p2pstatus.Bytes{Origin: 100, Peers: 1000, Seed: 10, Local: 5}, 1},
		{24 * time.Hour, p2pstatus.Bytes{Origin: 100, Peers: 1000, Seed: 10, Local: 5}, 1}, // cut to an hour
	} {
		w := r.Window(tc.window)
		if w.Bytes != tc.want || w.Fallbacks != tc.fb {
			t.Errorf("window %v: bytes %+v fallbacks %d, want %+v %d", tc.window, w.Bytes, w.Fallbacks, tc.want, tc.fb)
		}
	}
	if w := r.Window(24 * time.Hour); w.Window != time.Hour {
		t.Errorf("window of 24h reported as %v, want 1h", w.Window)
	}
	if w := r.Window(0); w.Window != 10*time.Second {
		t.Errorf("window of 0 reported as %v, want 10s", w.Window)
	}

	// An hour later every bucket is stale: the ring reuses its slots and
	// forgets, but the totals remember.
	clk.add(time.Hour)
	if w := r.Window(time.Hour); w.Bytes != (p2pstatus.Bytes{}) || w.Fallbacks != 0 || len(w.Errors) != 0 {
		t.Errorf("an hour later: %+v, want nothing", w)
	}
	r.AddBytes(FromPeer, 7)
	if w := r.Window(10 * time.Second); w.Bytes != (p2pstatus.Bytes{Peers: 7}) {
		t.Errorf("reused slot: %+v, want only the new 7 bytes", w.Bytes)
	}
	tot := r.Totals()
	if tot.Bytes != (p2pstatus.Bytes{Origin: 100, Peers: 1007, Seed: 10, Local: 5}) || tot.Fallbacks != 1 {
		t.Errorf("totals %+v", tot)
	}
	if !tot.Started.Equal(time.Unix(1_000_000, 0)) || !r.Started().Equal(tot.Started) {
		t.Errorf("started %v", tot.Started)
	}
}

func TestRecentDownloads(t *testing.T) {
	clk := &fakeClock{t: time.Unix(2_000_000, 0)}
	r := NewRecent(clk.now)
	endA := r.Begin("a")
	endA2 := r.Begin("a")
	endB := r.Begin("b")
	if w := r.Window(time.Minute); w.TasksInFlight != 2 {
		t.Errorf("tasks in flight %d, want 2 (two downloads of a count once)", w.TasksInFlight)
	}
	endA(nil)
	endA(nil) // a second call changes nothing
	if w := r.Window(time.Minute); w.TasksInFlight != 2 || w.Downloads.OK != 1 {
		t.Errorf("after one of a's downloads: %+v", w)
	}
	endA2(fmt.Errorf("download: %w", context.Canceled))
	endB(errors.New("origin answered 404"))
	r.Done(errors.New("open: no such task"))
	w := r.Window(time.Minute)
	if w.TasksInFlight != 0 || w.Downloads != (p2pstatus.Downloads{OK: 1, Failed: 2, Canceled: 1}) {
		t.Errorf("downloads %+v, in flight %d", w.Downloads, w.TasksInFlight)
	}
	if len(w.Errors) != 2 || w.Errors[0].Message != "open: no such task" || w.Errors[1].Message != "origin answered 404" {
		t.Errorf("errors %+v (a canceled download is no error)", w.Errors)
	}
	tot := r.Totals()
	if tot.Downloads != w.Downloads || tot.LastError == nil || tot.LastError.Message != "open: no such task" {
		t.Errorf("totals %+v", tot)
	}
}

func TestRecentErrors(t *testing.T) {
	clk := &fakeClock{t: time.Unix(3_000_000, 0)}
	r := NewRecent(clk.now)
	r.Error("")
	for i := range 10 {
		r.Error(fmt.Sprintf("error %d", i))
		clk.add(time.Second)
	}
	r.Error("error 5") // again: moves to the front, counted
	w := r.Window(time.Hour)
	if len(w.Errors) != recentErrors {
		t.Fatalf("%d errors kept, want %d", len(w.Errors), recentErrors)
	}
	if e := w.Errors[0]; e.Message != "error 5" || e.Count != 2 || !e.Time.Equal(clk.now()) {
		t.Errorf("front %+v, want error 5 twice, now", e)
	}
	if w.Errors[1].Message != "error 9" || w.Errors[1].Count != 1 {
		t.Errorf("second %+v", w.Errors[1])
	}
	clk.add(15 * time.Second) // error 5 is 15s old, error 9 16s...
	if w := r.Window(10 * time.Second); len(w.Errors) != 0 {
		t.Errorf("errors of a 10s window: %+v, want none", w.Errors)
	}
	if w := r.Window(20 * time.Second); len(w.Errors) != 5 {
		t.Errorf("errors of a 20s window: %d, want the 5 newer than 20s", len(w.Errors))
	}
	r.Error(strings.Repeat("x", 2000))
	if m := r.Window(time.Minute).Errors[0].Message; len(m) > maxErrorLen+4 {
		t.Errorf("long message kept with %d bytes", len(m))
	}
}

func TestRecentRedacts(t *testing.T) {
	r := NewRecent(nil)
	r.Fallback(errors.New("block 3 of https://o/f?token=abc: timeout"))
	if m := r.Window(time.Minute).Errors[0].Message; strings.Contains(m, "abc") || !strings.HasPrefix(m, "swarm failed, used the origin: ") {
		t.Errorf("fallback error kept as %q", m)
	}
}

func TestRecentNil(t *testing.T) {
	var r *Recent
	r.AddBytes(FromPeer, 1)
	r.Fallback(errors.New("x"))
	r.Begin("t")(nil)
	r.Done(errors.New("x"))
	r.Error("x")
	if w := r.Window(time.Minute); w.Bytes != (p2pstatus.Bytes{}) || len(w.Errors) != 0 {
		t.Errorf("nil Recent window %+v", w)
	}
	if tot := r.Totals(); tot.LastError != nil {
		t.Errorf("nil Recent totals %+v", tot)
	}
}

func TestRecentConcurrent(t *testing.T) {
	r := NewRecent(nil)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 200 {
				end := r.Begin(fmt.Sprint(i))
				r.AddBytes(From(j%4), 1)
				if j%50 == 0 {
					r.Fallback(errors.New("f"))
				}
				end(nil)
				_ = r.Window(time.Minute)
			}
		}()
	}
	wg.Wait()
	w := r.Window(time.Minute)
	if got := w.Bytes.Fetched() + w.Bytes.Local; got != 1600 || w.Downloads.OK != 1600 || w.Fallbacks != 32 || w.TasksInFlight != 0 {
		t.Errorf("after 8x200: %+v", w)
	}
}
