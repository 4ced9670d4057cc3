package compress

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Sampler turns two cumulative counters into their ratio over the last
// interval (at least every seconds apart): the machine's idle share of CPU
// time from /proc/stat (IdleSampler), or a process's share of all CPUs
// (ProcessSampler). It samples lazily, when asked, so it needs no
// goroutine: the ratio is that of the interval between the two latest
// samples, taken at least every apart.
type Sampler struct {
	read  func() (num, den float64, err error)
	now   func() time.Time
	every time.Duration

	mu       sync.Mutex
	at       time.Time
	num, den float64
	ratio    float64
	known    bool
}

// NewSampler returns a Sampler of the counters read returns, sampled at
// most every every (default 1s). now is the clock (default time.Now).
func NewSampler(read func() (num, den float64, err error), every time.Duration, now func() time.Time) *Sampler {
	if every <= 0 {
		every = time.Second
	}
	if now == nil {
		now = time.Now
	}
	return &Sampler{read: read, now: now, every: every}
}

// Ratio returns the ratio of the counters' growth over the latest
// interval; false until two samples were taken (or when the counters cannot
// be read).
func (s *Sampler) Ratio() (float64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if !s.at.IsZero() && now.Sub(s.at) < s.every {
		return s.ratio, s.known
	}
	num, den, err := s.read()
	if err != nil {
		s.known = false
		return 0, false
	}
	if !s.at.IsZero() && den > s.den {
		s.ratio, s.known = min(max((num-s.num)/(den-s.den), 0), 1), true
	}
	s.at, s.num, s.den = now, num, den
	return s.ratio, s.known
}

// IdleSampler samples the machine's idle share of CPU time (idle and
// iowait over all time in /proc/stat's "cpu" line).
func IdleSampler() *Sampler {
	return NewSampler(func() (float64, float64, error) {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0, err
		}
		return parseProcStat(b)
	}, time.Second, nil)
}

// parseProcStat returns the idle (idle + iowait) and total jiffies of the
// aggregate "cpu" line of /proc/stat.
func parseProcStat(b []byte) (idle, total float64, err error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 5 || string(f[0]) != "cpu" {
			continue
		}
		// user nice system idle iowait irq softirq steal (guest time is
		// already in user and nice).
		for i, v := range f[1:min(len(f), 9)] {
			n, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("/proc/stat: cpu field %d: %w", i+1, err)
			}
			total += float64(n)
			if i == 3 || i == 4 {
				idle += float64(n)
			}
		}
		return idle, total, nil
	}
	return 0, 0, errors.New("/proc/stat: no cpu line")
}

// ProcessSampler samples this process's share of all CPUs (user and system
// time over wall time times the CPU count), minus the CPU time excluded
// reports (cumulative seconds; nil: none): the compressor excludes its own
// trials, so that compressing does not count as the load that stops it.
func ProcessSampler(excluded func() float64) *Sampler {
	ncpu := float64(runtime.NumCPU())
	began := time.Now()
	return NewSampler(func() (float64, float64, error) {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0, 0, err
		}
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
		if excluded != nil {
			cpu -= excluded()
		}
		return cpu, time.Since(began).Seconds() * ncpu, nil
	}, time.Second, nil)
}
