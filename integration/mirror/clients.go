package mirror

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// WriteHostsToml writes dir/<registry>/hosts.toml (containerd's registry hosts
// config, certs.d layout): registry (host:port, plain HTTP) as the server, and each
// mirror (host:port or a URL; plain HTTP without a scheme) as a host with the pull and
// resolve capabilities, tried in order before the server. It returns the file's path.
func WriteHostsToml(dir, registry string, mirrors ...string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "server = %q\nskip_verify = true\n", withScheme(registry))
	for _, m := range mirrors {
		fmt.Fprintf(&b, "\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n", withScheme(m))
	}
	d := filepath.Join(dir, registry)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("write hosts.toml for %s: %w", registry, err)
	}
	p := filepath.Join(d, "hosts.toml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("write hosts.toml for %s: %w", registry, err)
	}
	return p, nil
}

func withScheme(hostOrURL string) string {
	if strings.Contains(hostOrURL, "://") {
		return hostOrURL
	}
	return "http://" + hostOrURL
}

// PullOptions are a client pull's options.
type PullOptions struct {
	// HostsDir is the certs.d directory passed as --hosts-dir; "" = the daemon's
	// ContainerdOptions.ConfigPath.
	HostsDir string
	// Creds is "user:password" for the registry, "" = none.
	Creds string
	// CredsAlsoFor (nerdctl only) are more hosts the docker config holds Creds for.
	// nerdctl sends a registry's credentials only to that registry's own host, never
	// to its hosts.toml mirror hosts; with an auth registry, a mirror that passes
	// the client's Authorization on gets 401 from it and nerdctl falls back to the
	// server, unless the mirror host is listed here (as nerdctl login MIRROR would).
	CredsAlsoFor []string
	// Local makes containerd 2.x's ctr fetch in the client (--local) instead of
	// through the daemon's transfer service. 1.6's ctr always fetches in the client.
	Local bool
}

func (c *Containerd) hostsDir(o PullOptions) string {
	if o.HostsDir != "" {
		return o.HostsDir
	}
	return c.opts.ConfigPath
}

// CtrPull runs ctr images pull of ref (with --hosts-dir and --user as o says) and
// returns its output.
func (c *Containerd) CtrPull(ctx context.Context, ref string, o PullOptions) (string, error) {
	args := []string{"images", "pull"}
	if d := c.hostsDir(o); d != "" {
		args = append(args, "--hosts-dir", d)
	}
	if o.Creds != "" {
		args = append(args, "--user", o.Creds)
	}
	if o.Local && c.Version != "1.6" {
		args = append(args, "--local")
	}
	out, err := c.Ctr(ctx, append(args, ref)...)
	if err != nil {
		return out, fmt.Errorf("containerd %s: pull %s with ctr: %w", c.Version, ref, err)
	}
	return out, nil
}

// CtrRun runs a pulled image with ctr run --rm (a fresh container id, no network)
// and returns its stdout; with no cmd it runs /bin/sh -c 'echo ok'.
func (c *Containerd) CtrRun(ctx context.Context, ref string, cmd ...string) (string, error) {
	if len(cmd) == 0 {
		cmd = []string{"/bin/sh", "-c", "echo ok"}
	}
	out, err := c.Ctr(ctx, append([]string{"run", "--rm", ref, randomID("ctr")}, cmd...)...)
	if err != nil {
		return out, fmt.Errorf("containerd %s: run %s with ctr: %w", c.Version, ref, err)
	}
	return out, nil
}

// RemoveImage removes ref from the helpers' namespace (its content is then garbage
// collected), so that the next pull fetches everything again.
func (c *Containerd) RemoveImage(ctx context.Context, ref string) error {
	if _, err := c.Ctr(ctx, "images", "rm", "--sync", ref); err != nil {
		return fmt.Errorf("containerd %s: remove image %s: %w", c.Version, ref, err)
	}
	return nil
}

func randomID(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// Crictl runs crictl against the daemon's CRI plugin (StartContainerd with CRI) and
// returns its stdout; the error says how to get crictl when it is missing.
func (c *Containerd) Crictl(ctx context.Context, args ...string) (string, error) {
	bin, err := findTool("crictl")
	if err != nil {
		return "", err
	}
	cfg := filepath.Join(c.Dir, "crictl.yaml")
	ep := "unix://" + c.Socket
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("runtime-endpoint: %s\nimage-endpoint: %s\ntimeout: 300\n", ep, ep)), 0o644); err != nil {
		return "", fmt.Errorf("write crictl config: %w", err)
	}
	argv := append([]string{bin, "--config", cfg, "--runtime-endpoint", ep, "--image-endpoint", ep}, args...)
	return runCmd(ctx, c.env, inNetNS(c.opts.NetNS, argv...)...)
}

