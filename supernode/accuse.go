package supernode

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/dfly-p2p/dfly/supernode/api"
)

// accusations checks bad-block reports before anyone is isolated. A report
// ("parent P served me a block that did not match its digest") is cheap to
// forge, so it only makes the reporter avoid P (Scheduler.Report); the
// supernode then fetches that block from P itself and compares it with the
// seed's digest: a wrong block blocks P for the task (Scheduler.Block), a
// right one counts against the reporter, whose reports are ignored once it
// has accused falsely maxFalseAccusations times. One check per (task,
// parent, block) at a time, at most accuseWorkers at once; reports beyond
// that are dropped (the reporter still avoids the parent).
type accusations struct {
	sn   *Supernode
	http *http.Client
	sem  chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	inflight map[accusation]bool
	falsely  map[string]int // reporter → false accusations
	claims   map[claim]int  // (task, parent) → blocks it claimed and did not hold
}

// claim is a parent's holding of a task, for counting false claims.
type claim struct{ task, parent string }

type accusation struct {
	task, parent string
	block        int
}

const (
	accuseWorkers       = 4
	accuseTimeout       = 30 * time.Second
	maxFalseAccusations = 3
	// maxFalseClaims confirmed missing blocks block a parent for a task:
	// it announced blocks it does not hold (an honest host that lost a
	// block says so with its next announce, and loses one or two claims).
	maxFalseClaims = 3
)

// errNotHeld is a check that found the parent without the block.
var errNotHeld = errors.New("the parent does not hold the block")

func newAccusations(sn *Supernode) *accusations {
	ctx, cancel := context.WithCancel(context.Background())
	return &accusations{sn: sn, sem: make(chan struct{}, accuseWorkers), ctx: ctx, cancel: cancel,
		inflight: map[accusation]bool{}, falsely: map[string]int{}, claims: map[claim]int{},
		http: &http.Client{Timeout: accuseTimeout, Transport: accuseTransport(sn)}}
}

// accuseTransport is the checks' HTTP transport: HTTPS with the swarm's
// certificate when the swarm uses TLS (Config.TLS).
func accuseTransport(sn *Supernode) http.RoundTripper {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if sn.cfg.TLS != nil {
		tr.DialTLSContext = sn.cfg.TLS.DialTLS(&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second})
	}
	return tr
}

// report starts checking reporter's claim that parent served a bad block.
func (a *accusations) report(task, reporter, parent string, block int) {
	k := accusation{task, parent, block}
	a.mu.Lock()
	if a.falsely[reporter] >= maxFalseAccusations || a.inflight[k] || a.ctx.Err() != nil {
		a.mu.Unlock()
		return
	}
	select {
	case a.sem <- struct{}{}:
	default:
		a.mu.Unlock()
		return
	}
	a.inflight[k] = true
	a.wg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		defer func() {
			<-a.sem
			a.mu.Lock()
			delete(a.inflight, k)
			a.mu.Unlock()
		}()
		a.check(k, reporter)
	}()
}

func (a *accusations) check(k accusation, reporter string) {
	log := a.sn.log.With("task", k.task, "parent", k.parent, "block", k.block, "reporter", reporter)
	bad, err := a.fetchIsBad(k)
	switch {
	case errors.Is(err, errNotHeld):
		a.mu.Lock()
		if len(a.claims) > 1<<14 { // bound the memory liars can make us use
			clear(a.claims)
		}
		a.claims[claim{k.task, k.parent}]++
		n := a.claims[claim{k.task, k.parent}]
		a.mu.Unlock()
		if n >= maxFalseClaims {
			log.Warn("the parent claims blocks it does not hold; blocked for the task", "false_claims", n)
			a.sn.sched.Block(k.task, k.parent)
		} else {
			log.Info("the parent does not hold a block it claimed; claim dropped", "false_claims", n)
		}
	case err != nil:
		log.Info("could not check a bad-block report; the reporter avoids the parent", "err", err)
	case bad:
		log.Warn("confirmed a bad block; parent blocked for the task")
		a.sn.sched.Block(k.task, k.parent)
	default:
		a.mu.Lock()
		a.falsely[reporter]++
		n := a.falsely[reporter]
		a.mu.Unlock()
		log.Warn("a bad-block report was false: the parent serves the right block", "false_reports", n)
	}
}

// fetchIsBad fetches the block from the parent and compares it with the
// seed's digest.
func (a *accusations) fetchIsBad(k accusation) (bool, error) {
	want, ok := a.sn.store.BlockDigest(k.task, k.block)
	if !ok {
		return false, fmt.Errorf("the seed does not know the digest of block %d", k.block)
	}
	h, ok := a.sn.sched.Host(k.parent)
	if !ok || h.UploadAddr == "" {
		return false, fmt.Errorf("parent %q is gone or has no upload address", k.parent)
	}
	ctx, cancel := context.WithTimeout(a.ctx, accuseTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s/blocks/%s/%d", a.sn.cfg.TLS.Scheme(), h.UploadAddr, k.task, k.block), nil)
	if err != nil {
		return false, err
	}
	tok, _ := a.sn.IssueToken(k.task, a.sn.cfg.SeedID)
	req.Header.Set(api.TokenHeader, tok)
	asked := a.sn.comp.ask(req) // check compressed answers too (compress.go)
	resp, err := a.http.Do(req)
	if err != nil {
		return false, fmt.Errorf("fetch the block from the parent: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		// It no longer claims the block (e.g. its store found it corrupt).
		a.sn.sched.RemoveBlocks(k.task, k.parent, []int{k.block})
		return false, errNotHeld
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("the parent answered HTTP %d", resp.StatusCode)
	}
	info, ok := a.sn.sched.Task(k.task)
	if !ok {
		return false, fmt.Errorf("task forgotten")
	}
	n := info.BlockLen(k.block)
	if resp.Header.Get("Content-Encoding") != "" {
		return a.sn.comp.formIsBad(resp, asked, n, want)
	}
	hsum := sha256.New()
	got, err := io.Copy(hsum, io.LimitReader(resp.Body, n+1))
	if err != nil {
		return false, fmt.Errorf("read the block from the parent: %w", err)
	}
	return got != n || !bytes.Equal(hsum.Sum(nil), want), nil
}

func (a *accusations) close() {
	a.cancel()
	a.wg.Wait()
	a.http.CloseIdleConnections()
}
