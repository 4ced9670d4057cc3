package fs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Errors of mount-point checks, for callers that map them to exit codes.
var (
	// ErrMountpoint: the directory is missing, not a directory, not empty or already mounted.
	ErrMountpoint = errors.New("unusable mount point")
	// ErrNoFUSE: /dev/fuse is missing or not accessible, or mount(2) was refused.
	ErrNoFUSE = errors.New("FUSE unavailable")
)

// FsType is the filesystem subtype dfly mounts carry ("fuse.dfly" in the mount table).
const FsType = "dfly"

// MountOptions tune Mount.
type MountOptions struct {
	// AllowOther lets users other than the mounter read the files.
	AllowOther bool
	// FsName is the "device" shown in the mount table (default "dfly").
	FsName string
	// ReadAheadKB is written to the mount's /sys/class/bdi/MAJ:MIN/read_ahead_kb
	// after mounting (the kernel's 128 KiB default halves sequential
	// throughput). Default 4096; negative leaves the kernel default.
	ReadAheadKB int
	// Debug logs every FUSE request.
	Debug  bool
	Logger *slog.Logger
}

// Server is a mounted tree.
type Server struct {
	srv  *fuse.Server
	root *Root
	dir  string
	log  *slog.Logger
}

// Mount mounts root at dir: directly with mount(2) when root, otherwise
// through fusermount3. dir must be an empty directory (see PrepareMountpoint).
func Mount(dir string, root *Root, opt MountOptions) (*Server, error) {
	if opt.FsName == "" {
		opt.FsName = "dfly"
	}
	if opt.ReadAheadKB == 0 {
		opt.ReadAheadKB = 4096
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mount point %s: %w", dir, err)
	}
	if err := CheckFUSE(); err != nil {
		return nil, err
	}
	to := root.opt.AttrTimeout
	mo := fuse.MountOptions{
		AllowOther:    opt.AllowOther,
		MaxWrite:      1 << 20, // also the largest read (max_pages)
		MaxReadAhead:  1 << 20,
		FsName:        opt.FsName,
		Name:          FsType,
		DisableXAttrs: true,
		DirectMount:   os.Geteuid() == 0,
		MaxBackground: 64,
		Debug:         opt.Debug,
		DisableSplice: true, // data comes from memory, not from a file descriptor
		Logger:        slog.NewLogLogger(opt.Logger.Handler(), slog.LevelDebug),
		Options:       []string{"ro", "default_permissions"},
	}
	srv, err := gofs.Mount(abs, root, &gofs.Options{
		MountOptions: mo,
		AttrTimeout:  &to,
		EntryTimeout: &to,
	})
	if err != nil {
		return nil, fmt.Errorf("mount FUSE at %s: %w (%w)", abs, err, ErrNoFUSE)
	}
	s := &Server{srv: srv, root: root, dir: abs, log: opt.Logger}
	if opt.ReadAheadKB > 0 {
		if err := setReadAhead(abs, opt.ReadAheadKB); err != nil {
			s.log.Warn("could not raise the mount's readahead; sequential reads will be slower", "dir", abs, "err", err)
		}
	}
	return s, nil
}

// Dir is the mount point.
func (s *Server) Dir() string { return s.dir }

// Wait blocks until the filesystem is unmounted (by Unmount, umount or
// fusermount3 -u), then stops the tree's goroutines.
func (s *Server) Wait() {
	s.srv.Wait()
	s.root.Close()
}

// Unmount unmounts the filesystem, retrying while it is busy for up to
// timeout; past it the mount is detached lazily (it disappears once the last
// user closes it).
func (s *Server) Unmount(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := s.srv.Unmount()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.log.Warn("mount still busy; detaching it lazily: open files stay readable until they are closed", "dir", s.dir, "err", err)
			if lerr := lazyUnmount(s.dir); lerr != nil {
				return fmt.Errorf("unmount %s: %w (lazy unmount: %w)", s.dir, err, lerr)
			}
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// CheckFUSE reports whether /dev/fuse can be opened.
func CheckFUSE() error {
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("/dev/fuse does not exist: load the fuse module (modprobe fuse) or, in a container, pass --device /dev/fuse: %w", ErrNoFUSE)
		}
		return fmt.Errorf("open /dev/fuse: %w; run as root or make /dev/fuse accessible (and install fuse3 for fusermount3): %w", err, ErrNoFUSE)
	}
	f.Close()
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			if _, err2 := exec.LookPath("fusermount"); err2 != nil {
				return fmt.Errorf("not root and no fusermount3 in PATH: install fuse3 or run as root: %w", ErrNoFUSE)
			}
		}
	}
	return nil
}

// MountEntry is one line of /proc/self/mountinfo.
type MountEntry struct {
	Dev        string // "MAJ:MIN"
	MountPoint string
	FsType     string // e.g. "fuse.dfly"
	Source     string
}

