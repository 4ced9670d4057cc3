// Package flow is dfdaemon's flow control (--flow auto, --disk-backoff):
// it watches the host's network interface and the disk under the block
// store and lowers dfly's rate limits so that the host's own traffic keeps
// its share. The decisions are pure functions of samples (Decide,
// DecideDisk, table-tested); the Controller samples the kernel's counters
// and applies them. See docs/flow.md.
package flow

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Counters are cumulative byte counts of one side of the host's traffic:
// Rx received, Tx sent.
type Counters struct {
	Rx, Tx uint64
}

// ReadNIC reads the byte counters of iface from sysfs
// (SYS/class/net/IFACE/statistics/{rx,tx}_bytes; sys is "/sys" outside tests).
func ReadNIC(sys, iface string) (Counters, error) {
	dir := filepath.Join(sys, "class", "net", iface, "statistics")
	rx, err := readUint(filepath.Join(dir, "rx_bytes"))
	if err != nil {
		return Counters{}, fmt.Errorf("read the counters of interface %s: %w", iface, err)
	}
	tx, err := readUint(filepath.Join(dir, "tx_bytes"))
	if err != nil {
		return Counters{}, fmt.Errorf("read the counters of interface %s: %w", iface, err)
	}
	return Counters{Rx: rx, Tx: tx}, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// LinkSpeed returns iface's speed in bytes/s from SYS/class/net/IFACE/speed
// (Mbit/s), or 0 when the kernel does not know it (virtual interfaces,
// a link that is down: the file is unreadable or says -1).
func LinkSpeed(sys, iface string) int64 {
	b, err := os.ReadFile(filepath.Join(sys, "class", "net", iface, "speed"))
	if err != nil {
		return 0
	}
	mbit, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || mbit <= 0 || mbit > 1e7 { // 10 Pbit/s: nonsense
		return 0
	}
	return mbit * 1e6 / 8
}

// ErrNoRoute: the routing table has no route to the address (nor a default route).
var ErrNoRoute = errors.New("no route")

// RouteIface returns the interface of the most specific route to dst in
// the kernel's IPv4 routing table (the text of /proc/net/route) or, for an
// IPv6 dst, its IPv6 table (/proc/net/ipv6_route). An invalid dst picks
// the default route of the IPv4 table. Routes that are not up, and
// IPv6 routes through the loopback interface (how the kernel lists
// unreachable and local entries), are skipped; among routes of one prefix
// length the lowest metric wins.
func RouteIface(table []byte, dst netip.Addr) (string, error) {
	var routes []route
	var err error
	if dst.Is6() && !dst.Is4In6() {
		routes, err = parseIPv6Routes(table)
	} else {
		routes, err = parseIPv4Routes(table)
		if !dst.IsValid() {
			dst = netip.IPv4Unspecified()
		}
	}
	if err != nil {
		return "", err
	}
	dst = dst.Unmap()
	best := -1
	for i, r := range routes {
		if !r.prefix.Contains(dst) {
			continue
		}
		if best < 0 || r.prefix.Bits() > routes[best].prefix.Bits() ||
			r.prefix.Bits() == routes[best].prefix.Bits() && r.metric < routes[best].metric {
			best = i
		}
	}
	if best < 0 {
		return "", fmt.Errorf("route to %s: %w", dst, ErrNoRoute)
	}
	return routes[best].iface, nil
}

type route struct {
	iface  string
	prefix netip.Prefix
	metric uint64
}

const rtfUp = 0x1 // RTF_UP

// parseIPv4Routes parses /proc/net/route: a header line, then
// "Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT"
// with the addresses as host-order (little-endian on every Linux dfly runs
// on) hexadecimal. Lines that do not parse are skipped.
func parseIPv4Routes(table []byte) ([]route, error) {
	var out []route
	sc := bufio.NewScanner(bytes.NewReader(table))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for first := true; sc.Scan(); first = false {
		f := strings.Fields(sc.Text())
		if first || len(f) < 8 {
			continue
		}
		dst, ok1 := hexIPv4(f[1])
		mask, ok2 := hexIPv4(f[7])
		flags, err1 := strconv.ParseUint(f[3], 16, 32)
		metric, err2 := strconv.ParseUint(f[6], 10, 64)
		if !ok1 || !ok2 || err1 != nil || err2 != nil || flags&rtfUp == 0 {
			continue
		}
		bits, ok := maskBits(mask)
		if !ok {
			continue
		}
		p, err := netip.AddrFrom4(dst).Prefix(bits)
		if err != nil {
			continue
		}
		out = append(out, route{iface: f[0], prefix: p, metric: metric})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read the IPv4 routing table: %w", err)
	}
	return out, nil
}

// hexIPv4 decodes an address of /proc/net/route (8 hex digits, host order).
func hexIPv4(s string) ([4]byte, bool) {
	var a [4]byte
	if len(s) != 8 {
		return a, false
	}
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return a, false
	}
	binary.LittleEndian.PutUint32(a[:], uint32(v))
	return a, true
}

