package origin

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"
)

func TestContentDeterministicAndAddressable(t *testing.T) {
	c := Content{Size: 3*chunk + 17, Seed: 7}
	all := make([]byte, c.Size)
	if _, err := c.ReadAt(all, 0); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1, chunk - 1, chunk, 2*chunk + 5, c.Size - 3} {
		p := make([]byte, 100)
		n, _ := c.ReadAt(p, off)
		if !bytes.Equal(p[:n], all[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d) differs from full read", off)
		}
	}
	other := make([]byte, 64)
	_, _ = Content{Size: c.Size, Seed: 8}.ReadAt(other, 0)
	if bytes.Equal(other, all[:64]) {
		t.Fatal("different seeds gave the same content")
	}
}

func TestServerRangeConditionalAndCounters(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := Content{Size: 1 << 20, Seed: 1}
	u := s.Add("f", c)
	want := make([]byte, 1000)
	_, _ = c.ReadAt(want, 5000)

	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Range", "bytes=5000-5999")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 206 || !bytes.Equal(got, want) {
		t.Fatalf("range: status %d, equal=%v", resp.StatusCode, bytes.Equal(got, want))
	}
	if s.BytesSent() != 1000 {
		t.Fatalf("BytesSent = %d", s.BytesSent())
	}
	etag := resp.Header.Get("ETag")
	req, _ = http.NewRequest("HEAD", u, nil)
	req.Header.Set("If-None-Match", etag)
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 304 {
		t.Fatalf("conditional HEAD: %d", resp.StatusCode)
	}

	s.IgnoreRange(true)
	req, _ = http.NewRequest("GET", u, nil)
	req.Header.Set("Range", "bytes=0-9")
	resp, _ = http.DefaultClient.Do(req)
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || n != c.Size {
		t.Fatalf("ignore range: %d %d", resp.StatusCode, n)
	}
	s.IgnoreRange(false)

	s.FailNext(1)
	resp, _ = http.Get(u)
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("FailNext: %d", resp.StatusCode)
	}
	resp, _ = http.Get(s.URL + "/missing")
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("missing: %d", resp.StatusCode)
	}

	s.CorruptFrom(10)
	req, _ = http.NewRequest("GET", u, nil)
	req.Header.Set("Range", "bytes=0-19")
	resp, _ = http.DefaultClient.Do(req)
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	full := make([]byte, 20)
	_, _ = c.ReadAt(full, 0)
	if !bytes.Equal(got[:10], full[:10]) || bytes.Equal(got[10:], full[10:]) {
		t.Fatal("CorruptFrom did not corrupt exactly the tail")
	}
	s.CorruptFrom(-1)

	s.SetDown(true)
	if _, err := http.Get(u); err == nil {
		t.Fatal("down origin answered")
	}
	s.SetDown(false)
}

func TestDigest(t *testing.T) {
	c := Content{Size: 10, Seed: 1}
	if d := c.Digest("md5"); len(d) != 4+32 {
		t.Fatal(d)
	}
	if d := c.Digest("sha256"); len(d) != 7+64 {
		t.Fatal(d)
	}
}

func get(t *testing.T, u, rng string) (int, []byte, error) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func TestFailAfterCutsAndFails(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := Content{Size: 1 << 20, Seed: 2}
	u := s.Add("f", c)
	s.FailAfter(100<<10, http.StatusInternalServerError)
	code, b, err := get(t, u, "")
	if err == nil || code != 200 || int64(len(b)) >= c.Size {
		t.Fatalf("a response crossing the threshold: status %d, %d bytes, err %v; want a cut 200", code, len(b), err)
	}
	want := make([]byte, len(b))
	_, _ = c.ReadAt(want, 0)
	if !bytes.Equal(b, want) {
		t.Fatal("the cut body is not a prefix of the content")
	}
	if code, _, _ := get(t, u, "bytes=0-9"); code != 500 {
		t.Fatalf("after the threshold: status %d, want 500", code)
	}
	if s.Failures() < 2 {
		t.Fatalf("Failures = %d, want ≥ 2", s.Failures())
	}
	s.FailAfter(-1, 0)
	if code, b, err := get(t, u, "bytes=0-9"); err != nil || code != 206 || len(b) != 10 {
		t.Fatalf("healed: status %d, %d bytes, %v", code, len(b), err)
	}
}

func TestVanishAndReturn(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := Content{Size: 4 << 20, Seed: 3}
	u := s.Add("f", c)
	s.SetRate(1 << 20) // 4 s for the whole body
	errc := make(chan error, 1)
	got := make(chan int, 1)
	go func() {
		_, b, err := get(t, u, "")
		got <- len(b)
		errc <- err
	}()
	for s.BytesSent() < 256<<10 {
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Vanish(); err != nil {
		t.Fatal(err)
	}
	if n := <-got; <-errc == nil || int64(n) >= c.Size {
		t.Fatalf("a body in flight when the origin vanished: %d bytes without error", n)
	}
	if _, _, err := get(t, u, ""); err == nil {
		t.Fatal("a vanished origin answered")
	}
	if err := s.Return(); err != nil {
		t.Fatal(err)
	}
	s.SetRate(0)
	if code, b, err := get(t, u, ""); err != nil || code != 200 || int64(len(b)) != c.Size {
		t.Fatalf("after Return: status %d, %d bytes, %v", code, len(b), err)
	}
}

func TestSetRatePaces(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u := s.Add("f", Content{Size: 512 << 10, Seed: 4})
	s.SetRate(1 << 20)
	began := time.Now()
	if _, b, err := get(t, u, ""); err != nil || len(b) != 512<<10 {
		t.Fatalf("%d bytes, %v", len(b), err)
	}
	// 512 KiB at 1 MiB/s with a 32 KiB burst: about half a second.
	if d := time.Since(began); d < 300*time.Millisecond {
		t.Fatalf("512 KiB at 1 MiB/s took %v", d)
	}
}
