package blockstore

import "errors"

// Errors returned by the store. Callers test them with errors.Is; the
// wrapped message always names the task and block involved.
var (
	// ErrNotFound: the task or block does not exist.
	ErrNotFound = errors.New("not found")
	// ErrDigestMismatch: data did not match its expected digest; it was not stored.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrCorrupt: a stored block failed verification on read; it has been dropped
	// from the bitmap so that it is fetched again.
	ErrCorrupt = errors.New("stored block is corrupt")
	// ErrQuota: accepting the task would exceed the store's quota even after
	// evicting every complete, unpinned task.
	ErrQuota = errors.New("store quota exceeded")
	// ErrNoSpace: the filesystem holding the store lacks free space for the task.
	ErrNoSpace = errors.New("not enough free disk space")
	// ErrInvalid: the caller passed an argument the store cannot accept.
	ErrInvalid = errors.New("invalid argument")
	// ErrIncomplete: the operation needs every block of the task.
	ErrIncomplete = errors.New("task incomplete")
	// ErrIndexLost: the store's index (Badger) is missing or reset while
	// its data files are still there; the store refuses to open rather than
	// lose them. Restore the index, or move the store aside to start empty.
	ErrIndexLost = errors.New("store index lost")
	// ErrWrongKey: the store is encrypted at rest with another key than the
	// one given (Options.Key), or its key check is unreadable; it refused
	// to open and changed nothing. Pass the key it was created with.
	ErrWrongKey = errors.New("wrong store key")
	// ErrKeyRequired: the store is encrypted at rest and was opened without
	// a key; it refused to open and changed nothing.
	ErrKeyRequired = errors.New("store key required")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store closed")
)
