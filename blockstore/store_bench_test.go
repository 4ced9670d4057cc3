package blockstore

import (
	"os"
	"path/filepath"
	"testing"
)

// The benchmarks compare writing and reading 4 MiB blocks through the store
// with writing and reading the same bytes to a plain file on the same disk.
// `make bench-store` runs them; docs/benchmarks.md records the ratios.

const benchBlock = 4 << 20

func BenchmarkStorePut4MiB(b *testing.B) {
	s, _ := Open(b.TempDir(), Options{GCInterval: -1})
	defer s.Close()
	data := randBytes(benchBlock, 1)
	if _, err := s.CreateTask(ctx, Task{ID: "b", Length: int64(b.N) * benchBlock, BlockSize: benchBlock}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(benchBlock)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		data[0], data[1], data[2] = byte(i), byte(i>>8), byte(i>>16)
		if err := s.PutBlock(ctx, "b", i, data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFileWrite4MiB(b *testing.B) {
	f, _ := os.Create(filepath.Join(b.TempDir(), "f"))
	defer f.Close()
	data := randBytes(benchBlock, 1)
	b.SetBytes(benchBlock)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		data[0] = byte(i)
		if _, err := f.Write(data); err != nil {
			b.Fatal(err)
		}
	}
}

const readBlocks = 64

func BenchmarkStoreRead4MiB(b *testing.B) {
	s, _ := Open(b.TempDir(), Options{GCInterval: -1})
	defer s.Close()
	data := randBytes(benchBlock, 1)
	if _, err := s.CreateTask(ctx, Task{ID: "b", Length: readBlocks * benchBlock, BlockSize: benchBlock}); err != nil {
		b.Fatal(err)
	}
	for i := range readBlocks {
		data[0] = byte(i)
		if err := s.PutBlock(ctx, "b", i, data); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(benchBlock)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.ReadBlock("b", i%readBlocks); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFileRead4MiB(b *testing.B) {
	p := filepath.Join(b.TempDir(), "f")
	f, _ := os.Create(p)
	data := randBytes(benchBlock, 1)
	for range readBlocks {
		_, _ = f.Write(data)
	}
	f.Close()
	f, _ = os.Open(p)
	defer f.Close()
	buf := make([]byte, benchBlock)
	b.SetBytes(benchBlock)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.ReadAt(buf, int64(i%readBlocks)*benchBlock); err != nil {
			b.Fatal(err)
		}
	}
}