// CrictlPull pulls ref through the CRI plugin (which reads the daemon's registry
// config_path) with crictl pull --creds.
func (c *Containerd) CrictlPull(ctx context.Context, ref, creds string) (string, error) {
	args := []string{"pull"}
	if creds != "" {
		args = append(args, "--creds", creds)
	}
	out, err := c.Crictl(ctx, append(args, ref)...)
	if err != nil {
		return out, fmt.Errorf("containerd %s: pull %s with crictl: %w", c.Version, ref, err)
	}
	return out, nil
}

// Nerdctl runs nerdctl against the daemon, in the helpers' namespace, with its data
// root, config (NERDCTL_TOML), docker config (DOCKER_CONFIG) and CNI paths under
// c.Dir and --hosts-dir hostsDir ("" = the daemon's ConfigPath).
func (c *Containerd) Nerdctl(ctx context.Context, hostsDir string, args ...string) (string, error) {
	bin, err := findTool("nerdctl")
	if err != nil {
		return "", err
	}
	if hostsDir == "" {
		hostsDir = c.opts.ConfigPath
	}
	toml := filepath.Join(c.Dir, "nerdctl.toml")
	if err := os.WriteFile(toml, nil, 0o644); err != nil {
		return "", fmt.Errorf("write nerdctl config: %w", err)
	}
	argv := []string{bin, "--address", c.Socket, "--namespace", c.Namespace, "--data-root", filepath.Join(c.Dir, "nerdctl"),
		"--cni-path", filepath.Join(c.Dir, "cni-bin"), "--cni-netconfpath", filepath.Join(c.Dir, "cni-conf"),
		"--cgroup-manager", "cgroupfs", "--snapshotter", "overlayfs"}
	if hostsDir != "" {
		argv = append(argv, "--hosts-dir", hostsDir)
	}
	env := append(append([]string(nil), c.env...), "NERDCTL_TOML="+toml, "DOCKER_CONFIG="+filepath.Join(c.Dir, "docker"))
	return runCmd(ctx, env, inNetNS(c.opts.NetNS, append(argv, args...)...)...)
}

// NerdctlPull pulls ref with nerdctl pull; o.Creds go into the docker config nerdctl
// reads (as nerdctl login would write them).
func (c *Containerd) NerdctlPull(ctx context.Context, ref string, o PullOptions) (string, error) {
	if err := c.writeDockerConfig(ref, o.Creds, o.CredsAlsoFor); err != nil {
		return "", err
	}
	out, err := c.Nerdctl(ctx, o.HostsDir, "pull", ref)
	if err != nil {
		return out, fmt.Errorf("containerd %s: pull %s with nerdctl: %w", c.Version, ref, err)
	}
	return out, nil
}

// NerdctlRun runs a pulled image with nerdctl run --rm --net none and returns its
// stdout; with no cmd it runs /bin/sh -c 'echo ok'.
func (c *Containerd) NerdctlRun(ctx context.Context, ref string, cmd ...string) (string, error) {
	if len(cmd) == 0 {
		cmd = []string{"/bin/sh", "-c", "echo ok"}
	}
	out, err := c.Nerdctl(ctx, "", append([]string{"run", "--rm", "--net", "none", "--pull", "never", ref}, cmd...)...)
	if err != nil {
		return out, fmt.Errorf("containerd %s: run %s with nerdctl: %w", c.Version, ref, err)
	}
	return out, nil
}

// writeDockerConfig writes DOCKER_CONFIG/config.json with creds for ref's registry
// and the more hosts (or none).
func (c *Containerd) writeDockerConfig(ref, creds string, more []string) error {
	auths := map[string]any{}
	if creds != "" {
		host, _, _ := strings.Cut(ref, "/")
		for _, h := range append([]string{host}, more...) {
			auths[h] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(creds))}
		}
	}
	b, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		return err
	}
	d := filepath.Join(c.Dir, "docker")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return fmt.Errorf("write docker config for nerdctl: %w", err)
	}
	if err := os.WriteFile(filepath.Join(d, "config.json"), b, 0o600); err != nil {
		return fmt.Errorf("write docker config for nerdctl: %w", err)
	}
	return nil
}
