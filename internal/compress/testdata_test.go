package compress

import (
	"bytes"
	"compress/gzip"
	"math/rand/v2"
	"strings"
)

// Test contents: text compresses well, random bytes and gzip do not.

var words = strings.Fields("the block store keeps every task in one sparse data file per task and the seed fetches each block from the origin once while peers trade blocks among themselves")

// text returns n bytes of pseudo-random prose (deterministic in seed).
func text(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, 0, n+32)
	for len(b) < n {
		b = append(b, words[r.IntN(len(words))]...)
		if r.IntN(12) == 0 {
			b = append(b, '.', '\n')
		} else {
			b = append(b, ' ')
		}
	}
	return b[:n]
}

// random returns n incompressible bytes (deterministic in seed).
func random(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	_, _ = r.Read(b)
	return b
}

// gzipped returns n bytes of a gzip stream of prose with random words
// (gzip halves it: a stream of n bytes needs about 2n of input).
func gzipped(n int) []byte {
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
	r := rand.New(rand.NewPCG(5, 5))
	chunk := make([]byte, 0, 256<<10)
	for b.Len() < n {
		chunk = chunk[:0]
		for len(chunk) < cap(chunk)-16 {
			for range 3 + r.IntN(7) {
				chunk = append(chunk, byte('a'+r.IntN(26)))
			}
			chunk = append(chunk, ' ')
		}
		_, _ = w.Write(chunk)
		_ = w.Flush()
	}
	_ = w.Close()
	return b.Bytes()[:n]
}
