package compress

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is a process's compression setting (--compress).
type Mode int

// Modes. The zero value is Off, so a configuration that does not mention
// compression keeps the plain data plane; the commands default to Auto.
const (
	// Off: no trials, no asking, no forms kept or served.
	Off Mode = iota
	// Auto: the seed tries blocks while the supernode is not loaded; a
	// peer asks for compressed forms while its CPU has headroom and its
	// link is the bottleneck (see ask).
	Auto
	// Always: the seed tries every block and a peer always asks, whatever
	// the load (tests and benchmarks).
	Always
)

// ParseMode parses "auto", "always" or "off".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "auto":
		return Auto, nil
	case "always":
		return Always, nil
	case "off":
		return Off, nil
	}
	return Off, fmt.Errorf("compression mode %q: want auto, always or off", s)
}

func (m Mode) String() string {
	switch m {
	case Auto:
		return "auto"
	case Always:
		return "always"
	case Off:
		return "off"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// The peer's rule for asking (see ask).
const (
	// MinIdle is the share of the machine's CPU time that must have been
	// idle over the last second for a peer to ask for compressed forms.
	MinIdle = 0.30
	// linkFactor: the link counts as the bottleneck when a byte takes
	// longer than this many times the time decoding a compressed byte
	// takes. A peer runs several transfers at once over one link but
	// decodes on a few cores; the factor covers up to that many transfers
	// per core, and the decoding that sits on each block's path.
	linkFactor = 8
	// defaultDecodeNs is the decoding cost per compressed byte assumed
	// before the first form was decoded (zstd decodes several hundred MB/s
	// of compressed input on one core).
	defaultDecodeNs = 5.0
)

// ask is the peer's rule: whether to ask for a compressed form. In Auto
// mode only while the CPU has headroom (idle >= MinIdle over the last
// second; unknown counts as headroom) and the link is the bottleneck: a
// wire byte takes (per transfer, rate limits and sharing the link
// included) more than linkFactor times what decoding a compressed byte
// takes. Both are in nanoseconds per byte; 0 means not measured yet, and
// a link not measured yet is assumed slow (the first blocks tell).
func ask(m Mode, idle float64, idleKnown bool, wireNs, decodeNs float64) bool {
	switch m {
	case Always:
		return true
	case Off:
		return false
	}
	if idleKnown && idle < MinIdle {
		return false
	}
	if wireNs <= 0 {
		return true
	}
	if decodeNs <= 0 {
		decodeNs = defaultDecodeNs
	}
	return wireNs > linkFactor*decodeNs
}

// HostConfig configures a Host.
type HostConfig struct {
	Mode Mode
	// Codec decodes received forms. Required.
	Codec *Codec
	// Forms keeps received forms, to serve them on; nil: none kept.
	Forms *Forms
	// Idle reports the machine's idle CPU share (default: IdleSampler).
	Idle func() (float64, bool)
	// OnSaved, if set, is called with the bytes each compressed block
	// saved on the wire (a Prometheus counter).
	OnSaved func(n int64)
	// OnWanted, if set, is called when a requester asked for the form of a
	// block nobody tried yet (the seed's Compressor.Wanted).
	OnWanted func(task string, idx int)
	Logger   *slog.Logger
}

// Host is one process's compression on the data plane: when to ask, how to
// decode, what to keep and serve, and the counts. A nil *Host is valid and
// does nothing: Ask is false, Open finds nothing.
type Host struct {
	cfg HostConfig
	log *slog.Logger

	mu       sync.Mutex
	wireNs   float64 // moving average: wire time per byte of a transfer
	decodeNs float64 // moving average: decode time per compressed byte

	asked, compressed, corrupt     atomic.Int64
	plain, wire                    atomic.Int64
	served, servedPlain, servedLen atomic.Int64
	keptForms                      atomic.Int64
}

// NewHost returns the Host of a process; nil for Mode Off (or without a
// codec).
func NewHost(cfg HostConfig) *Host {
	if cfg.Mode == Off || cfg.Codec == nil {
		return nil
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Idle == nil {
		cfg.Idle = IdleSampler().Ratio
	}
	return &Host{cfg: cfg, log: cfg.Logger}
}

// Mode returns the host's mode (Off for a nil Host).
func (h *Host) Mode() Mode {
	if h == nil {
		return Off
	}
	return h.cfg.Mode
}

// Ask reports whether the next block request should ask for the
// compressed form (Accept-Encoding: zstd).
func (h *Host) Ask() bool {
	if h == nil {
		return false
	}
	idle, known := 0.0, false
	if h.cfg.Mode == Auto {
		idle, known = h.cfg.Idle()
	}
	h.mu.Lock()
	wire, dec := h.wireNs, h.decodeNs
	h.mu.Unlock()
	ok := ask(h.cfg.Mode, idle, known, wire, dec)
	if ok {
		h.asked.Add(1)
	}
	return ok
}

// ewma folds sample into avg (weight 1/8; the first sample is taken as is).
func ewma(avg, sample float64) float64 {
	if avg <= 0 {
		return sample
	}
	return avg + (sample-avg)/8
}

// Transferred records a block transfer of wire bytes that took d (from
// the request to the body's last byte).
func (h *Host) Transferred(wire int64, d time.Duration) {
	if h == nil || wire <= 0 || d <= 0 {
		return
	}
	h.mu.Lock()
	h.wireNs = ewma(h.wireNs, float64(d.Nanoseconds())/float64(wire))
	h.mu.Unlock()
}

// Decode decodes a received form of plainLen bytes into dst (see
// Codec.Decompress), timing it for the rule. An error is ErrCorrupt.
func (h *Host) Decode(dst, form []byte, plainLen int) ([]byte, error) {
	if h == nil {
		return nil, fmt.Errorf("%w: this host does not decode compressed blocks", ErrCorrupt)
	}
	began := time.Now()
	out, err := h.cfg.Codec.Decompress(dst, form, plainLen)
	if err != nil {
		h.corrupt.Add(1)
		return nil, err
	}
	if d := time.Since(began); d > 0 && len(form) > 0 {
		h.mu.Lock()
		h.decodeNs = ewma(h.decodeNs, float64(d.Nanoseconds())/float64(len(form)))
		h.mu.Unlock()
	}
	return out, nil
}

// Received counts a block stored from the swarm: plainLen bytes that came
// as form (nil: plain). keep keeps the form (digest: the block's SHA-256,
// which PutBlock verified) to serve it on: not for a sealed store, whose
// forms would be plaintext at rest.
func (h *Host) Received(task string, idx int, digest []byte, plainLen int64, form []byte, keep bool) {
	if h == nil {
		return
	}
	h.plain.Add(plainLen)
	if form == nil {
		h.wire.Add(plainLen)
		return
	}
	h.wire.Add(int64(len(form)))
	h.compressed.Add(1)
	if saved := plainLen - int64(len(form)); saved > 0 && h.cfg.OnSaved != nil {
		h.cfg.OnSaved(saved)
	}
	if keep && h.cfg.Forms != nil {
		if err := h.cfg.Forms.Put(task, idx, digest, plainLen, form); err != nil {
			h.log.Debug("compressed form not kept", "task", task, "block", idx, "err", err)
		} else {
			h.keptForms.Add(1)
		}
	}
}

// Open returns the kept form of a block for an upload (see Forms.Open);
// for a block no one tried yet it tells OnWanted.
func (h *Host) Open(task string, idx int, digest []byte) (*os.File, int64, bool) {
	if h == nil || h.cfg.Forms == nil {
		return nil, 0, false
	}
	f, n, ok := h.cfg.Forms.Open(task, idx, digest)
	if !ok && h.cfg.OnWanted != nil && h.cfg.Forms.Lookup(task, idx, digest) == Unknown {
		h.cfg.OnWanted(task, idx)
	}
	return f, n, ok
}

// Served counts a form sent in place of a block of plainLen bytes.
func (h *Host) Served(plainLen, wire int64) {
	if h == nil {
		return
	}
	h.served.Add(1)
	h.servedPlain.Add(plainLen)
	h.servedLen.Add(wire)
}

// Forms returns the host's side store (nil: none).
func (h *Host) Forms() *Forms {
	if h == nil {
		return nil
	}
	return h.cfg.Forms
}

// Stats are a Host's counters.
type Stats struct {
	Mode string `json:"mode"`
	// Asked counts block requests that asked for the compressed form.
	Asked int64 `json:"asked"`
	// BlocksCompressed counts received blocks that came compressed.
	BlocksCompressed int64 `json:"blocks_compressed"`
	// BytesPlain is the plain length of the blocks received from the
	// swarm, BytesWire what they took on the wire (bodies).
	BytesPlain int64 `json:"bytes_plain"`
	BytesWire  int64 `json:"bytes_wire"`
	SavedBytes int64 `json:"saved_bytes"`
	// CorruptBodies counts compressed bodies that did not decode (their
	// senders were reported like senders of wrong blocks).
	CorruptBodies int64 `json:"corrupt_bodies"`
	// KeptForms counts received forms kept to serve them on.
	KeptForms int64 `json:"kept_forms"`
	// BlocksServedCompressed counts uploads answered with a form;
	// ServedSavedBytes the bytes those saved.
	BlocksServedCompressed int64      `json:"blocks_served_compressed"`
	ServedSavedBytes       int64      `json:"served_saved_bytes"`
	SideStore              FormsStats `json:"side_store"`
}

// Stats returns the counters (zero, mode "off", for a nil Host).
func (h *Host) Stats() Stats {
	if h == nil {
		return Stats{Mode: Off.String()}
	}
	plain, wire := h.plain.Load(), h.wire.Load()
	return Stats{
		Mode: h.cfg.Mode.String(), Asked: h.asked.Load(), BlocksCompressed: h.compressed.Load(),
		BytesPlain: plain, BytesWire: wire, SavedBytes: plain - wire, CorruptBodies: h.corrupt.Load(), KeptForms: h.keptForms.Load(),
		BlocksServedCompressed: h.served.Load(), ServedSavedBytes: h.servedPlain.Load() - h.servedLen.Load(),
		SideStore: h.cfg.Forms.Stats(),
	}
}
