package supernode

import (
	"sort"
	"sync"

	"github.com/dfly-p2p/dfly/supernode/api"
	"github.com/dfly-p2p/dfly/supernode/preheat"
)

// hostOrders is the control plane's side of host preheats: preheat orders
// wait here per host and go out with each of the host's heartbeats until
// the host holds the task or the job withdraws them; what a host holds
// comes from the scheduler (its announces and Syncs), and the failures a
// host reports back are kept for the job.
type hostOrders struct {
	sched  *Scheduler
	seedID string

	mu       sync.Mutex
	orders   map[string]map[orderKey]preheat.Target // host → orders
	failures map[string]map[orderKey]string         // host → failures reported
}

type orderKey struct{ job, task string }

func newHostOrders(sched *Scheduler, seedID string) *hostOrders {
	return &hostOrders{sched: sched, seedID: seedID, orders: map[string]map[orderKey]preheat.Target{}, failures: map[string]map[orderKey]string{}}
}

// Live lists the live dfdaemons.
func (o *hostOrders) Live() []preheat.HostInfo {
	var out []preheat.HostInfo
	for _, h := range o.sched.Hosts() {
		if h.ID != o.seedID {
			out = append(out, preheat.HostInfo{ID: h.ID, IDC: h.IDC, Rack: h.Rack})
		}
	}
	return out
}

// Order queues t for host.
func (o *hostOrders) Order(host, job string, t preheat.Target) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.orders[host] == nil {
		o.orders[host] = map[orderKey]preheat.Target{}
	}
	o.orders[host][orderKey{job, t.TaskID}] = t
}

// Held reports what host holds of task and the failure it reported for job's order.
func (o *hostOrders) Held(host, job, task string) (held, total int, failure string) {
	held, total = o.sched.Held(task, host)
	o.mu.Lock()
	failure = o.failures[host][orderKey{job, task}]
	o.mu.Unlock()
	return held, total, failure
}

// Withdraw drops a job's orders and failures.
func (o *hostOrders) Withdraw(job string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for host, byKey := range o.orders {
		for k := range byKey {
			if k.job == job {
				delete(byKey, k)
			}
		}
		if len(byKey) == 0 {
			delete(o.orders, host)
		}
	}
	for host, byKey := range o.failures {
		for k := range byKey {
			if k.job == job {
				delete(byKey, k)
			}
		}
		if len(byKey) == 0 {
			delete(o.failures, host)
		}
	}
}

// pending returns host's orders for its heartbeat answer: those it does
// not hold completely yet and has not reported failed, sorted.
func (o *hostOrders) pending(host string) []*api.PreheatOrder {
	o.mu.Lock()
	var keys []orderKey
	ts := map[orderKey]preheat.Target{}
	for k, t := range o.orders[host] {
		if _, failed := o.failures[host][k]; failed {
			continue
		}
		keys = append(keys, k)
		ts[k] = t
	}
	o.mu.Unlock()
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].job != keys[j].job {
			return keys[i].job < keys[j].job
		}
		return keys[i].task < keys[j].task
	})
	var out []*api.PreheatOrder
	for _, k := range keys {
		if held, total := o.sched.Held(k.task, host); total > 0 && held == total {
			continue
		}
		t := ts[k]
		po := &api.PreheatOrder{JobId: k.job, TaskId: t.TaskID, Url: t.URL, Digest: t.Digest, Tag: t.Tag}
		for name, vs := range t.Header {
			for _, v := range vs {
				po.Headers = append(po.Headers, &api.Header{Name: name, Value: v})
			}
		}
		out = append(out, po)
	}
	return out
}

// report records the failures a host sent with its heartbeat (for orders
// it has; others are stale and dropped).
func (o *hostOrders) report(host string, reps []*api.PreheatReport) {
	if len(reps) == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, r := range reps {
		k := orderKey{r.GetJobId(), r.GetTaskId()}
		if _, ok := o.orders[host][k]; !ok {
			continue
		}
		if o.failures[host] == nil {
			o.failures[host] = map[orderKey]string{}
		}
		msg := r.GetError()
		if msg == "" {
			msg = "the host failed the preheat"
		}
		if len(msg) > 512 {
			msg = msg[:512]
		}
		o.failures[host][k] = msg
	}
}
