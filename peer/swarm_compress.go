package peer

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/dfly-p2p/dfly/internal/blockhttp"
)

// Compressed transfers (issue 17, internal/compress): download asks a
// parent for a block's compressed form while SwarmConfig.Compress says it
// pays (CPU headroom, the link the bottleneck); a parent that keeps one
// answers with it (Content-Encoding: zstd), which is decoded — never
// beyond the block's length — and stored through PutBlock, which verifies
// the plain block's SHA-256 as for any block. A body that does not decode,
// or an encoding nobody asked for, is a bad block: the parent is reported
// and skipped like one that sent wrong bytes. The form is then kept (not
// in a sealed store: it would be plaintext at rest) so this host serves it
// on, and a block leaves the seed compressed once for the whole swarm.

// bodyLength returns the bytes the body of a block answer must have: the
// block's size for a plain answer, the form's Content-Length for a
// compressed one (then encoded is true).
func bodyLength(resp *http.Response, asked bool, size int64) (n int64, encoded bool, err error) {
	enc := strings.TrimSpace(resp.Header.Get("Content-Encoding"))
	if enc == "" || strings.EqualFold(enc, "identity") {
		if resp.ContentLength >= 0 && resp.ContentLength != size {
			return 0, false, fmt.Errorf("%d bytes, want %d", resp.ContentLength, size)
		}
		return size, false, nil
	}
	if !asked || !strings.EqualFold(enc, blockhttp.EncodingZstd) {
		return 0, false, fmt.Errorf("content encoding %q that was not asked for", enc)
	}
	if resp.ContentLength <= 0 || resp.ContentLength >= size {
		return 0, false, fmt.Errorf("a compressed form of %d bytes for a block of %d", resp.ContentLength, size)
	}
	return resp.ContentLength, true, nil
}

// decodeForm decodes a received form of a block of size bytes; a form that
// does not decode is a bad block.
func (st *swarmTask) decodeForm(form []byte, size int64, url string) (plain, _ []byte, err error) {
	plain, err = st.s.cfg.Compress.Decode(st.s.buffer(size), form, int(size))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: GET %s: %w", errBadDigest, url, err)
	}
	return plain, form, nil
}

// received counts a block stored from a parent (data: its plain bytes;
// form: the compressed form it came as, nil if plain) and keeps the form.
func (st *swarmTask) received(idx int, data, form []byte) {
	c := st.s.cfg.Compress
	if c == nil {
		return
	}
	sum, _ := st.s.store.BlockDigest(st.id, idx)
	meta, err := st.s.store.Task(st.id)
	c.Received(st.id, idx, sum, int64(len(data)), form, err == nil && !meta.Sealed)
}
