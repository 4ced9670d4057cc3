// Package netbench is the multi-host benchmark harness of dfly: it builds an
// emulated datacenter on one machine (one network namespace per host, veth
// pairs into bridges that live in their own namespace, tc token-bucket limits
// on every host's upload and download, two "idc" groups joined by a narrower
// link), starts the real binaries inside the namespaces, runs one download per
// host at the same moment, and measures completion times against the physical
// bound, origin egress from interface counters, cross-idc bytes, CPU
// utilisation and sha256 correctness of every output.
//
// Scenarios: native (curl from the origin), dfly (dfget through each host's
// dfdaemon), bittorrent (aria2c + opentracker, origin host seeding) and
// locality (dfly with two idcs).
package netbench

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// EffectiveRateFactor is the share of a tbf rate that TCP payload gets after
// Ethernet, IP and TCP framing (measured: 100 Mbit/s tbf → 95.7 Mbit/s).
const EffectiveRateFactor = 0.957

// Scenario names.
const (
	Native     = "native"
	Dfly       = "dfly"
	BitTorrent = "bittorrent"
	Locality   = "locality"
)

// AllScenarios returns the default scenario list, in run order.
func AllScenarios() []string { return []string{Native, Dfly, BitTorrent, Locality} }

// Bound returns the physical lower bound of the time for n hosts of symmetric
// bandwidth peerBps to each get size bytes from one origin of upload
// originBps: max(S/Bo, S/Bp, N·S/(Bo+N·Bp)), using effective rates.
func Bound(size int64, n int, originBps, peerBps int64) time.Duration {
	if n <= 0 || originBps <= 0 || peerBps <= 0 {
		return 0
	}
	bits := float64(size) * 8
	bo := float64(originBps) * EffectiveRateFactor
	bp := float64(peerBps) * EffectiveRateFactor
	t := max(bits/bo, bits/bp, float64(n)*bits/(bo+float64(n)*bp))
	return time.Duration(t * float64(time.Second))
}

// ClientServerTime is the best time plain client-server download can reach:
// max(S/Bp, N·S/Bo), using effective rates.
func ClientServerTime(size int64, n int, originBps, peerBps int64) time.Duration {
	if n <= 0 || originBps <= 0 || peerBps <= 0 {
		return 0
	}
	bits := float64(size) * 8
	t := max(bits/(float64(peerBps)*EffectiveRateFactor), float64(n)*bits/(float64(originBps)*EffectiveRateFactor))
	return time.Duration(t * float64(time.Second))
}

// Percentile returns the nearest-rank p-th percentile (0 < p ≤ 100) of ds:
// the smallest value such that at least p% of the values are ≤ it.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// ParseRate parses a bit rate such as "100mbit", "1gbit", "1.5Gbit/s",
// "250M", "800kbit" or a plain number of bits per second.
func ParseRate(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "/s")
	t = strings.TrimSuffix(t, "bit")
	mult := 1.0
	switch {
	case strings.HasSuffix(t, "k"):
		mult, t = 1e3, strings.TrimSuffix(t, "k")
	case strings.HasSuffix(t, "m"):
		mult, t = 1e6, strings.TrimSuffix(t, "m")
	case strings.HasSuffix(t, "g"):
		mult, t = 1e9, strings.TrimSuffix(t, "g")
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) {
		return 0, fmt.Errorf("bad rate %q: want e.g. 100mbit or 1gbit", s)
	}
	return int64(v * mult), nil
}

// FormatRate formats bits per second the way tc accepts it ("100mbit").
func FormatRate(bps int64) string {
	switch {
	case bps%1e9 == 0:
		return fmt.Sprintf("%dgbit", bps/1e9)
	case bps%1e6 == 0:
		return fmt.Sprintf("%dmbit", bps/1e6)
	case bps%1e3 == 0:
		return fmt.Sprintf("%dkbit", bps/1e3)
	}
	return fmt.Sprintf("%dbit", bps)
}

// ParseSize parses a byte size: "200MB" (10^6), "64MiB" (2^20), "1GB",
// "32m" (10^6), "4096".
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	units := []struct {
		suffix string
		mult   float64
	}{
		{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
		{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9},
		{"k", 1e3}, {"m", 1e6}, {"g", 1e9}, {"b", 1},
	}
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			mult, t = u.mult, strings.TrimSuffix(t, u.suffix)
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) {
		return 0, fmt.Errorf("bad size %q: want e.g. 200MB or 64MiB", s)
	}
	return int64(v * mult), nil
}

// ParseInts parses a comma-separated list of positive integers ("5,10,20").
func ParseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		v, err := strconv.Atoi(f)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("bad count %q in %q: want positive integers separated by commas", f, s)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty list %q: want e.g. 5,10,20,40", s)
	}
	return out, nil
}
