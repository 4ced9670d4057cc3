package supernode

import (
	"sort"
)

// The scheduler's snapshot for /debug/state and operators.

// HostState is a host as the scheduler sees it (for /debug/state).
type HostState struct {
	ID          string  `json:"id"`
	UploadAddr  string  `json:"upload_addr"`
	IDC         string  `json:"idc,omitempty"`
	Rack        string  `json:"rack,omitempty"`
	IsSeed      bool    `json:"is_seed,omitempty"`
	Capacity    int64   `json:"upload_capacity,omitempty"`
	InFlight    int     `json:"uploads_in_flight"`
	Assigned    int     `json:"recent_assignments"`
	Throughput  float64 `json:"throughput_bytes_per_sec"`
	FailRate    float64 `json:"fail_rate"`
	BytesServed int64   `json:"bytes_served"` // as reported by requesters
	LastSeenAgo float64 `json:"last_seen_seconds_ago"`
	Deprior     bool    `json:"deprioritised,omitempty"`
}

// TaskState is a task as the scheduler sees it.
type TaskState struct {
	TaskInfo
	Blocks  int            `json:"blocks"`
	Holders map[string]int `json:"holders"` // host id -> blocks held
	Blocked []string       `json:"blocked"`
}

// SchedulerState is a snapshot of the scheduler.
type SchedulerState struct {
	Hosts []HostState `json:"hosts"`
	Tasks []TaskState `json:"tasks"`
	Norm  float64     `json:"norm_throughput_bytes_per_sec"`
}

// State returns a snapshot of hosts and tasks, sorted by id.
func (s *Scheduler) State() SchedulerState {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	norm := s.normLocked(now)
	st := SchedulerState{Norm: norm, Hosts: []HostState{}, Tasks: []TaskState{}}
	for _, h := range s.hosts {
		s.pruneAssigned(h, now)
		sc := s.scoreLocked(h, h, 0, norm, now)
		st.Hosts = append(st.Hosts, HostState{
			ID: h.ID, UploadAddr: h.UploadAddr, IDC: h.IDC, Rack: h.Rack, IsSeed: h.IsSeed, Capacity: h.Capacity,
			InFlight: h.inFlight, Assigned: len(h.assigned), Throughput: h.throughput, FailRate: h.failRate,
			BytesServed: h.served, LastSeenAgo: now.Sub(h.lastSeen).Seconds(), Deprior: sc.class == classDeprioritised,
		})
	}
	for _, t := range s.tasks {
		ts := TaskState{TaskInfo: t.TaskInfo, Blocks: t.n, Holders: map[string]int{}, Blocked: []string{}}
		for id, hd := range t.holdings {
			ts.Holders[id] = hd.count
		}
		for id := range t.blocked {
			ts.Blocked = append(ts.Blocked, id)
		}
		sort.Strings(ts.Blocked)
		st.Tasks = append(st.Tasks, ts)
	}
	sort.Slice(st.Hosts, func(i, j int) bool { return st.Hosts[i].ID < st.Hosts[j].ID })
	sort.Slice(st.Tasks, func(i, j int) bool { return st.Tasks[i].ID < st.Tasks[j].ID })
	return st
}
