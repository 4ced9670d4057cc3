package origin

import (
	"bytes"
	"io"
	"net/http"
	"testing"
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
