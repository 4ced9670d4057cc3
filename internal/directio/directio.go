// Package directio writes a large output file sequentially around the page
// cache (O_DIRECT).
//
// dfly's outputs are copies of content that the block store already keeps
// (and whose pages the upload server is sending from): caching the output as
// well would hold every downloaded byte in memory twice and push the bytes
// being served out of the cache. On virtual machines whose free memory is
// handed back to the host (virtio-balloon free page reporting), every page
// the cache takes is also a fresh page the host must fault in, several
// times the cost of the copy itself.
//
// Writes are gathered into an aligned buffer (or, when the caller's slice
// is aligned, written straight from it) and sent with O_DIRECT in aligned
// pieces; Flush writes the unaligned tail through the page cache. Where the
// filesystem refuses O_DIRECT (tmpfs on older kernels, some network and
// FUSE filesystems) the File quietly writes through the page cache.
package directio

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Align is the offset, length and memory alignment of direct I/O: the
// largest logical block size of common devices.
const Align = 4096

// align is Align inside the package.
const align = Align

// AlignedAddr reports whether p's first byte is Align-aligned in memory.
func AlignedAddr(p []byte) bool {
	return len(p) > 0 && uintptr(unsafe.Pointer(&p[0]))%align == 0
}

// CanDirect reports whether p can be written (or read into) at off with
// O_DIRECT as it is: aligned in memory, in offset and in length.
func CanDirect(p []byte, off int64) bool {
	return AlignedAddr(p) && off%align == 0 && len(p)%align == 0
}

// Buffer returns n bytes whose first byte is Align-aligned and whose
// capacity is n rounded up to Align (room for a whole-page direct read).
func Buffer(n int64) []byte {
	c := (n + align - 1) &^ (align - 1)
	raw := make([]byte, c+align)
	skip := (align - int64(uintptr(unsafe.Pointer(&raw[0]))%align)) % align
	return raw[skip : skip+n : skip+c]
}

// bufSize is the size of the gathering buffer.
const bufSize = 1 << 20

// File writes f, a new empty file: either sequentially from offset 0
// (Write, Flush) or block by block at any offsets (WriteAt, then Flush);
// the two ways are not to be mixed.
type File struct {
	mu     sync.Mutex // guards direct and aux for WriteAt
	f      *os.File
	aux    *os.File // f opened again without O_DIRECT, for unaligned WriteAt
	direct bool
	buf    []byte // aligned, bufSize long (nil until the first gathered write)
	n      int    // bytes gathered in buf
	off    int64  // file offset of buf[0]: bytes written before it
}

// New returns a File writing f, with O_DIRECT when the filesystem allows it.
func New(f *os.File) *File {
	d := &File{f: f}
	d.direct = setDirect(f, true) == nil
	return d
}

// Direct reports whether writes currently bypass the page cache.
func (d *File) Direct() bool { return d.direct }

// Name returns the file's name.
func (d *File) Name() string { return d.f.Name() }

func setDirect(f *os.File, on bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		if err != nil {
			serr = err
			return
		}
		if on {
			fl |= unix.O_DIRECT
		} else {
			fl &^= unix.O_DIRECT
		}
		_, serr = unix.FcntlInt(fd, unix.F_SETFL, fl)
	})
	if err != nil {
		return err
	}
	return serr
}

// Write gathers p and writes every full aligned piece.
func (d *File) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if !d.direct {
			if err := d.drain(); err != nil {
				return total - len(p), err
			}
			m, err := d.f.WriteAt(p, d.off)
			d.off += int64(m)
			if err != nil {
				return total - len(p) + m, fmt.Errorf("write %s: %w", d.f.Name(), err)
			}
			return total, nil
		}
		if d.n == 0 && len(p) >= align && AlignedAddr(p) {
			k := len(p) &^ (align - 1)
			if err := d.writeOut(p[:k]); err != nil {
				return total - len(p), err
			}
			p = p[k:]
			continue
		}
		if d.buf == nil {
			d.buf = Buffer(bufSize)
		}
		c := copy(d.buf[d.n:], p)
		d.n += c
		p = p[c:]
		if d.n == len(d.buf) {
			if err := d.writeOut(d.buf); err != nil {
				d.n -= c
				return total - len(p) - c, err
			}
			d.n = 0
		}
	}
	return total, nil
}

