package blockstore

import "testing"

// BenchmarkOpenBlockChecked measures the upload path (OpenBlock and Close)
// of blocks this process has verified: with the data file unchanged, the
// check costs one fstat, never a hash.
func BenchmarkOpenBlockChecked(b *testing.B) {
	s, _ := Open(b.TempDir(), Options{GCInterval: -1})
	defer s.Close()
	task, data := content("ob", 64*4096)
	if _, err := s.CreateTask(ctx, task); err != nil {
		b.Fatal(err)
	}
	for i := range task.NumBlocks() {
		if err := s.PutBlock(ctx, "ob", i, data[i*4096:(i+1)*4096]); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rc, _, err := s.OpenBlock("ob", i%64)
		if err != nil {
			b.Fatal(err)
		}
		rc.Close()
	}
}

// BenchmarkReadBlockChecked measures ReadBlock of verified 4-KiB blocks.
func BenchmarkReadBlockChecked(b *testing.B) {
	s, _ := Open(b.TempDir(), Options{GCInterval: -1})
	defer s.Close()
	task, data := content("rb", 64*4096)
	if _, err := s.CreateTask(ctx, task); err != nil {
		b.Fatal(err)
	}
	for i := range task.NumBlocks() {
		if err := s.PutBlock(ctx, "rb", i, data[i*4096:(i+1)*4096]); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.ReadBlock("rb", i%64); err != nil {
			b.Fatal(err)
		}
	}
}
