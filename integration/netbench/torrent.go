package netbench

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
)

// InfoHash returns the hex SHA-1 of the bencoded "info" dictionary of a
// .torrent file's content: the BitTorrent info hash.
func InfoHash(torrent []byte) (string, error) {
	if len(torrent) == 0 || torrent[0] != 'd' {
		return "", errors.New("torrent: not a bencoded dictionary")
	}
	pos := 1
	for pos < len(torrent) && torrent[pos] != 'e' {
		key, next, err := benString(torrent, pos)
		if err != nil {
			return "", err
		}
		end, err := benSkip(torrent, next)
		if err != nil {
			return "", err
		}
		if key == "info" {
			sum := sha1.Sum(torrent[next:end])
			return hex.EncodeToString(sum[:]), nil
		}
		pos = end
	}
	return "", errors.New("torrent: no info dictionary")
}

// benString parses a bencoded string at pos; it returns it and the position after it.
func benString(b []byte, pos int) (string, int, error) {
	colon := bytes.IndexByte(b[pos:], ':')
	if colon < 0 {
		return "", 0, fmt.Errorf("torrent: bad string at %d", pos)
	}
	n, err := strconv.Atoi(string(b[pos : pos+colon]))
	start := pos + colon + 1
	if err != nil || n < 0 || start+n > len(b) {
		return "", 0, fmt.Errorf("torrent: bad string length at %d", pos)
	}
	return string(b[start : start+n]), start + n, nil
}

// benSkip returns the position after the bencoded value at pos.
func benSkip(b []byte, pos int) (int, error) {
	if pos >= len(b) {
		return 0, errors.New("torrent: truncated")
	}
	switch c := b[pos]; {
	case c == 'i':
		end := bytes.IndexByte(b[pos:], 'e')
		if end < 0 {
			return 0, fmt.Errorf("torrent: bad integer at %d", pos)
		}
		return pos + end + 1, nil
	case c == 'l' || c == 'd':
		pos++
		for pos < len(b) && b[pos] != 'e' {
			next, err := benSkip(b, pos)
			if err != nil {
				return 0, err
			}
			pos = next
		}
		if pos >= len(b) {
			return 0, errors.New("torrent: truncated list or dictionary")
		}
		return pos + 1, nil
	case c >= '0' && c <= '9':
		_, next, err := benString(b, pos)
		return next, err
	default:
		return 0, fmt.Errorf("torrent: unexpected byte %q at %d", c, pos)
	}
}

// MakeTorrent runs mktorrent for dataFile with the given announce URL and
// piece size 2^pieceExp; it returns the .torrent path and the info hash.
func MakeTorrent(ctx context.Context, dataFile, announce string, pieceExp int, out string) (string, error) {
	_ = os.Remove(out)
	if _, err := run(ctx, "mktorrent", "-a", announce, "-l", strconv.Itoa(pieceExp), "-o", out, dataFile); err != nil {
		return "", fmt.Errorf("make torrent (is mktorrent installed? apt-get install mktorrent): %w", err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return "", fmt.Errorf("read torrent: %w", err)
	}
	return InfoHash(b)
}

// ScrapeComplete asks the tracker at addr (from inside namespace ns, with
// curl) how many seeders ("complete") it knows for infoHash.
func ScrapeComplete(ctx context.Context, ns, addr, infoHash string) (int, error) {
	raw, err := hex.DecodeString(infoHash)
	if err != nil {
		return 0, fmt.Errorf("scrape: bad info hash %q: %w", infoHash, err)
	}
	u := "http://" + addr + "/scrape?info_hash=" + url.QueryEscape(string(raw))
	body, err := run(ctx, "ip", "netns", "exec", ns, "curl", "-sS", "--fail", "--max-time", "2", u)
	if err != nil {
		return 0, fmt.Errorf("scrape %s: %w", addr, err)
	}
	return scrapeComplete(body)
}

// scrapeComplete reads the first "complete" count of a bencoded scrape answer.
func scrapeComplete(body []byte) (int, error) {
	key := []byte("8:completei")
	i := bytes.Index(body, key)
	if i < 0 {
		return 0, nil
	}
	rest := body[i+len(key):]
	end := bytes.IndexByte(rest, 'e')
	if end < 0 {
		return 0, fmt.Errorf("scrape: bad answer %q", body)
	}
	return strconv.Atoi(string(rest[:end]))
}
