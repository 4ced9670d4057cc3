package fs

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dfly-p2p/dfly/fs/prefetch"
	"github.com/dfly-p2p/dfly/integration/origin"
)

// Cold latency of the first MiB of a 10 GB file behind a loopback origin:
// the task is opened and mounted (not timed), then the first 1 MiB is read.
func BenchmarkColdFirstMiB10GB(b *testing.B) {
	requireFUSE(b)
	e := newEnv(b)
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		c := origin.Content{Size: 10_000_000_000, Seed: uint64(i)}
		name := fmt.Sprintf("f%d", i)
		task := e.open(b, name, c, "")
		root, err := NewRoot([]Entry{{Name: name, Content: task}}, Options{Logger: e.log})
		if err != nil {
			b.Fatal(err)
		}
		dir := b.TempDir()
		srv, err := Mount(dir, root, MountOptions{Logger: e.log})
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		b.StartTimer()
		if _, err := io.ReadFull(f, buf); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		f.Close()
		srv.Unmount(5 * time.Second)
		srv.Wait()
		b.StartTimer()
	}
	b.ReportMetric(float64(task0BlockSize(10_000_000_000))/(1<<20), "MiB-block")
}

func task0BlockSize(n int64) int64 {
	bs := int64(1 << 20)
	for bs < 16<<20 && n > bs*2048 {
		bs <<= 1
	}
	return bs
}

// dropFileCache evicts a file's (or every file under a directory's) pages.
func dropFileCache(tb testing.TB, path string) {
	tb.Helper()
	filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if f, err := os.Open(p); err == nil {
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			f.Close()
		}
		return nil
	})
}

// Sequential throughput of a fully fetched 512 MiB file through the mount,
// and of the same bytes from a plain local file; "cold" drops the page cache
// of the file (and for the mount, of the block store) before every pass.
func BenchmarkSequentialRead(b *testing.B) {
	requireFUSE(b)
	const size = 512 << 20
	e := newEnv(b)
	c := origin.Content{Size: size, Seed: 3}
	task := e.open(b, "seq", c, c.Digest("sha256"))
	if err := prefetch.New(task, prefetch.Options{Logger: e.log}).Run(context.Background()); err != nil {
		b.Fatal(err)
	}
	dir := e.mount(b, []Entry{{Name: "seq", Content: task}}, Options{})
	local := filepath.Join(b.TempDir(), "seq")
	lf, err := os.Create(local)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(lf, io.NewSectionReader(c, 0, size)); err != nil {
		b.Fatal(err)
	}
	lf.Sync()
	lf.Close()
	read := func(b *testing.B, path string, drop func()) {
		buf := make([]byte, 1<<20)
		// An untimed pass first, so that "warm" variants start warm.
		if f, err := os.Open(path); err == nil {
			io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
			f.Close()
		}
		b.SetBytes(size)
		for b.Loop() {
			b.StopTimer()
			drop()
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf); err != nil || n != size {
				b.Fatalf("read %d: %v", n, err)
			}
			b.StopTimer()
			f.Close()
			b.StartTimer()
		}
	}
	mounted := filepath.Join(dir, "seq")
	b.Run("mount/store-warm", func(b *testing.B) { read(b, mounted, func() { dropFileCache(b, mounted) }) })
	b.Run("local/warm", func(b *testing.B) { read(b, local, func() {}) })
	b.Run("mount/cold", func(b *testing.B) {
		read(b, mounted, func() { dropFileCache(b, mounted); dropFileCache(b, e.store.Dir()) })
	})
	b.Run("local/cold", func(b *testing.B) { read(b, local, func() { dropFileCache(b, local) }) })
	b.Run("mount/page-cache", func(b *testing.B) { read(b, mounted, func() {}) })
}

// Latency of foreground 4 KiB random reads (O_DIRECT, so each one reaches
// the FUSE server) on a cold 1 GiB file, with the prefetcher idle and with
// it running unthrottled.
func BenchmarkRandom4KLatency(b *testing.B) {
	requireFUSE(b)
	for _, mode := range []string{"idle", "prefetching"} {
		b.Run(mode, func(b *testing.B) {
			e := newEnv(b)
			c := origin.Content{Size: 1 << 30, Seed: 4}
			task := e.open(b, "r", c, "")
			dir := e.mount(b, []Entry{{Name: "r", Content: task}}, Options{Readahead: -1})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			if mode == "prefetching" {
				go func() {
					defer close(done)
					prefetch.New(task, prefetch.Options{Logger: e.log}).Run(ctx)
				}()
				time.Sleep(200 * time.Millisecond)
			} else {
				close(done)
			}
			defer func() { cancel(); <-done }()
			fd, err := unix.Open(filepath.Join(dir, "r"), unix.O_RDONLY|unix.O_DIRECT, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(fd)
			buf := alignedBuf(4096)
			rng := rand.New(rand.NewPCG(7, 8))
			var lat []time.Duration
			for b.Loop() {
				off := rng.Int64N(c.Size/4096) * 4096
				start := time.Now()
				if _, err := unix.Pread(fd, buf, off); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

func alignedBuf(n int) []byte {
	raw := make([]byte, n+4096)
	off := 4096 - int(uintptr(unsafe.Pointer(&raw[0]))&4095)
	return raw[off : off+n]
}
