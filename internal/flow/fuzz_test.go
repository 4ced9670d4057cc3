package flow

import (
	"net/netip"
	"testing"
)

// The kernel's tables are input the daemon trusts to be well formed; a
// parser must still never panic or loop on a malformed one.

func FuzzDiskTicks(f *testing.F) {
	f.Add([]byte(diskstats), uint32(254), uint32(0))
	f.Add([]byte(" 8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n"), uint32(8), uint32(0))
	f.Add([]byte("\x00\n\n 4294967295 4294967295 x 1 1 1 1 1 1 1 1 1 18446744073709551615 1"), uint32(1<<32-1), uint32(1<<32-1))
	f.Fuzz(func(t *testing.T, data []byte, maj, mnr uint32) {
		ticks, ok := DiskTicks(data, maj, mnr)
		if !ok && ticks != 0 {
			t.Fatalf("not found but ticks %d", ticks)
		}
	})
}

func FuzzRouteIface(f *testing.F) {
	f.Add([]byte(route4), "10.77.1.5")
	f.Add([]byte(route6), "fd00::1")
	f.Add([]byte("Iface\tDestination\nx FFFFFFFF 0 1 0 0 18446744073709551615 FFFFFFFF\n"), "")
	f.Fuzz(func(t *testing.T, table []byte, dst string) {
		a, _ := netip.ParseAddr(dst)
		iface, err := RouteIface(table, a)
		if err == nil && iface == "" {
			t.Fatal("a route without an interface")
		}
	})
}
