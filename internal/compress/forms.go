package compress

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Forms is a host's side store of compressed forms, one file per block
// beside its block store:
//
//	DIR/<task>/<idx>.zst    a compressed form: header, then one zstd frame
//	DIR/<task>/<idx>.none   "tried, not worth it": the header only
//
// The header (formHeaderSize bytes, little-endian) is the magic "DFZ1",
// the kind (1 form, 2 not worth it), three zero bytes, the plain block's
// length (uint64) and its SHA-256. A form or marker counts only while its
// task's block still has that digest (Lookup and Open take the store's
// current digest): a task deleted and fetched anew, or another version of
// the content, never meets a stale form — it is removed when met, and
// Prune removes the tasks the store no longer has. Files are written to a
// temporary name and renamed, so a reader sees a whole file or none; a
// form is decoded and hashed against its header once per process before it
// is first served (and again when its file changed), so a torn or rotten
// file is dropped, never sent. The index is in memory, rebuilt from the
// headers at OpenForms. Safe for concurrent use.
type Forms struct {
	dir   string
	codec *Codec
	max   int64
	log   *slog.Logger

	mu    sync.Mutex
	tasks map[string]map[int]*entry
	bytes int64 // body bytes of all forms
	forms int
	nones int
}

// entry is the index's record of one block's file.
type entry struct {
	digest   [sha256.Size]byte
	plainLen int64
	form     bool  // a form (else: not worth it)
	size     int64 // body bytes of a form
	verified bool  // this process decoded and hashed the form
	stamp    stamp // of the file as verified
}

// stamp identifies a file's content as far as fstat can.
type stamp struct {
	ino, size  int64
	mtimeNanos int64
}

func stampOf(fi os.FileInfo) stamp {
	st := stamp{size: fi.Size(), mtimeNanos: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = int64(sys.Ino)
	}
	return st
}

// FormsOptions configure OpenForms.
type FormsOptions struct {
	// Codec verifies forms before they are first served. Required.
	Codec *Codec
	// MaxBytes caps the bytes of all forms (0: no cap); beyond it new forms
	// are not kept (markers still are).
	MaxBytes int64
	Logger   *slog.Logger
}

// The header of a form file.
const (
	formHeaderSize = 48
	formMagic      = "DFZ1"
	kindForm       = 1
	kindNone       = 2
	extForm        = ".zst"
	extNone        = ".none"
)

// State is what the side store knows about a block.
type State int

// States of a block in the side store.
const (
	Unknown    State = iota // never tried (or the form is stale)
	Compressed              // a form is kept
	NotWorth                // tried: it does not compress enough
)

// OpenForms opens (creating it if needed) the side store in dir and
// rebuilds its index from the files' headers. Files it cannot make sense of
// (torn, foreign, temporary files of a process that died) are removed.
func OpenForms(dir string, o FormsOptions) (*Forms, error) {
	if o.Codec == nil {
		return nil, errors.New("compressed forms: no codec")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create the directory of compressed forms %s: %w", dir, err)
	}
	f := &Forms{dir: dir, codec: o.Codec, max: o.MaxBytes, log: o.Logger, tasks: map[string]map[int]*entry{}}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list compressed forms %s: %w", dir, err)
	}
	removed := 0
	for _, te := range ents {
		task := te.Name()
		tdir := filepath.Join(dir, task)
		if !te.IsDir() || !validTask(task) {
			removed++
			_ = os.RemoveAll(tdir)
			continue
		}
		files, err := os.ReadDir(tdir)
		if err != nil {
			return nil, fmt.Errorf("list compressed forms %s: %w", tdir, err)
		}
		for _, fe := range files {
			path := filepath.Join(tdir, fe.Name())
			idx, form, ok := parseName(fe.Name())
			var e *entry
			if ok {
				e, ok = readEntry(path, form)
			}
			if !ok {
				removed++
				_ = os.Remove(path)
				continue
			}
			f.add(task, idx, e)
		}
		if len(f.tasks[task]) == 0 {
			_ = os.Remove(tdir)
		}
	}
	if removed > 0 {
		f.log.Info("removed unreadable files from the compressed forms", "dir", dir, "files", removed)
	}
	return f, nil
}

// validTask reports whether a task id can name a directory here: the
// store's ids ("u…", "sha256-…", "e…") are letters, digits, '-' and '_';
// anything else (a '.', a '/') never gets a form.
func validTask(id string) bool {
	if id == "" || len(id) > 200 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// parseName parses "<idx>.zst" or "<idx>.none".
func parseName(name string) (idx int, form, ok bool) {
	num, ext := name, ""
	if i := strings.IndexByte(name, '.'); i > 0 {
		num, ext = name[:i], name[i:]
	}
	switch ext {
	case extForm:
		form = true
	case extNone:
	default:
		return 0, false, false
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || strconv.Itoa(n) != num {
		return 0, false, false
	}
	return n, form, true
}

// readEntry reads a file's header into an entry (not verified).
func readEntry(path string, form bool) (*entry, bool) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, false
	}
	defer fh.Close()
	var hdr [formHeaderSize]byte
	if _, err := io.ReadFull(fh, hdr[:]); err != nil {
		return nil, false
	}
	fi, err := fh.Stat()
	if err != nil {
		return nil, false
	}
	e, ok := parseHeader(hdr[:])
	if !ok || e.form != form {
		return nil, false
	}
	e.size = fi.Size() - formHeaderSize
	if (form && (e.size <= 0 || e.size >= e.plainLen)) || (!form && e.size != 0) {
		return nil, false
	}
	return e, true
}

