package blockstore

import (
	"io"
	"log/slog"
	"testing"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// BenchmarkAtRest compares writing, reading and opening (for upload) 4 MiB
// blocks of a plain store and of a store encrypted at rest, in one run.
// `go test -run '^$' -bench AtRest ./blockstore`.
func BenchmarkAtRest(b *testing.B) {
	for _, mode := range []struct {
		name string
		key  []byte
	}{{"plain", nil}, {"sealed", testKey(1)}} {
		b.Run("put/"+mode.name, func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{GCInterval: -1, Key: mode.key, Logger: quiet()})
			if err != nil {
				b.Fatal(err)
			}
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
		})
		for _, op := range []string{"read", "openblock"} {
			b.Run(op+"/"+mode.name, func(b *testing.B) {
				s, err := Open(b.TempDir(), Options{GCInterval: -1, Key: mode.key, Logger: quiet()})
				if err != nil {
					b.Fatal(err)
				}
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
				buf := make([]byte, 64<<10)
				b.SetBytes(benchBlock)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if op == "read" {
						if _, err := s.ReadBlock("b", i%readBlocks); err != nil {
							b.Fatal(err)
						}
						continue
					}
					rc, n, err := s.OpenBlock("b", i%readBlocks)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := io.CopyBuffer(io.Discard, io.LimitReader(rc, n), buf); err != nil {
						b.Fatal(err)
					}
					rc.Close()
				}
			})
		}
	}
}
