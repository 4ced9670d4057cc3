package peer

// Outputs written by the daemon (and by dfget itself): a temporary file
// beside the output, renamed over it only when the content is complete and
// verified.
//
// A temporary output is named ".NAME.dfly-tmp-PID-RANDOM" and locked
// (flock) by the process writing it for as long as it lives, so a process
// killed with -9 leaves a file that anybody can tell is stale: nobody holds
// its lock. The next download of the same output removes such files — never
// one whose lock is held, nor one that is still being created (its owner
// alive and the file young).

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/directio"
)

// tempMarker sits between an output's name and the owner's pid in the names
// of its temporary files.
const tempMarker = ".dfly-tmp-"

// staleTempAge: an unlocked temporary output whose owner's pid is alive
// (another pid namespace, or the pid was reused) is stale once this old; a
// younger one may be between its creation and its lock.
const staleTempAge = time.Minute

// CreateOutputTemp creates the temporary file of output path in its
// directory, locked by this process, after removing the stale temporary
// files of the same output (see RemoveStaleOutputTemps). Rename it over
// path when its content is complete; remove it otherwise.
func CreateOutputTemp(path string, log *slog.Logger) (*os.File, error) {
	RemoveStaleOutputTemps(path, log)
	dir, base := filepath.Dir(path), filepath.Base(path)
	f, err := os.CreateTemp(dir, fmt.Sprintf(".%s%s%d-*", base, tempMarker, os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("create a temporary output beside %s: %w", path, err)
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		os.Remove(f.Name())
		f.Close()
		return nil, fmt.Errorf("lock temporary output %s: %w", f.Name(), err)
	}
	return f, nil
}

func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if ferr = unix.Flock(int(fd), how); !errors.Is(ferr, unix.EINTR) {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}

// RemoveStaleOutputTemps removes the temporary files of output path left
// by processes that died (killed with -9) and returns how many it removed.
// A file is stale when nobody holds its lock and either the pid in its name
// is not a live process or it is older than a minute. Files this process
// cannot open are left alone (their owner, e.g. the daemon, removes them).
func RemoveStaleOutputTemps(path string, log *slog.Logger) int {
	if log == nil {
		log = slog.Default()
	}
	dir := filepath.Dir(path)
	prefix := "." + filepath.Base(path) + tempMarker
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	removed := 0
	for _, de := range entries {
		name := de.Name()
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok || !de.Type().IsRegular() {
			continue
		}
		pidText, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		p := filepath.Join(dir, name)
		if removeIfStale(p, pid) {
			log.Info("removed a stale temporary output of a killed download", "file", p, "pid", pid)
			removed++
		}
	}
	return removed
}

// removeIfStale removes temporary output p (owner pid) if it is stale.
func removeIfStale(p string, pid int) bool {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return false // its owner holds it: a live download
	}
	if pidAlive(pid) && time.Since(fi.ModTime()) < staleTempAge {
		return false // perhaps between its creation and its lock
	}
	return os.Remove(p) == nil
}

// pidAlive reports whether a process with this pid exists.
func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// outputFile is an output being written: a temporary file next to its
// final name, renamed into place by commit (or removed by abort), so a
// reader never sees a partial file. It is written around the page cache
// (the store already caches these bytes; see internal/directio).
type outputFile struct {
	f   *os.File
	w   *directio.File
	out string
}

func createOutput(out string, log *slog.Logger) (*outputFile, error) {
	f, err := CreateOutputTemp(out, log)
	if err != nil {
		return nil, err
	}
	return &outputFile{f: f, w: directio.New(f), out: out}, nil
}

func (o *outputFile) abort() {
	o.w.Close()
	os.Remove(o.f.Name())
	o.f.Close()
}

// commit makes the written content (task meta) the output file: its size
// checked against the task's length and its sha256 against a declared one,
// synced, handed to the caller (cred), renamed into place. It returns the
// content's sha256. Complete content is not hashed again: its sha256 was
// computed (or checked against the declared one) by the whole-content
// verification that completed it, the store hands out only blocks that
// match their per-block digests, and the engine checked that every block
// was written, so the copy is that content. Anything else is read back and
// hashed.
func (o *outputFile) commit(meta blockstore.Task, cred *syscall.Ucred) (_ string, err error) {
	defer func() {
		if err != nil {
			o.abort()
		}
	}()
	tmp := o.f
	if err := o.w.Flush(); err != nil {
		return "", err
	}
	fi, err := tmp.Stat()
	if err != nil {
		return "", fmt.Errorf("check %s: %w", tmp.Name(), err)
	}
	if fi.Size() != meta.Length {
		return "", fmt.Errorf("output %s: %d bytes written, the content has %d; not saved, run again: %w",
			o.out, fi.Size(), meta.Length, blockstore.ErrIncomplete)
	}
	algo, want, derr := blockstore.ParseDigest(meta.Digest)
	sum := want
	if derr != nil || algo != "sha256" || !(meta.Verified || meta.State == blockstore.StateComplete) {
		h := sha256.New()
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return "", fmt.Errorf("read back %s: %w", tmp.Name(), err)
		}
		if _, err := io.Copy(h, tmp); err != nil {
			return "", fmt.Errorf("read back %s: %w", tmp.Name(), err)
		}
		sum = hex.EncodeToString(h.Sum(nil))
		if derr == nil && algo == "sha256" && want != sum {
			return "", fmt.Errorf("content written to %s has sha256 %s, want %s: %w", o.out, sum, want, blockstore.ErrDigestMismatch)
		}
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if cred != nil && os.Geteuid() == 0 && cred.Uid != 0 {
		if err := os.Chown(tmp.Name(), int(cred.Uid), int(cred.Gid)); err != nil {
			return "", fmt.Errorf("hand %s to uid %d: %w", o.out, cred.Uid, err)
		}
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), o.out); err != nil {
		return "", fmt.Errorf("rename to %s: %w", o.out, err)
	}
	if err := tmp.Close(); err != nil { // (releases the lock, now on the output)
		return "", fmt.Errorf("close %s: %w", o.out, err)
	}
	return sum, nil
}