// parseHeader decodes a file header.
func parseHeader(b []byte) (*entry, bool) {
	if len(b) < formHeaderSize || string(b[:4]) != formMagic || b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return nil, false
	}
	e := &entry{plainLen: int64(binary.LittleEndian.Uint64(b[8:16]))}
	switch b[4] {
	case kindForm:
		e.form = true
	case kindNone:
	default:
		return nil, false
	}
	if e.plainLen <= 0 || e.plainLen > MaxBlock {
		return nil, false
	}
	copy(e.digest[:], b[16:48])
	return e, true
}

// header encodes a file header.
func header(form bool, plainLen int64, digest []byte) []byte {
	b := make([]byte, formHeaderSize)
	copy(b, formMagic)
	b[4] = kindNone
	if form {
		b[4] = kindForm
	}
	binary.LittleEndian.PutUint64(b[8:16], uint64(plainLen))
	copy(b[16:], digest)
	return b
}

// add records e (the caller holds mu or is OpenForms).
func (f *Forms) add(task string, idx int, e *entry) {
	m := f.tasks[task]
	if m == nil {
		m = map[int]*entry{}
		f.tasks[task] = m
	}
	if old := m[idx]; old != nil {
		f.uncount(old)
	}
	m[idx] = e
	if e.form {
		f.forms++
		f.bytes += e.size
	} else {
		f.nones++
	}
}

func (f *Forms) uncount(e *entry) {
	if e.form {
		f.forms--
		f.bytes -= e.size
	} else {
		f.nones--
	}
}

func (f *Forms) path(task string, idx int, form bool) string {
	ext := extNone
	if form {
		ext = extForm
	}
	return filepath.Join(f.dir, task, strconv.Itoa(idx)+ext)
}

// dropLocked forgets a block's entry and removes its files.
func (f *Forms) dropLocked(task string, idx int) {
	m := f.tasks[task]
	if e := m[idx]; e != nil {
		f.uncount(e)
		delete(m, idx)
		if len(m) == 0 {
			delete(f.tasks, task)
		}
	}
	_ = os.Remove(f.path(task, idx, true))
	_ = os.Remove(f.path(task, idx, false))
}

// current returns the block's entry when it is for digest; a stale one is
// dropped (the caller holds mu).
func (f *Forms) currentLocked(task string, idx int, digest []byte) *entry {
	e := f.tasks[task][idx]
	if e == nil {
		return nil
	}
	if len(digest) != sha256.Size || !bytes.Equal(e.digest[:], digest) {
		f.dropLocked(task, idx)
		return nil
	}
	return e
}

// Lookup reports what the side store knows about block idx of task, whose
// plain SHA-256 is digest now.
func (f *Forms) Lookup(task string, idx int, digest []byte) State {
	if f == nil {
		return Unknown
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch e := f.currentLocked(task, idx, digest); {
	case e == nil:
		return Unknown
	case e.form:
		return Compressed
	default:
		return NotWorth
	}
}

// Put keeps form, the compressed form of block idx of task (plainLen bytes
// whose SHA-256 is digest, verified by the caller: the seed made it from a
// block its store verified, a peer decoded it into a block PutBlock
// verified). It keeps nothing (and says so) when the cap is reached or the
// form saves nothing.
func (f *Forms) Put(task string, idx int, digest []byte, plainLen int64, form []byte) error {
	if f == nil {
		return nil
	}
	if int64(len(form)) >= plainLen || len(form) == 0 {
		return fmt.Errorf("compressed form of block %d of task %s: %d bytes for a block of %d: not kept", idx, task, len(form), plainLen)
	}
	f.mu.Lock()
	full := f.max > 0 && f.bytes+int64(len(form)) > f.max
	f.mu.Unlock()
	if full {
		return fmt.Errorf("compressed form of block %d of task %s: the side store is full (%d bytes, --quota sets the cap): not kept", idx, task, f.max)
	}
	return f.write(task, idx, digest, plainLen, form, true)
}

// PutNotWorth records that block idx of task (digest) was tried and does
// not compress enough: it is not tried again.
func (f *Forms) PutNotWorth(task string, idx int, digest []byte, plainLen int64) error {
	if f == nil {
		return nil
	}
	return f.write(task, idx, digest, plainLen, nil, false)
}

// write writes a block's file atomically and indexes it.
func (f *Forms) write(task string, idx int, digest []byte, plainLen int64, body []byte, form bool) error {
	if !validTask(task) || idx < 0 || len(digest) != sha256.Size || plainLen <= 0 || plainLen > MaxBlock {
		return fmt.Errorf("compressed form of block %d of task %q: invalid block", idx, task)
	}
	tdir := filepath.Join(f.dir, task)
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		return fmt.Errorf("compressed forms: create %s: %w", tdir, err)
	}
	tmp, err := os.CreateTemp(tdir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("compressed forms: %w", err)
	}
	_, werr := tmp.Write(header(form, plainLen, digest))
	if werr == nil && form {
		_, werr = tmp.Write(body)
	}
	var fi os.FileInfo
	if werr == nil {
		fi, werr = tmp.Stat()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("compressed forms: write block %d of task %s: %w", idx, task, werr)
	}
	e := &entry{plainLen: plainLen, form: form, size: int64(len(body)), verified: form, stamp: stampOf(fi)}
	copy(e.digest[:], digest)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := os.Rename(tmp.Name(), f.path(task, idx, form)); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("compressed forms: install block %d of task %s: %w", idx, task, err)
	}
	_ = os.Remove(f.path(task, idx, !form)) // the other kind, of an older digest
	f.add(task, idx, e)
	return nil
}

