package mirror

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ContainerdOptions configures StartContainerd.
type ContainerdOptions struct {
	// Version is "1.6" (Debian's containerd, /usr/bin) or "2" (containerd 2.x built by
	// .ci/install-go-tools into ToolsDir()/containerd2); "" = "1.6".
	Version string
	// ConfigPath is the registry hosts directory (certs.d, one <host:port>/hosts.toml
	// per registry) the daemon uses: for the CRI plugin and, on 2.x, the transfer
	// service. The client helpers pass it as --hosts-dir too. "" = none.
	ConfigPath string
	// NetNS runs the daemon, and the clients through the helpers, in that network
	// namespace (name under /run/netns) with nsenter --net; "" = this one.
	NetNS string
	// CRI enables the CRI plugin (for crictl); off by default.
	CRI bool
}

// Containerd is a private containerd daemon: own root, state and sockets in a
// temporary directory; stopped at cleanup.
type Containerd struct {
	Version   string // "1.6" or "2"
	Socket    string // gRPC socket
	Dir       string // root of everything it writes
	Namespace string // containerd namespace the ctr and nerdctl helpers use
	opts      ContainerdOptions
	bin       string // directory of containerd, ctr and the shim
	env       []string
	proc      *proc
}

// ContainerdBinDir returns the directory holding containerd, ctr and
// containerd-shim-runc-v2 of a version ("1.6" or "2"); the error says how to get them.
func ContainerdBinDir(version string) (string, error) {
	var dir, hint string
	switch version {
	case "", "1.6":
		dir, hint = "/usr/bin", "install the Debian packages containerd and runc (.ci/install-deps)"
	case "2":
		dir, hint = filepath.Join(ToolsDir(), "containerd2"), "build containerd 2.x with .ci/install-go-tools"
	default:
		return "", fmt.Errorf("containerd version %q: want 1.6 or 2", version)
	}
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("containerd %s: %s missing in %s: %s", version, b, dir, hint)
		}
	}
	return dir, nil
}

