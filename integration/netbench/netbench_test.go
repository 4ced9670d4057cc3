package netbench

import (
	"testing"
	"time"
)

func TestBound(t *testing.T) {
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	tests := []struct {
		name        string
		size        int64
		n           int
		bo, bp      int64
		want        time.Duration
		wantCSAbove time.Duration
	}{
		// 200 MB at 95.7 Mbit/s: the peer's own download is the bound at every N.
		{"S/Bp dominates", 200e6, 5, 1e9, 100e6, sec(1600 / 95.7), sec(1600 / 95.7)},
		{"S/Bp dominates at 40", 200e6, 40, 1e9, 100e6, sec(1600 / 95.7), sec(40 * 1600 / 957.0)},
		// Slow origin: S/Bo.
		{"S/Bo dominates", 100e6, 4, 10e6, 100e6, sec(800 / 9.57), sec(4 * 800 / 9.57)},
		// With symmetric peers N·S/(Bo+N·Bp) < S/Bp always: equal rates give S/Bo = S/Bp.
		{"equal rates", 10e6, 3, 10e6, 10e6, sec(80 / 9.57), sec(3 * 80 / 9.57)},
		{"no hosts", 1e6, 0, 1e9, 1e8, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Bound(tt.size, tt.n, tt.bo, tt.bp)
			if d := got - tt.want; d > time.Millisecond || d < -time.Millisecond {
				t.Errorf("Bound = %v, want %v", got, tt.want)
			}
			cs := ClientServerTime(tt.size, tt.n, tt.bo, tt.bp)
			if d := cs - tt.wantCSAbove; d > time.Millisecond || d < -time.Millisecond {
				t.Errorf("ClientServerTime = %v, want %v", cs, tt.wantCSAbove)
			}
			if cs < got {
				t.Errorf("client-server time %v below the swarm bound %v", cs, got)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	s := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Second)
		}
		return out
	}
	tests := []struct {
		ds   []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{s(7), 50, 7 * time.Second},
		{s(7), 99, 7 * time.Second},
		{s(5, 1, 3, 2, 4), 50, 3 * time.Second},
		{s(5, 1, 3, 2, 4), 99, 5 * time.Second},
		{s(5, 1, 3, 2, 4), 100, 5 * time.Second},
		{s(4, 3, 2, 1), 50, 2 * time.Second},
		{s(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, 9 * time.Second},
		{s(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Second},
		{s(3, 1, 2), 0, 1 * time.Second},
	}
	for _, tt := range tests {
		in := append([]time.Duration(nil), tt.ds...)
		if got := Percentile(tt.ds, tt.p); got != tt.want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", tt.ds, tt.p, got, tt.want)
		}
		for i := range in {
			if in[i] != tt.ds[i] {
				t.Fatalf("Percentile reordered its input")
			}
		}
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"100mbit", 100e6, false},
		{"1gbit", 1e9, false},
		{"1.5Gbit/s", 1.5e9, false},
		{"250M", 250e6, false},
		{"800kbit", 800e3, false},
		{"100mbps", 0, true}, // tc reads mbps as megabytes/s: refuse the ambiguity
		{"12345", 12345, false},
		{"", 0, true},
		{"fast", 0, true},
		{"-5mbit", 0, true},
		{"0", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseRate(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestFormatRate(t *testing.T) {
	for in, want := range map[int64]string{1e9: "1gbit", 100e6: "100mbit", 1500e6: "1500mbit", 64e3: "64kbit", 1234: "1234bit"} {
		if got := FormatRate(in); got != want {
			t.Errorf("FormatRate(%d) = %q, want %q", in, got, want)
		}
		if back, err := ParseRate(FormatRate(in)); err != nil || back != in {
			t.Errorf("ParseRate(FormatRate(%d)) = %d, %v", in, back, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"200MB", 200e6, false},
		{"64MiB", 64 << 20, false},
		{"1GB", 1e9, false},
		{"2GiB", 2 << 30, false},
		{"32m", 32e6, false},
		{"4096", 4096, false},
		{"10kib", 10 << 10, false},
		{"7b", 7, false},
		{"MB", 0, true},
		{"-1MB", 0, true},
		{"lots", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseInts(t *testing.T) {
	got, err := ParseInts(" 5,10, 20,40,")
	if err != nil || len(got) != 4 || got[0] != 5 || got[3] != 40 {
		t.Errorf("ParseInts = %v, %v", got, err)
	}
	for _, bad := range []string{"", ",", "5,x", "0", "-3"} {
		if _, err := ParseInts(bad); err == nil {
			t.Errorf("ParseInts(%q) accepted", bad)
		}
	}
}

func TestScenarios(t *testing.T) {
	all := AllScenarios()
	if len(all) != 4 || all[0] != Native || all[1] != Dfly || all[2] != BitTorrent || all[3] != Locality {
		t.Errorf("AllScenarios = %v", all)
	}
	all[0] = "mutated"
	if AllScenarios()[0] != Native {
		t.Error("AllScenarios shares its slice")
	}
	for s, want := range map[string]bool{Native: false, Dfly: true, BitTorrent: false, Locality: true} {
		if NeedsDfly(s) != want {
			t.Errorf("NeedsDfly(%s) = %v", s, !want)
		}
	}
}
