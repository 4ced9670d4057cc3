package peer

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPreheaterRunsEachOrderOnceAndReportsFailures(t *testing.T) {
	var mu sync.Mutex
	var ran []string
	reports := map[string]string{}
	p := newPreheater(slog.New(slog.DiscardHandler), 0, nil, func(job, task string, err error) {
		mu.Lock()
		reports[job+"/"+task] = err.Error()
		mu.Unlock()
	})
	done := make(chan struct{}, 8)
	p.start(func(ctx context.Context, o PreheatOrder, pace func(context.Context, int64) error) error {
		mu.Lock()
		ran = append(ran, o.JobID+"/"+o.TaskID)
		mu.Unlock()
		defer func() { done <- struct{}{} }()
		if o.TaskID == "bad" {
			return errors.New("origin answered 404")
		}
		return pace(ctx, 1<<20)
	})
	defer p.close()
	orders := []PreheatOrder{{JobID: "j", TaskID: "a"}, {JobID: "j", TaskID: "bad"}}
	p.offer(orders)
	p.offer(orders) // the next heartbeat repeats them
	for range 2 {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("orders did not run")
		}
	}
	p.offer(orders)
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(ran) != 2 {
		t.Fatalf("ran %v, want each order once", ran)
	}
	if reports["j/bad"] != "origin answered 404" || len(reports) != 1 {
		t.Fatalf("reports %v, want the failure of j/bad only", reports)
	}
}

func TestPreheaterPaceYieldsAndLimits(t *testing.T) {
	var busy atomic.Bool
	busy.Store(true)
	p := newPreheater(slog.New(slog.DiscardHandler), 4<<20, busy.Load, func(string, string, error) {})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan error, 1)
	go func() { got <- p.pace(ctx, 1<<20) }()
	select {
	case err := <-got:
		t.Fatalf("pace returned (%v) while a foreground download runs", err)
	case <-time.After(200 * time.Millisecond):
	}
	busy.Store(false)
	if err := <-got; err != nil {
		t.Fatalf("pace after the foreground work ended: %v", err)
	}
	// The limiter: 4 MiB/s with a 4 MiB burst; 4 MiB more must wait about a second.
	if err := p.pace(ctx, 3<<20); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := p.pace(ctx, 4<<20); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(began); waited < 500*time.Millisecond {
		t.Fatalf("8 MiB passed a 4 MiB/s limit in %v", waited)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	busy.Store(true)
	if err := p.pace(cctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("pace with a cancelled context: %v", err)
	}
}

func TestPreheaterQueueBounded(t *testing.T) {
	p := newPreheater(slog.New(slog.DiscardHandler), 0, nil, func(string, string, error) {})
	var orders []PreheatOrder
	for i := range preheatQueue + 10 {
		orders = append(orders, PreheatOrder{JobID: "j", TaskID: string(rune('a'+i%26)) + string(rune('A'+i/26))})
	}
	p.offer(orders) // not started: the queue fills, the rest wait for a later heartbeat
	if len(p.queue) != preheatQueue || len(p.seen) != preheatQueue {
		t.Fatalf("queued %d, seen %d; want %d each (the overflow is offered again later)", len(p.queue), len(p.seen), preheatQueue)
	}
}