// writeOut writes b (aligned, a multiple of align) at d.off, directly when
// possible; a filesystem that refuses the direct write gets it through the
// page cache, and so does everything after it.
func (d *File) writeOut(b []byte) error {
	if d.direct {
		m, err := d.f.WriteAt(b, d.off)
		if err == nil {
			d.off += int64(m)
			return nil
		}
		if !errors.Is(err, unix.EINVAL) || m > 0 {
			d.off += int64(m)
			return fmt.Errorf("write %s: %w", d.f.Name(), err)
		}
		d.stopDirect()
	}
	m, err := d.f.WriteAt(b, d.off)
	d.off += int64(m)
	if err != nil {
		return fmt.Errorf("write %s: %w", d.f.Name(), err)
	}
	return nil
}

func (d *File) stopDirect() {
	if d.direct {
		_ = setDirect(d.f, false)
		d.direct = false
	}
}

// drain writes what is gathered (through the page cache if it is not a
// whole aligned piece).
func (d *File) drain() error {
	if d.n == 0 {
		return nil
	}
	whole := d.n &^ (align - 1)
	if whole > 0 {
		if err := d.writeOut(d.buf[:whole]); err != nil {
			return err
		}
	}
	if rest := d.n - whole; rest > 0 {
		d.stopDirect()
		m, err := d.f.WriteAt(d.buf[whole:d.n], d.off)
		d.off += int64(m)
		if err != nil {
			return fmt.Errorf("write %s: %w", d.f.Name(), err)
		}
	}
	d.n = 0
	return nil
}

// WriteAt writes p at off: around the page cache when p's address, off
// and len(p) are aligned (whole blocks of a task are), through it otherwise
// (the last block of a file, small pieces). It is safe for concurrent use.
func (d *File) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	direct := d.direct
	d.mu.Unlock()
	if direct && CanDirect(p, off) {
		m, err := d.f.WriteAt(p, off)
		if err == nil || m > 0 || !errors.Is(err, unix.EINVAL) {
			if err != nil {
				err = fmt.Errorf("write %s: %w", d.f.Name(), err)
			}
			return m, err
		}
		d.mu.Lock()
		d.stopDirect()
		d.mu.Unlock()
	}
	d.mu.Lock()
	if d.aux == nil {
		aux, err := os.OpenFile(d.f.Name(), os.O_WRONLY, 0)
		if err != nil {
			d.mu.Unlock()
			return 0, fmt.Errorf("write %s: %w", d.f.Name(), err)
		}
		d.aux = aux
	}
	aux := d.aux
	d.mu.Unlock()
	m, err := aux.WriteAt(p, off)
	if err != nil {
		err = fmt.Errorf("write %s: %w", d.f.Name(), err)
	}
	return m, err
}

// Flush writes everything gathered. Afterwards the file is an ordinary one
// (O_DIRECT cleared) positioned at the end of what Write wrote, so it can be
// read back, synced and closed as usual.
func (d *File) Flush() error {
	if err := d.drain(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.aux != nil {
		if err := d.aux.Close(); err != nil {
			return fmt.Errorf("write %s: %w", d.f.Name(), err)
		}
		d.aux = nil
	}
	d.stopDirect()
	if _, err := d.f.Seek(d.off, io.SeekStart); err != nil {
		return fmt.Errorf("seek %s: %w", d.f.Name(), err)
	}
	return nil
}

// Seek flushes, then moves the write position (for rewriting the file from
// the start after Truncate).
func (d *File) Seek(off int64, whence int) (int64, error) {
	if err := d.Flush(); err != nil {
		return 0, err
	}
	pos, err := d.f.Seek(off, whence)
	if err != nil {
		return 0, err
	}
	d.off = pos
	if pos == 0 {
		d.mu.Lock()
		d.direct = setDirect(d.f, true) == nil
		d.mu.Unlock()
	}
	return pos, nil
}

// Close releases what the File opened besides f (f stays open: its owner
// syncs and closes it).
func (d *File) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.aux == nil {
		return nil
	}
	err := d.aux.Close()
	d.aux = nil
	return err
}

// Truncate drops what is gathered and truncates the file to n bytes.
func (d *File) Truncate(n int64) error {
	d.n = 0
	if err := d.f.Truncate(n); err != nil {
		return err
	}
	d.off = min(d.off, n)
	return nil
}
