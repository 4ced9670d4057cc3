package preheat

import (
	"maps"
	"strings"
	"testing"
)

func TestCounts(t *testing.T) {
	want := map[string]int{StateQueued: 0, StateRunning: 0, StateSucceeded: 0, StateFailed: 0, StateCanceled: 0}
	var none *Manager
	if got := none.Counts(); !maps.Equal(got, want) {
		t.Fatalf("nil manager: %v, want %v", got, want)
	}
	s := newFakeSeeder()
	m := open(t, t.TempDir(), s, nil)
	if got := m.Counts(); !maps.Equal(got, want) {
		t.Fatalf("no jobs: %v, want every state at 0: %v", got, want)
	}
	ok, err := m.Submit(Request{Type: TypeURL, URL: "http://origin/ok"})
	if err != nil {
		t.Fatal(err)
	}
	wait(t, m, ok.ID)
	s.fail["sha256-"+strings.Repeat("b", 64)] = "origin answered 500"
	bad, err := m.Submit(Request{Type: TypeImage, Image: "reg/app:v1"})
	if err != nil {
		t.Fatal(err)
	}
	wait(t, m, bad.ID)
	s.mu.Lock()
	s.stall = true
	s.mu.Unlock()
	canceled, err := m.Submit(Request{Type: TypeURL, URL: "http://origin/stalls"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Cancel(canceled.ID); err != nil {
		t.Fatal(err)
	}
	want[StateSucceeded], want[StateFailed], want[StateCanceled] = 1, 1, 1
	if got := m.Counts(); !maps.Equal(got, want) {
		t.Fatalf("counts %v, want %v", got, want)
	}
}
