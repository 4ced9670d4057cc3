package compress

import (
	"errors"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name        string
		in          string
		idle, total float64
		ok          bool
	}{
		{"typical", "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\n", 840, 1000, true},
		{"old kernel, four fields", "cpu 10 0 10 80\n", 80, 100, true},
		{"guest fields are not counted twice", "cpu 10 0 10 70 10 0 0 0 99 99\n", 80, 100, true},
		{"no aggregate line", "cpu0 1 2 3 4 5\n", 0, 0, false},
		{"garbage", "cpu a b c d e\n", 0, 0, false},
		{"empty", "", 0, 0, false},
	}
	for _, tc := range tests {
		idle, total, err := parseProcStat([]byte(tc.in))
		if (err == nil) != tc.ok || idle != tc.idle || total != tc.total {
			t.Errorf("%s: %v, %v, %v; want %v, %v, ok %v", tc.name, idle, total, err, tc.idle, tc.total, tc.ok)
		}
	}
}

func TestSampler(t *testing.T) {
	now := time.Unix(1000, 0)
	var num, den float64
	var fail error
	s := NewSampler(func() (float64, float64, error) { return num, den, fail }, time.Second, func() time.Time { return now })
	if _, ok := s.Ratio(); ok {
		t.Fatal("a ratio from one sample")
	}
	num, den = 30, 100
	now = now.Add(500 * time.Millisecond)
	if _, ok := s.Ratio(); ok {
		t.Fatal("sampled again within the interval")
	}
	now = now.Add(600 * time.Millisecond)
	if r, ok := s.Ratio(); !ok || r != 0.3 {
		t.Fatalf("ratio %v, %v; want 0.3", r, ok)
	}
	num, den = 130, 200 // 100 of 100: a full interval
	if r, _ := s.Ratio(); r != 0.3 {
		t.Fatalf("within the interval the last ratio holds, got %v", r)
	}
	now = now.Add(time.Second)
	if r, _ := s.Ratio(); r != 1 {
		t.Fatalf("ratio %v, want 1", r)
	}
	num, den = 200, 200 // the numerator outran the denominator: clamped
	now = now.Add(time.Second)
	if r, ok := s.Ratio(); ok && r != 1 {
		t.Fatalf("unchanged denominator gave %v", r)
	}
	fail = errors.New("no /proc")
	now = now.Add(time.Second)
	if _, ok := s.Ratio(); ok {
		t.Fatal("a ratio from an unreadable counter")
	}
}

func TestRealSamplers(t *testing.T) {
	for name, s := range map[string]*Sampler{"idle": IdleSampler(), "process": ProcessSampler(func() float64 { return 0 })} {
		s.every = time.Millisecond
		s.Ratio()
		deadline := time.Now().Add(5 * time.Second)
		for {
			time.Sleep(20 * time.Millisecond)
			r, ok := s.Ratio()
			if ok {
				if r < 0 || r > 1 {
					t.Errorf("%s: ratio %v out of [0, 1]", name, r)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no ratio after 5 s", name)
			}
		}
	}
}
