package blockstore

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeURL(t *testing.T) {
	cases := []struct{ in, want string }{
		{"HTTP://Example.COM:80/a/b?x=1", "http://example.com/a/b?x=1"},
		{"https://h:443/f#frag", "https://h/f"},
		{"http://h:8080/f?b=2&a=1", "http://h:8080/f?a=1&b=2"},
		{"http://h/f?a=1&Expires=123&Signature=zz&X-Amz-Date=now", "http://h/f?a=1"},
	}
	for _, c := range cases {
		got, err := NormalizeURL(c.in)
		if err != nil || got != c.want {
			t.Errorf("NormalizeURL(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "/relative", "://x", "h/f"} {
		if _, err := NormalizeURL(bad); err == nil {
			t.Errorf("NormalizeURL(%q): want error", bad)
		}
	}
}

func TestTaskIDForURL(t *testing.T) {
	a, _ := TaskIDForURL("http://h/f?a=1&Expires=1", "", "")
	b, _ := TaskIDForURL("http://H:80/f?Expires=2&a=1", "", "")
	if a != b {
		t.Fatalf("volatile params changed ID: %s vs %s", a, b)
	}
	c, _ := TaskIDForURL("http://h/f?a=1", "v2", "")
	d, _ := TaskIDForURL("http://h/f?a=1", "", "0-99")
	if a == c || a == d || c == d {
		t.Fatal("tag or range did not change the ID")
	}
}

func TestParseDigest(t *testing.T) {
	good := "sha256:" + "ab12" + "00000000000000000000000000000000000000000000000000000000000" + "0"
	if _, _, err := ParseDigest(good); err != nil {
		t.Fatal(err)
	}
	if id, err := TaskIDForDigest(good); err != nil || id[:7] != "sha256-" {
		t.Fatalf("TaskIDForDigest: %q %v", id, err)
	}
	for _, bad := range []string{"sha256", "sha1:abcd", "md5:zz", "sha256:abcd", "md5:" + good[7:]} {
		if _, _, err := ParseDigest(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseDigest(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestTaskIDFor(t *testing.T) {
	const url = "http://o.example/a.bin"
	d := "sha256:" + strings.Repeat("ab", 32)
	urlID, _ := TaskIDForURL(url, "", "")
	tagID, _ := TaskIDForURL(url, "v2", "")
	digID, _ := TaskIDForDigest(d)
	for _, tc := range []struct {
		name                   string
		taskID, url, tag, dgst string
		want                   string // "" = refused
	}{
		{"derived from the URL", "", url, "", "", urlID},
		{"derived from the URL even with a digest", "", url, "", d, urlID},
		{"derived from the digest alone", "", "", "", d, digID},
		{"the URL's id", urlID, url, "", d, urlID},
		{"the digest's id", digID, url, "", d, digID},
		{"with the tag", tagID, url, "v2", "", tagID},
		{"another URL's id", urlID, "http://evil.example/x", "", "", ""},
		{"the untagged id with a tag", urlID, url, "v2", "", ""},
		{"a made-up id", "anything", url, "", "", ""},
		{"an id without content", urlID, "", "", "", ""},
		{"nothing at all", "", "", "", "", ""},
		{"a bad digest", digID, url, "", "sha256:xyz", ""},
	} {
		got, err := TaskIDFor(tc.taskID, tc.url, tc.tag, tc.dgst)
		if tc.want == "" {
			if err == nil || !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: TaskIDFor = %q, %v; want ErrInvalid", tc.name, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: TaskIDFor = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}