// Mounts parses /proc/self/mountinfo.
func Mounts() ([]MountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

func parseMountinfo(r io.Reader) ([]MountEntry, error) {
	var out []MountEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// Fields are separated by spaces; other white space (a \v, a
		// U+00A0) may be part of a path, which the kernel escapes only
		// space, tab, newline and backslash of.
		fields := strings.FieldsFunc(sc.Text(), func(r rune) bool { return r == ' ' })
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, MountEntry{Dev: fields[2], MountPoint: unescapeMount(fields[4]), FsType: fields[sep+1], Source: unescapeMount(fields[sep+2])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return out, nil
}

// unescapeMount decodes the octal escapes (\040 etc.) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountAt returns the last (topmost) mount at dir.
func mountAt(dir string) (MountEntry, bool, error) {
	ms, err := Mounts()
	if err != nil {
		return MountEntry{}, false, err
	}
	var found MountEntry
	ok := false
	for _, m := range ms {
		if m.MountPoint == dir {
			found, ok = m, true
		}
	}
	return found, ok, nil
}

func setReadAhead(dir string, kb int) error {
	m, ok, err := mountAt(dir)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s is not in the mount table", dir)
	}
	p := "/sys/class/bdi/" + m.Dev + "/read_ahead_kb"
	if err := os.WriteFile(p, []byte(strconv.Itoa(kb)), 0o644); err != nil {
		return fmt.Errorf("set %s: %w", p, err)
	}
	return nil
}

// PrepareMountpoint checks that dir can be mounted on: it exists, is an empty
// directory and carries no live mount. A stale dfly mount (its server was
// killed: "transport endpoint is not connected") is detached first; it
// reports whether it did so.
func PrepareMountpoint(dir string) (cleaned bool, err error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false, fmt.Errorf("mount point %s: %w: %w", dir, err, ErrMountpoint)
	}
	if Stale(abs) {
		if err := lazyUnmount(abs); err != nil {
			return false, fmt.Errorf("mount point %s holds a stale FUSE mount (its server died) and detaching it failed: %w; run fusermount3 -uz %s: %w", abs, err, abs, ErrMountpoint)
		}
		cleaned = true
	}
	if _, statErr := os.Stat(abs); statErr != nil {
		if errors.Is(statErr, os.ErrNotExist) {
			return cleaned, fmt.Errorf("mount point %s does not exist; create it with mkdir -p %s: %w", abs, abs, ErrMountpoint)
		}
		return cleaned, fmt.Errorf("mount point %s: %w: %w", abs, statErr, ErrMountpoint)
	}
	if m, ok, err := mountAt(abs); err == nil && ok && strings.HasPrefix(m.FsType, "fuse") {
		return cleaned, fmt.Errorf("%s is already mounted (%s from %s); unmount it first with dfmount -u %s: %w", abs, m.FsType, m.Source, abs, ErrMountpoint)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return cleaned, fmt.Errorf("mount point %s: %w: %w", abs, err, ErrMountpoint)
	}
	if !fi.IsDir() {
		return cleaned, fmt.Errorf("mount point %s is not a directory: %w", abs, ErrMountpoint)
	}
	d, err := os.Open(abs)
	if err != nil {
		return cleaned, fmt.Errorf("mount point %s: %w: %w", abs, err, ErrMountpoint)
	}
	names, _ := d.Readdirnames(1)
	d.Close()
	if len(names) > 0 {
		return cleaned, fmt.Errorf("mount point %s is not empty (it holds %s); use an empty directory: %w", abs, names[0], ErrMountpoint)
	}
	return cleaned, nil
}

// Unmount unmounts the dfly (or any FUSE) mount at dir; a stale mount is
// detached lazily. It fails if dir carries no FUSE mount.
func Unmount(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	m, ok, err := mountAt(abs)
	if err != nil {
		return err
	}
	if !ok || !strings.HasPrefix(m.FsType, "fuse") {
		return fmt.Errorf("%s is not a FUSE mount: %w", abs, ErrMountpoint)
	}
	if Stale(abs) {
		return lazyUnmount(abs)
	}
	if os.Geteuid() == 0 {
		if err := syscall.Unmount(abs, 0); err != nil {
			return fmt.Errorf("unmount %s: %w (is a process still using it? see fuser -m %s)", abs, err, abs)
		}
		return nil
	}
	if out, err := exec.Command(fusermount(), "-u", abs).CombinedOutput(); err != nil {
		return fmt.Errorf("fusermount3 -u %s: %w: %s", abs, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Stale reports whether dir is a FUSE mount whose server is gone
// ("transport endpoint is not connected"). It asks with statfs, which the
// kernel never answers from its attribute cache. Never call it from the
// server of the mount at dir.
func Stale(dir string) bool {
	var st syscall.Statfs_t
	err := syscall.Statfs(dir, &st)
	return errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED)
}

func lazyUnmount(abs string) error {
	if os.Geteuid() == 0 {
		if err := syscall.Unmount(abs, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("lazy unmount %s: %w", abs, err)
		}
		return nil
	}
	if out, err := exec.Command(fusermount(), "-uz", abs).CombinedOutput(); err != nil {
		return fmt.Errorf("fusermount3 -uz %s: %w: %s", abs, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func fusermount() string {
	if p, err := exec.LookPath("fusermount3"); err == nil {
		return p
	}
	return "fusermount"
}
