// Package oci is dfly's one OCI registry resolver, shared by the
// snapshotter (lazy layers), the registry mirror and the supernode's
// preheat: credentials from a docker config.json, plain-HTTP rules,
// image references to manifests, platforms and layers, and a layer digest
// to the blob URL and Authorization a ranged GET of it needs.
package oci

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// BlobLocation is where a layer blob is fetched from.
type BlobLocation struct {
	URL    string
	Header http.Header // Authorization when the registry needs it
	Size   int64
}

// Resolver turns an image reference and a layer digest into a blob URL and the headers
// that authorize a ranged GET of it.
type Resolver struct {
	Keychain authn.Keychain
	// Insecure lists registries (host:port) reached over plain HTTP; localhost and
	// loopback addresses always are.
	Insecure  []string
	Transport http.RoundTripper
	// HostsDir is containerd's registry config_path (hosts.toml per
	// registry, e.g. /etc/containerd/certs.d): layers containerd downloads
	// itself (non-eStargz ones) follow it, so they go through the host's
	// dfly registry mirror when hosts.toml names it. Registries without a
	// directory there use the defaults. Empty: no hosts directory.
	HostsDir string
}

// DockerConfigKeychain reads credentials from a docker-style config.json ("auths" with
// "auth" = base64(user:password), or "username"/"password", or "identitytoken").
// An empty path uses go-containerregistry's default keychain ($DOCKER_CONFIG, ~/.docker).
func DockerConfigKeychain(path string) (authn.Keychain, error) {
	if path == "" {
		return authn.DefaultKeychain, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read registry credentials %s: %w", path, err)
	}
	var cfg struct {
		Auths map[string]struct {
			Auth          string `json:"auth"`
			Username      string `json:"username"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("parse registry credentials %s (want docker config.json): %w", path, err)
	}
	kc := configKeychain{}
	for host, a := range cfg.Auths {
		c := authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("registry credentials %s: auth for %s is not base64: %w", path, host, err)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("registry credentials %s: auth for %s is not user:password", path, host)
			}
			c.Username, c.Password = user, pass
		}
		host = strings.TrimPrefix(strings.TrimPrefix(host, "https://"), "http://")
		host, _, _ = strings.Cut(host, "/")
		kc[host] = c
	}
	return kc, nil
}

type configKeychain map[string]authn.AuthConfig

func (k configKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	host := r.RegistryStr()
	if host == name.DefaultRegistry {
		if c, ok := k["https://index.docker.io/v1/"]; ok {
			return authn.FromConfig(c), nil
		}
		if c, ok := k["index.docker.io"]; ok {
			return authn.FromConfig(c), nil
		}
	}
	if c, ok := k[host]; ok {
		return authn.FromConfig(c), nil
	}
	return authn.Anonymous, nil
}

// ParseRef parses an image reference, marking the configured insecure registries.
func (r *Resolver) ParseRef(ref string) (name.Reference, error) {
	var opts []name.Option
	if reg, err := name.ParseReference(ref); err == nil {
		for _, h := range r.Insecure {
			if reg.Context().RegistryStr() == h {
				opts = append(opts, name.Insecure)
			}
		}
	}
	parsed, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("parse image reference %q: %w", ref, err)
	}
	return parsed, nil
}

// Blob resolves the blob URL of layer dgst in ref's repository and an Authorization
// header valid for it (anonymous, basic or bearer token, as the registry demands), by
// sending one authenticated HEAD through go-containerregistry's transport.
func (r *Resolver) Blob(ctx context.Context, ref, dgst string) (BlobLocation, error) {
	if _, err := v1.NewHash(dgst); err != nil {
		// It becomes part of the blob URL: nothing but ALGO:HEX may.
		return BlobLocation{}, fmt.Errorf("layer digest %q: %w", dgst, err)
	}
	parsed, err := r.ParseRef(ref)
	if err != nil {
		return BlobLocation{}, err
	}
	repo := parsed.Context()
	kc := r.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	auth, err := kc.Resolve(repo)
	if err != nil {
		return BlobLocation{}, fmt.Errorf("credentials for %s: %w", repo.RegistryStr(), err)
	}
	base := r.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	capture := &headerCapture{next: base}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, capture, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return BlobLocation{}, fmt.Errorf("authenticate to registry %s for %s: %w", repo.RegistryStr(), repo.RepositoryStr(), err)
	}
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), dgst)
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
	if err != nil {
		return BlobLocation{}, err
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return BlobLocation{}, fmt.Errorf("HEAD blob %s: %w", u, err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return BlobLocation{}, fmt.Errorf("HEAD blob %s: registry answered %s", u, resp.Status)
	}
	h := http.Header{}
	if a := capture.authorization(u); a != "" {
		h.Set("Authorization", a)
	}
	return BlobLocation{URL: u, Header: h, Size: resp.ContentLength}, nil
}

// headerCapture records the Authorization header the auth transport put on requests.
type headerCapture struct {
	next http.RoundTripper
	mu   sync.Mutex
	auth map[string]string
}

func (c *headerCapture) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	if c.auth == nil {
		c.auth = map[string]string{}
	}
	c.auth[req.URL.String()] = req.Header.Get("Authorization")
	c.mu.Unlock()
	return c.next.RoundTrip(req)
}

func (c *headerCapture) authorization(u string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.auth[u]
}

// RemoteOptions are go-containerregistry's remote options with r's
// credentials and transport.
func (r *Resolver) RemoteOptions(ctx context.Context) []remote.Option {
	opts := []remote.Option{remote.WithContext(ctx)}
	if r.Keychain != nil {
		opts = append(opts, remote.WithAuthFromKeychain(r.Keychain))
	}
	if r.Transport != nil {
		opts = append(opts, remote.WithTransport(r.Transport))
	}
	return opts
}
