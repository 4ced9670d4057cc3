package fs

import (
	"fmt"
	"strings"
	"testing"
)

// escapeMount is how the kernel writes a path in /proc/self/mountinfo.
func escapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == ' ' || c == '\t' || c == '\n' || c == '\\' {
			fmt.Fprintf(&b, `\%03o`, c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzMountinfo: the mount table. A path the kernel escaped reads back as
// itself; any table parses without a panic into entries with the fields
// of their line.
func FuzzMountinfo(f *testing.F) {
	f.Add("/mnt/a b\\c", "36 35 98:0 / /mnt/x rw,noatime master:1 - ext3 /dev/root rw\n37 1 0:1 / /x - fuse.dfly dfly rw")
	f.Add("/", "1 2 3:4 / \\040 - - -\n- - -\n\\\\\\")
	f.Fuzz(func(t *testing.T, p, table string) {
		if strings.ContainsRune(p, 0) || !strings.HasPrefix(p, "/") {
			return
		}
		line := fmt.Sprintf("36 35 98:0 / %s rw - fuse.dfly %s rw\n", escapeMount(p), escapeMount(p))
		ms, err := parseMountinfo(strings.NewReader(line))
		if err != nil || len(ms) != 1 || ms[0].MountPoint != p || ms[0].Source != p || ms[0].FsType != "fuse.dfly" {
			t.Fatalf("mount at %q reads back as %+v, %v", p, ms, err)
		}
		ms, err = parseMountinfo(strings.NewReader(table))
		if err == nil && len(ms) > strings.Count(table, "\n")+1 {
			t.Fatalf("%d entries from %d lines", len(ms), strings.Count(table, "\n")+1)
		}
	})
}

// FuzzNameFromURL: the file name taken from a URL is always a valid name.
func FuzzNameFromURL(f *testing.F) {
	for _, s := range []string{"http://h/a/b.bin", "http://h/", "http://h/..", "http://h/%2e%2e", "::", "http://h/a%00b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, u string) {
		if n := NameFromURL(u); ValidName(n) != nil {
			t.Fatalf("NameFromURL(%q) = %q, not a valid name", u, n)
		}
	})
}