// maskBits turns a netmask into a prefix length (false: not contiguous).
func maskBits(m [4]byte) (int, bool) {
	v := binary.BigEndian.Uint32(m[:])
	n := 0
	for n < 32 && v&(1<<(31-n)) != 0 {
		n++
	}
	if n < 32 && v<<n != 0 {
		return 0, false
	}
	return n, true
}

// parseIPv6Routes parses /proc/net/ipv6_route: "dest prefixlen src
// srclen nexthop metric refcnt use flags iface", hexadecimal, no header.
func parseIPv6Routes(table []byte) ([]route, error) {
	var out []route
	sc := bufio.NewScanner(bytes.NewReader(table))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 || len(f[0]) != 32 {
			continue
		}
		raw, err := hex.DecodeString(f[0])
		bits, err1 := strconv.ParseUint(f[1], 16, 8)
		metric, err2 := strconv.ParseUint(f[5], 16, 32)
		flags, err3 := strconv.ParseUint(f[8], 16, 32)
		if err != nil || err1 != nil || err2 != nil || err3 != nil || bits > 128 || flags&rtfUp == 0 || f[9] == "lo" {
			continue
		}
		p, err := netip.AddrFrom16([16]byte(raw)).Prefix(int(bits))
		if err != nil {
			continue
		}
		out = append(out, route{iface: f[9], prefix: p, metric: metric})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read the IPv6 routing table: %w", err)
	}
	return out, nil
}

// ParseBitRate parses a rate in bits per second the way tc writes them:
// "100mbit", "1gbit", "1.5Gbit/s", "800kbit", "64000bit" (decimal
// multiples), and returns it in bytes/s. ok is false when s is not written
// in bits (no "bit" suffix): the caller then parses it as bytes/s.
func ParseBitRate(s string) (bytesPerSec int64, ok bool, err error) {
	t := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "/s")
	t, found := strings.CutSuffix(t, "bit")
	if !found {
		return 0, false, nil
	}
	mult := 1.0
	switch {
	case strings.HasSuffix(t, "k"):
		mult = 1e3
	case strings.HasSuffix(t, "m"):
		mult = 1e6
	case strings.HasSuffix(t, "g"):
		mult = 1e9
	case strings.HasSuffix(t, "t"):
		mult = 1e12
	}
	if mult > 1 {
		t = t[:len(t)-1]
	}
	v, perr := strconv.ParseFloat(strings.TrimSpace(t), 64)
	bps := v * mult / 8
	if perr != nil || !(v >= 0) || !(bps < math.MaxInt64) {
		return 0, true, fmt.Errorf("invalid rate %q: want e.g. 100mbit, 1gbit or 800kbit", s)
	}
	return int64(bps), true, nil
}
