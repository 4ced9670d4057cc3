package compress

import (
	"sync"
	"time"
)

// Pruner removes, every interval, the forms of the tasks keep refuses (the
// block store no longer holds them: deleted, evicted), so a side store
// never outlives its blocks for long. It owns one goroutine; Stop ends it.
type Pruner struct {
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// StartPruner prunes forms once now, then every interval until Stop.
func StartPruner(forms *Forms, every time.Duration, keep func(task string) bool) *Pruner {
	p := &Pruner{stop: make(chan struct{})}
	forms.Prune(keep)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				forms.Prune(keep)
			}
		}
	}()
	return p
}

// Stop ends the pruning and waits for a prune under way.
func (p *Pruner) Stop() {
	if p == nil {
		return
	}
	p.once.Do(func() {
		close(p.stop)
		p.wg.Wait()
	})
}
