package flow

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// fakeNIC writes SYS/class/net/IFACE/{statistics/rx_bytes,tx_bytes,speed}.
func fakeNIC(t *testing.T, sys, iface string, rx, tx uint64, speed string) {
	t.Helper()
	dir := filepath.Join(sys, "class", "net", iface, "statistics")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(path, s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "rx_bytes"), strconv.FormatUint(rx, 10)+"\n")
	write(filepath.Join(dir, "tx_bytes"), strconv.FormatUint(tx, 10)+"\n")
	if speed != "" {
		write(filepath.Join(sys, "class", "net", iface, "speed"), speed+"\n")
	}
}

func TestReadNIC(t *testing.T) {
	sys := t.TempDir()
	fakeNIC(t, sys, "eth0", 18446744073709551000, 42, "")
	c, err := ReadNIC(sys, "eth0")
	if err != nil || c != (Counters{Rx: 18446744073709551000, Tx: 42}) {
		t.Fatalf("ReadNIC = %+v, %v", c, err)
	}
	if _, err := ReadNIC(sys, "eth9"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing interface: %v, want ErrNotExist", err)
	}
	if err := os.WriteFile(filepath.Join(sys, "class/net/eth0/statistics/tx_bytes"), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadNIC(sys, "eth0"); err == nil {
		t.Fatal("a garbled counter was accepted")
	}
}

func TestLinkSpeed(t *testing.T) {
	sys := t.TempDir()
	for _, c := range []struct {
		speed string
		want  int64
	}{
		{"1000", 125_000_000},
		{"10000", 1_250_000_000},
		{"-1", 0}, // virtio, link down
		{"", 0},   // no file (loopback, bonds: EINVAL on read)
		{"fast", 0},
	} {
		iface := "if" + c.speed
		fakeNIC(t, sys, iface, 0, 0, c.speed)
		if got := LinkSpeed(sys, iface); got != c.want {
			t.Errorf("speed %q: LinkSpeed = %d, want %d", c.speed, got, c.want)
		}
	}
}

const route4 = `Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth0	00000000	010200C0	0003	0	0	100	00000000	0	0	0
wlan0	00000000	0101A8C0	0003	0	0	600	00000000	0	0	0
eth0	000200C0	00000000	0001	0	0	0	00FFFFFF	0	0	0
eth1	00004D0A	00000000	0001	0	0	0	0000FFFF	0	0	0
tun0	00014D0A	00000000	0001	0	0	0	00FFFFFF	0	0	0
down0	00024D0A	00000000	0000	0	0	0	00FFFFFF	0	0	0
bad0	00034D0A	00000000	0001	0	0	0	00FF00FF	0	0	0
short line
`

const route6 = `00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 00000001       lo
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1
fd000000000000000000000000000000 10 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth2
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
`

func TestRouteIface(t *testing.T) {
	for _, c := range []struct {
		name, table, dst string
		want             string
		err              error
	}{
		{"default route, lowest metric", route4, "", "eth0", nil},
		{"address on the default route", route4, "93.184.216.34", "eth0", nil},
		{"directly connected subnet", route4, "192.0.2.77", "eth0", nil},
		{"most specific prefix wins", route4, "10.77.1.5", "tun0", nil},
		{"wider subnet", route4, "10.77.9.5", "eth1", nil},
		{"routes that are not up are skipped", route4, "10.77.2.5", "eth1", nil},
		{"non-contiguous mask skipped", route4, "10.77.3.5", "eth1", nil},
		{"IPv4-mapped IPv6 uses the IPv4 table", route4, "::ffff:10.77.1.9", "tun0", nil},
		{"no default route", "Iface\tDestination\n", "", "", ErrNoRoute},
		{"IPv6 /64", route6, "fd00::1234", "eth1", nil},
		{"IPv6 wider prefix", route6, "fd00:0:0:1::1", "eth2", nil},
		{"IPv6 default route", route6, "2001:db8::1", "eth0", nil},
		{"IPv6 loopback entries are skipped", route6, "::1", "eth0", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			var dst netip.Addr
			if c.dst != "" {
				dst = netip.MustParseAddr(c.dst)
			}
			got, err := RouteIface([]byte(c.table), dst)
			if got != c.want || !errors.Is(err, c.err) {
				t.Fatalf("RouteIface(%s) = %q, %v; want %q, %v", c.dst, got, err, c.want, c.err)
			}
		})
	}
}

func TestParseBitRate(t *testing.T) {
	for _, c := range []struct {
		in     string
		want   int64
		ok     bool
		hasErr bool
	}{
		{"100mbit", 12_500_000, true, false},
		{"1Gbit/s", 125_000_000, true, false},
		{"1.5gbit", 187_500_000, true, false},
		{"800kbit", 100_000, true, false},
		{"64000bit", 8000, true, false},
		{" 40Mbit ", 5_000_000, true, false},
		{"100M", 0, false, false}, // bytes: the caller parses it
		{"12", 0, false, false},
		{"mbit", 0, true, true},
		{"-5mbit", 0, true, true},
		{"1e30tbit", 0, true, true},
		{"NaNmbit", 0, true, true},
	} {
		got, ok, err := ParseBitRate(c.in)
		if got != c.want || ok != c.ok || (err != nil) != c.hasErr {
			t.Errorf("ParseBitRate(%q) = %d, %v, %v; want %d, %v, error %v", c.in, got, ok, err, c.want, c.ok, c.hasErr)
		}
	}
}
