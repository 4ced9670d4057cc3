package supernode

import "testing"

func TestScoreBetter(t *testing.T) {
	base := score{class: classPeer, locality: sameIDC, load: 1, history: 100}
	with := func(f func(*score)) score { s := base; f(&s); return s }
	tests := []struct {
		name string
		a, b score
		want bool // a ranks before b
	}{
		{"unsaturated beats saturated", base, with(func(s *score) { s.saturated = true }), true},
		{"saturated loses even when local", with(func(s *score) { s.saturated = true; s.locality = sameRack }), base, false},
		{"unsaturated seed beats saturated peer", with(func(s *score) { s.class = classSeed }), with(func(s *score) { s.saturated = true }), true},
		{"peer beats seed", base, with(func(s *score) { s.class = classSeed; s.locality = sameRack; s.load = 0 }), true},
		{"peer beats deprioritised", with(func(s *score) { s.locality = elsewhere }), with(func(s *score) { s.class = classDeprioritised; s.locality = sameRack }), true},
		{"deprioritised beats seed", with(func(s *score) { s.class = classDeprioritised }), with(func(s *score) { s.class = classSeed }), true},
		{"same rack beats same idc", with(func(s *score) { s.locality = sameRack; s.load = 5 }), base, true},
		{"same idc beats elsewhere", with(func(s *score) { s.load = 9 }), with(func(s *score) { s.locality = elsewhere; s.load = 0 }), true},
		{"less loaded wins", with(func(s *score) { s.load = 0.5; s.history = 1 }), base, true},
		{"more loaded loses", with(func(s *score) { s.load = 2; s.history = 1000 }), base, false},
		{"better history breaks load tie", with(func(s *score) { s.history = 200 }), base, true},
		{"worse history loses tie", with(func(s *score) { s.history = 50 }), base, false},
		{"equal is not better", base, base, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.a.better(tc.b); got != tc.want {
				t.Fatalf("better(%+v, %+v) = %v, want %v", tc.a, tc.b, got, tc.want)
			}
			if tc.want && tc.b.better(tc.a) {
				t.Fatalf("better is not antisymmetric for %+v, %+v", tc.a, tc.b)
			}
		})
	}
}

func TestLocalityOf(t *testing.T) {
	tests := []struct {
		reqIDC, reqRack, parIDC, parRack string
		want                             int
	}{
		{"a", "r1", "a", "r1", sameRack},
		{"a", "r1", "a", "r2", sameIDC},
		{"a", "", "a", "", sameIDC},
		{"a", "r1", "b", "r1", elsewhere}, // rack names are only meaningful inside an idc
		{"", "r1", "", "r1", elsewhere},   // no labels: no locality claim
		{"", "", "", "", elsewhere},
		{"a", "r1", "", "", elsewhere},
	}
	for _, tc := range tests {
		if got := localityOf(tc.reqIDC, tc.reqRack, tc.parIDC, tc.parRack); got != tc.want {
			t.Errorf("localityOf(%q,%q,%q,%q) = %d, want %d", tc.reqIDC, tc.reqRack, tc.parIDC, tc.parRack, got, tc.want)
		}
	}
}
