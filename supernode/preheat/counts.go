package preheat

// States returns every job state, in a job's order of life.
func States() []string {
	return []string{StateQueued, StateRunning, StateSucceeded, StateFailed, StateCanceled}
}

// Counts returns how many jobs the manager knows in each state; every state
// of States is present (0 when no job is in it). A nil manager has none.
func (m *Manager) Counts() map[string]int {
	out := map[string]int{}
	for _, s := range States() {
		out[s] = 0
	}
	if m == nil {
		return out
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.jobs {
		out[e.job.State]++
	}
	return out
}
