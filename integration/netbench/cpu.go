package netbench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// CPUTimes are the machine-wide jiffies from the first line of /proc/stat.
type CPUTimes struct {
	Busy, Total uint64
}

// ParseProcStat reads the aggregate "cpu" line of /proc/stat content:
// user nice system idle iowait irq softirq steal [guest guest_nice]. Idle and
// iowait are idle time; guest time is already counted in user.
func ParseProcStat(content string) (CPUTimes, error) {
	sc := bufio.NewScanner(strings.NewReader(content))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || f[0] != "cpu" {
			continue
		}
		var v []uint64
		for _, s := range f[1:min(len(f), 9)] {
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return CPUTimes{}, fmt.Errorf("parse /proc/stat cpu line %q: %w", sc.Text(), err)
			}
			v = append(v, n)
		}
		var t CPUTimes
		for i, n := range v {
			t.Total += n
			if i != 3 && i != 4 {
				t.Busy += n
			}
		}
		return t, nil
	}
	return CPUTimes{}, fmt.Errorf("no aggregate cpu line in /proc/stat")
}

// ReadCPU reads the machine's CPU times now.
func ReadCPU() (CPUTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	return ParseProcStat(string(b))
}

// Utilisation is the busy share of all CPUs between two readings (0..1).
func Utilisation(before, after CPUTimes) float64 {
	if after.Total <= before.Total {
		return 0
	}
	return float64(after.Busy-before.Busy) / float64(after.Total-before.Total)
}
