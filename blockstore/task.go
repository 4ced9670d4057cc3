package blockstore

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"net/url"
	"sort"
	"strings"
	"time"
)

// State is the life-cycle state of a task in a store.
type State string

const (
	// StatePending: the task is accepted; some blocks may be missing.
	StatePending State = "pending"
	// StateComplete: every block is present and the whole content was verified.
	StateComplete State = "complete"
)

// Task is one piece of content cut into blocks.
type Task struct {
	ID     string `json:"id"`
	Source string `json:"source,omitempty"` // origin URL (informational)
	// Tag tells apart contents the URL alone does not (part of URL-derived IDs).
	Tag          string    `json:"tag,omitempty"`
	Length       int64     `json:"length"`
	BlockSize    int64     `json:"block_size"`
	Digest       string    `json:"digest,omitempty"` // whole-content digest, "sha256:HEX" or "md5:HEX"
	ETag         string    `json:"etag,omitempty"`
	LastModified string    `json:"last_modified,omitempty"`
	State        State     `json:"state"`
	Pinned       bool      `json:"pinned,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	AccessedAt   time.Time `json:"accessed_at"`
	// Verified is set when the whole content was checked against a digest
	// declared by the user or the origin (not merely computed locally).
	Verified bool `json:"verified,omitempty"`
	// Private is set when the content was fetched with credentials
	// (source.Sensitive headers): it is then handed to a caller only after
	// the origin accepted that caller's own credentials.
	Private bool `json:"private,omitempty"`
	// Sealed is set on the tasks a store with a key (Options.Key) created:
	// their blocks are encrypted at rest with AES-256-GCM (see seal.go).
	// The store sets it; CreateTask refuses it on a store without a key.
	Sealed bool `json:"sealed,omitempty"`
	// E2E is set on end-to-end encrypted tasks (see e2e.go): the stored
	// blocks (and their digests) are ciphertext under the key E2EKeyID
	// names; Digest is over the plaintext.
	E2E      bool   `json:"e2e,omitempty"`
	E2EKeyID string `json:"e2e_key_id,omitempty"`
	// E2ESalt is the seed's random value its key of this version of the
	// content derives from (only in the seed's store; never sent).
	E2ESalt string `json:"e2e_salt,omitempty"`
}

// NumBlocks is the number of blocks of the task.
func (t Task) NumBlocks() int { return NumBlocks(t.Length, t.BlockSize) }

// BlockLen is the length of block idx.
func (t Task) BlockLen(idx int) int64 { return BlockLen(t.Length, t.BlockSize, idx) }

// volatileParams are query parameters that vary per request without changing
// the content (signed-URL expiry and signatures, cache busters). They are
// dropped from URL-derived task IDs so that the same content is one task.
var volatileParams = map[string]bool{
	"expires": true, "signature": true, "x-amz-date": true, "x-amz-expires": true,
	"x-amz-signature": true, "x-amz-credential": true, "x-amz-security-token": true,
	"x-goog-signature": true, "x-goog-date": true, "x-goog-expires": true,
	"x-goog-credential": true, "token": true, "_": true,
}

// NormalizeURL canonicalises u for task identity: lower-case scheme and host,
// default ports removed, fragment removed, volatile query parameters dropped
// and the rest sorted.
func NormalizeURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("parse URL %q: %w: %w", raw, err, ErrInvalid)
	}
	if u.Scheme == "" || u.Host == "" {
		return "", fmt.Errorf("URL %q: want an absolute http(s) URL: %w", raw, ErrInvalid)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Host)
	host = strings.TrimSuffix(host, map[string]string{"http": ":80", "https": ":443"}[u.Scheme])
	u.Host = host
	u.Fragment = ""
	q := u.Query()
	keys := make([]string, 0, len(q))
	for k := range q {
		if !volatileParams[strings.ToLower(k)] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		vs := append([]string(nil), q[k]...)
		sort.Strings(vs)
		for j, v := range vs {
			if i+j > 0 {
				b.WriteByte('&')
			}
			b.WriteString(url.QueryEscape(k) + "=" + url.QueryEscape(v))
		}
	}
	u.RawQuery = b.String()
	return u.String(), nil
}

// TaskIDForURL derives a task ID from a URL, an optional tag (to tell apart
// contents the URL alone does not) and an optional byte range ("a-b").
func TaskIDForURL(rawURL, tag, byteRange string) (string, error) {
	n, err := NormalizeURL(rawURL)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(n + "\x00" + tag + "\x00" + byteRange))
	return "u" + hex.EncodeToString(sum[:16]), nil
}

// TaskIDForDigest derives a task ID from a content digest such as an OCI blob
// digest, so that the same blob from two registries is one task.
func TaskIDForDigest(digest string) (string, error) {
	algo, hexsum, err := ParseDigest(digest)
	if err != nil {
		return "", err
	}
	return algo + "-" + hexsum, nil
}

// TaskIDFor returns the task id a request for content names, and refuses
// an id that does not name that content: whoever could pick the id of a
// URL could fill it with other bytes. With taskID empty it is the id of
// url and tag (TaskIDForURL), or of digest when there is no URL. A given
// taskID must equal one of those two derivations (a content-addressed id
// has its content checked against the digest it carries).
func TaskIDFor(taskID, url, tag, digest string) (string, error) {
	if taskID == "" {
		if url != "" {
			return TaskIDForURL(url, tag, "")
		}
		if digest != "" {
			return TaskIDForDigest(digest)
		}
		return "", fmt.Errorf("a request names neither a URL nor a digest: %w", ErrInvalid)
	}
	var derived []string
	if digest != "" {
		id, err := TaskIDForDigest(digest)
		if err != nil {
			return "", fmt.Errorf("task ID %q: %w", taskID, err)
		}
		if id == taskID {
			return id, nil
		}
		derived = append(derived, id+" (from the digest)")
	}
	if url != "" {
		id, err := TaskIDForURL(url, tag, "")
		if err != nil {
			return "", fmt.Errorf("task ID %q: %w", taskID, err)
		}
		if id == taskID {
			return id, nil
		}
		derived = append(derived, id+" (from the URL and tag)")
	}
	if len(derived) == 0 {
		return "", fmt.Errorf("task ID %q: a request that names a task must carry the digest or URL its ID derives from: %w", taskID, ErrInvalid)
	}
	return "", fmt.Errorf("task ID %q does not name this content (want %s); leave the task ID out: %w",
		taskID, strings.Join(derived, " or "), ErrInvalid)
}

// ParseDigest splits "sha256:HEX" or "md5:HEX" and validates the hex length.
func ParseDigest(d string) (algo, hexsum string, err error) {
	algo, hexsum, ok := strings.Cut(d, ":")
	if !ok {
		return "", "", fmt.Errorf("digest %q: want ALGO:HEX (sha256 or md5): %w", d, ErrInvalid)
	}
	algo = strings.ToLower(algo)
	hexsum = strings.ToLower(hexsum)
	want := map[string]int{"sha256": 64, "md5": 32}[algo]
	if want == 0 {
		return "", "", fmt.Errorf("digest %q: unsupported algorithm %q (use sha256 or md5): %w", d, algo, ErrInvalid)
	}
	if len(hexsum) != want {
		return "", "", fmt.Errorf("digest %q: %s needs %d hex digits, got %d: %w", d, algo, want, len(hexsum), ErrInvalid)
	}
	if _, err := hex.DecodeString(hexsum); err != nil {
		return "", "", fmt.Errorf("digest %q: not hex: %w", d, ErrInvalid)
	}
	return algo, hexsum, nil
}

// NewHash returns a hash for the digest's algorithm.
func NewHash(algo string) (hash.Hash, error) {
	switch algo {
	case "sha256":
		return sha256.New(), nil
	case "md5":
		return md5.New(), nil
	}
	return nil, fmt.Errorf("unsupported digest algorithm %q: %w", algo, ErrInvalid)
}
