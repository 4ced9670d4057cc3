// Command lister prints what it sees of the filesystem at a root, one line
// per entry: path, type, permission bits, owner, size (regular files), link
// count, link target, sha256 and extended attributes. The fidelity test puts
// it into an image and compares its output under two snapshotters. It stays
// on the root's filesystem and skips the mount points a runtime adds.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Usage: lister [ROOT [OUTPUT]] — OUTPUT (default stdout) is written and
// synced before lister exits, so a caller never reads a partial listing
// (a container runtime's stdout pipe may lose the tail of a large output).
func main() {
	root := "/"
	if len(os.Args) > 1 {
		root = os.Args[1]
	}
	out := os.Stdout
	if len(os.Args) > 2 {
		f, err := os.Create(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "lister:", err)
			os.Exit(1)
		}
		out = f
	}
	if err := list(out, root); err != nil {
		fmt.Fprintln(os.Stderr, "lister:", err)
		os.Exit(1)
	}
	if err := out.Sync(); err != nil && out != os.Stdout {
		fmt.Fprintln(os.Stderr, "lister:", err)
		os.Exit(1)
	}
	if err := out.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "lister:", err)
		os.Exit(1)
	}
}

var runtimeMounts = map[string]bool{"/proc": true, "/sys": true, "/dev": true, "/run": true, "/tmp": true, "/lister": true, "/out": true}

func list(w io.Writer, root string) error {
	var rootSt syscall.Stat_t
	if err := syscall.Lstat(root, &rootSt); err != nil {
		return err
	}
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			lines = append(lines, p+"|error "+err.Error())
			return nil
		}
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		if runtimeMounts[rel] {
			return filepath.SkipDir
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		// Another filesystem mounted inside (as -xdev): directories only,
		// since overlayfs reports a lower layer's device for its files.
		if st.Mode&syscall.S_IFMT == syscall.S_IFDIR && st.Dev != rootSt.Dev {
			return filepath.SkipDir
		}
		line := fmt.Sprintf("%s|%o|%o|%d:%d", rel, st.Mode&syscall.S_IFMT, st.Mode&0o7777, st.Uid, st.Gid)
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			sum, err := fileSHA(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf("|%d|%d|%s", st.Size, st.Nlink, sum)
		case syscall.S_IFLNK:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			line += "|->" + t
		case syscall.S_IFCHR, syscall.S_IFBLK:
			line += fmt.Sprintf("|%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		line += "|" + xattrs(p)
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
	return nil
}

func fileSHA(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// xattrs lists the entry's extended attributes as name=hex, sorted.
func xattrs(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	var out []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			out = append(out, name+"=?")
			continue
		}
		out = append(out, name+"="+hex.EncodeToString(v[:m]))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