// StartContainerd starts a containerd for t, skipping t only when the binaries (or
// runc) are absent or t does not run as root.
func StartContainerd(t testing.TB, opts ContainerdOptions) *Containerd {
	t.Helper()
	RequireRoot(t)
	if opts.Version == "" {
		opts.Version = "1.6"
	}
	bin, err := ContainerdBinDir(opts.Version)
	if err != nil {
		t.Skip(err.Error())
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skipf("containerd needs runc (Debian package runc): %v", err)
	}
	if opts.NetNS != "" {
		if _, err := exec.LookPath("nsenter"); err != nil {
			t.Skipf("containerd in a network namespace needs nsenter (util-linux): %v", err)
		}
	}
	dir := shortTempDir(t, "dfmr-ctrd-")
	c := &Containerd{Version: opts.Version, Socket: filepath.Join(dir, "containerd.sock"), Dir: dir,
		Namespace: "dfly-mirror", opts: opts, bin: bin}
	// The daemon finds its shim (and the shim runc) in PATH: this version's first.
	c.env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(c.config()), 0o644); err != nil {
		t.Fatalf("write containerd config: %v", err)
	}
	p, err := startProc(filepath.Join(dir, "containerd.log"), c.env,
		inNetNS(opts.NetNS, filepath.Join(bin, "containerd"), "--config", cfgPath, "--log-level", "info")...)
	if err != nil {
		t.Fatal(err)
	}
	c.proc = p
	t.Cleanup(c.Stop)
	ctx := context.Background()
	if err := waitUntil(ctx, "containerd "+opts.Version, 60*time.Second, p, func() error {
		_, err := c.Ctr(ctx, "version")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if opts.CRI {
		// ctr version answers before the CRI plugin has initialised.
		if err := waitUntil(ctx, "containerd "+opts.Version+" CRI plugin", 30*time.Second, p, func() error {
			out, err := c.Ctr(ctx, "plugins", "ls")
			if err != nil {
				return err
			}
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) >= 4 && f[0] == "io.containerd.grpc.v1" && f[1] == "cri" {
					if f[len(f)-1] == "ok" {
						return nil
					}
					return fmt.Errorf("CRI plugin status %s (see %s)", f[len(f)-1], p.log)
				}
			}
			return fmt.Errorf("no CRI plugin in ctr plugins ls (see %s)", p.log)
		}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// config is the daemon's config: everything in c.Dir, plugins that need hardware,
// other filesystems, or host-wide sockets off.
func (c *Containerd) config() string {
	root, state := filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state")
	var b strings.Builder
	if c.Version == "1.6" {
		disabled := []string{"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
			"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"}
		if !c.opts.CRI {
			disabled = append(disabled, "io.containerd.grpc.v1.cri")
		}
		fmt.Fprintf(&b, "version = 2\nroot = %q\nstate = %q\ndisabled_plugins = %s\n", root, state, tomlList(disabled))
	} else {
		disabled := []string{"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
			"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
			"io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs",
			"io.containerd.nri.v1.nri", // its socket is host-wide (/var/run/nri/nri.sock)
			"io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"}
		if !c.opts.CRI {
			disabled = append(disabled, "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime",
				"io.containerd.cri.v1.images", "io.containerd.podsandbox.controller.v1.podsandbox")
		}
		fmt.Fprintf(&b, "version = 3\nroot = %q\nstate = %q\ndisabled_plugins = %s\n", root, state, tomlList(disabled))
	}
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n[ttrpc]\n  address = %q\n", c.Socket, c.Socket+".ttrpc")
	if c.Version == "1.6" {
		if c.opts.CRI {
			fmt.Fprintf(&b, "[plugins.\"io.containerd.grpc.v1.cri\"]\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n")
			fmt.Fprintf(&b, "  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    conf_dir = %q\n    bin_dir = %q\n",
				filepath.Join(c.Dir, "cni-conf"), filepath.Join(c.Dir, "cni-bin"))
			if c.opts.ConfigPath != "" {
				fmt.Fprintf(&b, "  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = %q\n", c.opts.ConfigPath)
			}
		}
		return b.String()
	}
	if c.opts.ConfigPath != "" {
		fmt.Fprintf(&b, "[plugins.\"io.containerd.transfer.v1.local\"]\n  config_path = %q\n", c.opts.ConfigPath)
	}
	if c.opts.CRI {
		fmt.Fprintf(&b, "[plugins.\"io.containerd.grpc.v1.cri\"]\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n")
		fmt.Fprintf(&b, "[plugins.\"io.containerd.cri.v1.runtime\".cni]\n  conf_dir = %q\n  bin_dir = %q\n",
			filepath.Join(c.Dir, "cni-conf"), filepath.Join(c.Dir, "cni-bin"))
		if c.opts.ConfigPath != "" {
			fmt.Fprintf(&b, "[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = %q\n", c.opts.ConfigPath)
		}
	}
	return b.String()
}

func tomlList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// Log returns the daemon's log.
func (c *Containerd) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "containerd.log"))
	return string(b)
}

// Stop kills the containers left in the helpers' namespace and stops the daemon.
// Safe to call more than once.
func (c *Containerd) Stop() {
	if c.proc == nil || c.proc.exited() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ns := range []string{c.Namespace, "k8s.io"} {
		out, _ := c.ctrNS(ctx, ns, "task", "ls", "-q")
		for _, id := range strings.Fields(out) {
			_, _ = c.ctrNS(ctx, ns, "task", "kill", "-s", "SIGKILL", id)
			_ = waitUntil(ctx, "task "+id+" killed", 5*time.Second, nil, func() error {
				_, err := c.ctrNS(ctx, ns, "task", "rm", "-f", id)
				return err
			})
		}
		out, _ = c.ctrNS(ctx, ns, "container", "ls", "-q")
		for _, id := range strings.Fields(out) {
			_, _ = c.ctrNS(ctx, ns, "container", "rm", id)
		}
	}
	c.proc.stop(syscall.SIGTERM, 20*time.Second)
	// containerd leaves its overlay mounts of removed containers unmounted, but a
	// killed daemon may not: nothing of ours may stay mounted.
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		lines := strings.Split(string(b), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			if f := strings.Fields(lines[i]); len(f) > 4 && strings.HasPrefix(f[4], c.Dir+"/") {
				_ = syscall.Unmount(f[4], syscall.MNT_DETACH)
			}
		}
	}
}

// Ctr runs this version's ctr against the daemon in the helpers' namespace (inside
// the daemon's network namespace) and returns its stdout.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	return c.ctrNS(ctx, c.Namespace, args...)
}

func (c *Containerd) ctrNS(ctx context.Context, ns string, args ...string) (string, error) {
	argv := append([]string{filepath.Join(c.bin, "ctr"), "--address", c.Socket, "--namespace", ns}, args...)
	return runCmd(ctx, c.env, inNetNS(c.opts.NetNS, argv...)...)
}
