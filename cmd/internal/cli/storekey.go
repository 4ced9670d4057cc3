package cli

import (
	"os"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/blockstore"
)

// StoreKeyFileUsage is the help text of --store-key-file.
const StoreKeyFileUsage = "encrypt the block store at rest (AES-256-GCM) with the key in `FILE` (mode 0600: 32 raw bytes, 64 hex digits or base64; " +
	"or set $" + blockstore.KeyEnv + "); a store encrypted once needs its key on every start"

// AddStoreKeyFlag registers --store-key-file on fs; after parsing, pass
// the file to LoadStoreKey.
func AddStoreKeyFlag(fs *pflag.FlagSet, file *string) {
	fs.StringVar(file, "store-key-file", "", StoreKeyFileUsage)
}

// LoadStoreKey returns the store key in file or, with file empty, in the
// environment variable DFLY_STORE_KEY; nil when neither is set.
func LoadStoreKey(file string) ([]byte, error) {
	return blockstore.LoadKey(file, os.Getenv(blockstore.KeyEnv))
}
