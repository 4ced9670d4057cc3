package peer

import (
	"context"
	"sync"
)

// flightGroup runs at most one operation per key at a time; callers that
// ask for a key while its operation runs wait for that operation and all
// get its result or its error. A failed operation is forgotten: the next
// caller starts a new one.
//
// The operation runs in a goroutine owned by the group, under a context of
// its own that keeps the first caller's values but not its cancellation: it
// is cancelled when every caller waiting for it has given up (or the group
// is closed), so one caller going away never fails the others.
type flightGroup[T any] struct {
	mu    sync.Mutex
	calls map[string]*flightCall[T]
	wg    sync.WaitGroup
}

type flightCall[T any] struct {
	done      chan struct{}
	val       T
	err       error
	waiters   int
	abandoned bool // every waiter left; the operation was cancelled
	cancel    context.CancelFunc
}

// do returns the result of fn for key, running it unless a call for key is
// already running, in which case it waits for that one.
func (g *flightGroup[T]) do(ctx context.Context, key string, fn func(context.Context) (T, error)) (T, error) {
	for {
		c := g.join(ctx, key, fn)
		select {
		case <-c.done:
			if c.abandoned && ctx.Err() == nil && isCtxErr(c.err) {
				continue // joined a call its other callers had given up: run it again
			}
			return c.val, c.err
		case <-ctx.Done():
			g.leave(c)
			var zero T
			return zero, ctx.Err()
		}
	}
}

func (g *flightGroup[T]) join(ctx context.Context, key string, fn func(context.Context) (T, error)) *flightCall[T] {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.calls[key]; ok {
		c.waiters++
		return c
	}
	if g.calls == nil {
		g.calls = map[string]*flightCall[T]{}
	}
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &flightCall[T]{done: make(chan struct{}), waiters: 1, cancel: cancel}
	g.calls[key] = c
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		val, err := fn(fctx)
		g.mu.Lock()
		c.val, c.err = val, err
		delete(g.calls, key)
		g.mu.Unlock()
		cancel()
		close(c.done)
	}()
	return c
}

func (g *flightGroup[T]) leave(c *flightCall[T]) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c.waiters--
	if c.waiters == 0 {
		c.abandoned = true
		c.cancel()
	}
}

// close cancels the running operations and waits for them to end. The
// group can be used again afterwards.
func (g *flightGroup[T]) close() {
	g.mu.Lock()
	for _, c := range g.calls {
		c.abandoned = true
		c.cancel()
	}
	g.mu.Unlock()
	g.wg.Wait()
}
