package supernode

// SchedulerCounts are the scheduler's totals, cheap to read often (metrics
// scrapes).
type SchedulerCounts struct {
	// Peers and Tasks are the hosts (seeds excluded) and tasks known now.
	Peers, Tasks int
	// Withheld is the number of times Assign withheld a wanted block
	// because a closer copy of it was on its way (see DedupTTL), since the
	// scheduler was created.
	Withheld uint64
}

// Counts returns the scheduler's totals.
func (s *Scheduler) Counts() SchedulerCounts {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := SchedulerCounts{Tasks: len(s.tasks), Withheld: s.withheld}
	for _, h := range s.hosts {
		if !h.IsSeed {
			c.Peers++
		}
	}
	return c
}