// Open returns the form of block idx of task (digest) as the file
// positioned at the form's first byte (an *os.File, so an upload can send
// it with sendfile) and the form's length; false when there is none. A form
// this process has not decoded and hashed yet (or whose file changed since)
// is verified first; one that fails is removed.
func (f *Forms) Open(task string, idx int, digest []byte) (*os.File, int64, bool) {
	if f == nil {
		return nil, 0, false
	}
	f.mu.Lock()
	e := f.currentLocked(task, idx, digest)
	if e == nil || !e.form {
		f.mu.Unlock()
		return nil, 0, false
	}
	want := *e
	f.mu.Unlock()
	fh, err := os.Open(f.path(task, idx, true))
	if err != nil {
		f.forget(task, idx, &want, "unreadable", err)
		return nil, 0, false
	}
	fi, err := fh.Stat()
	if err != nil {
		fh.Close()
		f.forget(task, idx, &want, "unreadable", err)
		return nil, 0, false
	}
	if !want.verified || stampOf(fi) != want.stamp {
		if err := f.verify(fh, &want); err != nil {
			fh.Close()
			f.forget(task, idx, &want, "corrupt", err)
			return nil, 0, false
		}
		f.mu.Lock()
		if cur := f.tasks[task][idx]; cur != nil && cur.digest == want.digest && cur.form {
			cur.verified, cur.stamp = true, stampOf(fi)
		}
		f.mu.Unlock()
	}
	if _, err := fh.Seek(formHeaderSize, io.SeekStart); err != nil {
		fh.Close()
		return nil, 0, false
	}
	return fh, fi.Size() - formHeaderSize, true
}

// verify decodes the form in fh and checks it against its entry.
func (f *Forms) verify(fh *os.File, e *entry) error {
	raw, err := io.ReadAll(io.LimitReader(fh, formHeaderSize+MaxBlock+1))
	if err != nil {
		return err
	}
	h, ok := parseHeader(raw)
	if !ok || h.digest != e.digest || h.plainLen != e.plainLen || !h.form {
		return errors.New("its header changed")
	}
	plain, err := f.codec.Decompress(nil, raw[formHeaderSize:], int(e.plainLen))
	if err != nil {
		return err
	}
	if sha256.Sum256(plain) != e.digest {
		return errors.New("it decodes to other bytes than its block")
	}
	return nil
}

// forget drops a form found bad, unless it was replaced meanwhile.
func (f *Forms) forget(task string, idx int, was *entry, why string, err error) {
	f.log.Warn("dropping a compressed form", "task", task, "block", idx, "why", why, "err", err)
	f.mu.Lock()
	defer f.mu.Unlock()
	if cur := f.tasks[task][idx]; cur != nil && cur.digest == was.digest && cur.form {
		f.dropLocked(task, idx)
	}
}

// RemoveTask removes every form and marker of task.
func (f *Forms) RemoveTask(task string) {
	if f == nil || !validTask(task) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.tasks[task] {
		f.uncount(e)
	}
	delete(f.tasks, task)
	_ = os.RemoveAll(filepath.Join(f.dir, task))
}

// Prune removes the forms and markers of every task keep refuses (the
// tasks the block store no longer holds) and returns how many tasks went.
func (f *Forms) Prune(keep func(task string) bool) int {
	if f == nil {
		return 0
	}
	f.mu.Lock()
	var gone []string
	for task := range f.tasks {
		gone = append(gone, task)
	}
	f.mu.Unlock()
	n := 0
	for _, task := range gone {
		if !keep(task) {
			f.RemoveTask(task)
			n++
		}
	}
	return n
}

// FormsStats count a side store's content.
type FormsStats struct {
	Forms    int   `json:"forms"`      // blocks with a compressed form
	NotWorth int   `json:"not_worth"`  // blocks tried and found not worth it
	Bytes    int64 `json:"form_bytes"` // bytes of all forms
}

// Stats returns the side store's counts.
func (f *Forms) Stats() FormsStats {
	if f == nil {
		return FormsStats{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return FormsStats{Forms: f.forms, NotWorth: f.nones, Bytes: f.bytes}
}
