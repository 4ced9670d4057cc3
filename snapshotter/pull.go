package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// PullOptions say where and how to pull.
type PullOptions struct {
	Address     string // containerd socket
	Namespace   string // default "default"
	Snapshotter string // default "dfly"
	Platform    string // default the host's
}

// Pull pulls ref into containerd with unpack through the named snapshotter, passing the
// layer labels remote snapshotters need (containerd 1.6's ctr does not). Layers the
// snapshotter mounts lazily are not downloaded.
func Pull(ctx context.Context, ref string, r *Resolver, opt PullOptions) (containerd.Image, error) {
	if opt.Namespace == "" {
		opt.Namespace = namespaces.Default
	}
	if opt.Snapshotter == "" {
		opt.Snapshotter = "dfly"
	}
	parsed, err := r.ParseRef(ref)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(opt.Address); err != nil {
		return nil, fmt.Errorf("containerd socket %s (is containerd running? pass --address): %w", opt.Address, err)
	}
	client, err := containerd.New(opt.Address, containerd.WithDefaultNamespace(opt.Namespace))
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w", opt.Address, err)
	}
	defer func() { _ = client.Close() }()
	ctx = namespaces.WithNamespace(ctx, opt.Namespace)
	full := parsed.Name()
	opts := []containerd.RemoteOpt{
		containerd.WithResolver(containerdResolver(r)),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(opt.Snapshotter),
		containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(full)),
	}
	if opt.Platform != "" {
		opts = append(opts, containerd.WithPlatform(opt.Platform))
	}
	img, err := client.Pull(ctx, full, opts...)
	if err != nil {
		return nil, fmt.Errorf("pull %s with snapshotter %s: %w", full, opt.Snapshotter, err)
	}
	return img, nil
}

// containerdResolver is a containerd registry resolver with the same credentials and
// plain-HTTP rules as r.
func containerdResolver(r *Resolver) remotes.Resolver {
	kc := r.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	creds := func(host string) (string, string, error) {
		reg, err := name.NewRegistry(host)
		if err != nil {
			return "", "", nil
		}
		a, err := kc.Resolve(reg)
		if err != nil {
			return "", "", err
		}
		c, err := a.Authorization()
		if err != nil {
			return "", "", err
		}
		if c.IdentityToken != "" {
			return "", c.IdentityToken, nil
		}
		return c.Username, c.Password, nil
	}
	plain := func(host string) (bool, error) {
		if slices.Contains(r.Insecure, host) {
			return true, nil
		}
		return docker.MatchLocalhost(host)
	}
	defaults := docker.ConfigureDefaultRegistries(
		docker.WithPlainHTTP(plain),
		docker.WithAuthorizer(docker.NewDockerAuthorizer(docker.WithAuthCreds(creds))),
	)
	hosts := defaults
	if r.HostsDir != "" {
		hosts = func(host string) ([]docker.RegistryHost, error) {
			if _, err := os.Stat(filepath.Join(r.HostsDir, hostDirName(host))); err != nil {
				return defaults(host)
			}
			scheme := "https"
			if p, _ := plain(host); p {
				scheme = "http"
			}
			return config.ConfigureHosts(context.Background(), config.HostOptions{
				HostDir: config.HostDirFromRoot(r.HostsDir), Credentials: creds, DefaultScheme: scheme,
			})(host)
		}
	}
	return docker.NewResolver(docker.ResolverOptions{Hosts: hosts})
}

// hostDirName is the directory of a registry under a hosts directory
// (containerd's layout: host:port, with "_default" for the fallback).
func hostDirName(host string) string {
	if host == "registry-1.docker.io" {
		return "docker.io"
	}
	return host
}
