package cli

import "testing"

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"1024", 1024, true}, {"512K", 512 << 10, true}, {"100M", 100 << 20, true},
		{"2G", 2 << 30, true}, {"1.5GiB", 3 << 29, true}, {"10MB/s", 10 << 20, true}, {"1T", 1 << 40, true},
		{"", 0, false}, {"abc", 0, false}, {"-1M", 0, false}, {"M", 0, false},
	}
	for _, c := range cases {
		got, err := ParseSize(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestParseHeaders(t *testing.T) {
	h, err := ParseHeaders([]string{"Authorization: Bearer x", "X-A:1", "X-A: 2"})
	if err != nil || h.Get("Authorization") != "Bearer x" || len(h.Values("X-A")) != 2 {
		t.Fatalf("%v %v", h, err)
	}
	if _, err := ParseHeaders([]string{"nocolon"}); err == nil {
		t.Fatal("want error")
	}
	if _, err := ParseHeaders([]string{": v"}); err == nil {
		t.Fatal("want error")
	}
}

func TestHumanBytesAndLogger(t *testing.T) {
	if HumanBytes(10) != "10 B" || HumanBytes(1536) != "1.5 KiB" || HumanBytes(3<<30) != "3.0 GiB" {
		t.Fatal(HumanBytes(1536))
	}
	if _, err := NewLogger("loud"); err == nil {
		t.Fatal("want error for bad level")
	}
	if _, err := NewLogger("debug"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DFLY_STORE", "/x/y")
	if DefaultStoreDir() != "/x/y" {
		t.Fatal("DFLY_STORE ignored")
	}
}
