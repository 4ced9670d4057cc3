package snapshotter

import (
	"errors"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/dfly-p2p/dfly/internal/oci"
)

// Resolver is dfly's one OCI resolver (internal/oci), shared with the
// registry mirror and the supernode's preheat.
type Resolver = oci.Resolver

// BlobLocation is where a layer blob is fetched from.
type BlobLocation = oci.BlobLocation

// DockerConfigKeychain reads registry credentials from a docker-style
// config.json (see oci.DockerConfigKeychain).
func DockerConfigKeychain(path string) (authn.Keychain, error) { return oci.DockerConfigKeychain(path) }

// errNotRemote marks a layer that cannot be mounted remotely.
var errNotRemote = errors.New("layer cannot be mounted remotely")
