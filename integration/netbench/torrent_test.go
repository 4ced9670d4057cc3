package netbench

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestInfoHash(t *testing.T) {
	info := "d6:lengthi42e4:name5:a.bin12:piece lengthi262144e6:pieces20:" + strings.Repeat("x", 20) + "e"
	sum := sha1.Sum([]byte(info))
	want := hex.EncodeToString(sum[:])
	tests := []struct {
		name    string
		torrent string
		want    string
		wantErr bool
	}{
		{"info after announce and list", "d8:announce9:http://x/13:announce-listll5:a:b:cee4:info" + info + "e", want, false},
		{"info first, more keys after", "d4:info" + info + "7:comment2:hie", want, false},
		{"no info", "d8:announce9:http://x/e", "", true},
		{"not a dictionary", "l4:infoe", "", true},
		{"truncated", "d4:infod6:lengthi42e", "", true},
		{"bad string length", "d99:infoe", "", true},
		{"empty", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := InfoHash([]byte(tt.torrent))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("InfoHash = %q, %v; want %q, err %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestScrapeComplete(t *testing.T) {
	tests := []struct {
		body    string
		want    int
		wantErr bool
	}{
		{"d5:filesd20:xxxxxxxxxxxxxxxxxxxxd8:completei3e10:downloadedi0e10:incompletei1eeee", 3, false},
		{"d5:filesdee", 0, false},
		{"d8:completei12", 0, true},
	}
	for _, tt := range tests {
		got, err := scrapeComplete([]byte(tt.body))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("scrapeComplete(%q) = %d, %v", tt.body, got, err)
		}
	}
}

// TestMakeTorrentMatchesAria2 checks InfoHash on a real mktorrent output
// against aria2c's own reading of it.
func TestMakeTorrentMatchesAria2(t *testing.T) {
	for _, b := range []string{"mktorrent", "aria2c"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("needs %s (apt-get install mktorrent aria2): %v", b, err)
		}
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "d.bin")
	if err := os.WriteFile(data, []byte(strings.Repeat("dfly", 300_000)), 0o644); err != nil {
		t.Fatal(err)
	}
	hash, err := MakeTorrent(context.Background(), data, "http://10.77.0.2:6969/announce", 18, filepath.Join(dir, "d.torrent"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("aria2c", "-S", filepath.Join(dir, "d.torrent")).Output()
	if err != nil {
		t.Fatalf("aria2c -S: %v", err)
	}
	if !strings.Contains(string(out), "Info Hash: "+hash) {
		t.Errorf("info hash %s not what aria2c reads:\n%s", hash, out)
	}
}
