package netbench

import "testing"

func TestParseProcStat(t *testing.T) {
	content := "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 50 2 25 400 20 1 1 0 0 0\nintr 1 2 3\n"
	got, err := ParseProcStat(content)
	if err != nil {
		t.Fatal(err)
	}
	// busy = user+nice+system+irq+softirq+steal; idle and iowait excluded; guest not added twice.
	if got.Busy != 100+5+50+3+2+0 || got.Total != 100+5+50+800+40+3+2+0 {
		t.Errorf("ParseProcStat = %+v", got)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5\n", "cpu a b c d e\n"} {
		if _, err := ParseProcStat(bad); err == nil {
			t.Errorf("ParseProcStat(%q) accepted", bad)
		}
	}
}

func TestUtilisation(t *testing.T) {
	tests := []struct {
		a, b CPUTimes
		want float64
	}{
		{CPUTimes{10, 100}, CPUTimes{60, 200}, 0.5},
		{CPUTimes{10, 100}, CPUTimes{10, 200}, 0},
		{CPUTimes{10, 100}, CPUTimes{110, 200}, 1},
		{CPUTimes{10, 100}, CPUTimes{10, 100}, 0},
	}
	for _, tt := range tests {
		if got := Utilisation(tt.a, tt.b); got != tt.want {
			t.Errorf("Utilisation(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestReadCPU(t *testing.T) {
	a, err := ReadCPU()
	if err != nil {
		t.Fatal(err)
	}
	x := 0
	for i := range 3_000_000 {
		x += i % 7
	}
	b, err := ReadCPU()
	if err != nil {
		t.Fatal(err)
	}
	if b.Total < a.Total || b.Busy < a.Busy || a.Busy > a.Total || x < 0 {
		t.Errorf("CPU times went backwards or busy > total: %+v then %+v", a, b)
	}
	if u := Utilisation(a, b); u < 0 || u > 1 {
		t.Errorf("utilisation %v outside 0..1", u)
	}
}
