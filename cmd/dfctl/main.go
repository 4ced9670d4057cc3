// Command dfctl is dfly's control tool. Its image commands convert images to eStargz
// and pull them lazily into containerd through the dfly snapshotter.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/snapshotter"
)

const usage = `usage:
  dfctl image convert SRC DST [flags]   convert image SRC (in a registry) to eStargz and push it as DST
  dfctl image pull REF [flags]          pull REF into containerd with unpack through the dfly snapshotter,
                                        passing the layer labels lazy pulling needs (containerd 1.6's
                                        "ctr image pull" does not); then "ctr run --snapshotter dfly ..."
  dfctl containerd configure [flags]    make containerd pull through this host's dfly registry mirror:
                                        writes CERTS_DIR/REGISTRY/hosts.toml for every --registry and
                                        adds config_path and the snapshotter's proxy plugin to
                                        config.toml when missing (prints the diff, keeps a backup)
  dfctl certs init --dir DIR --hosts H1,H2,... [flags]
                                        make a development CA (DIR/ca.pem, ca-key.pem) and per-host
                                        certificates (DIR/H.pem, H-key.pem) for dfly's TLS (--tls-*
                                        flags of supernode, dfdaemon, dfget, dfmount, dfly-snapshotter);
                                        an existing CA is reused, never overwritten without --force
  dfctl preheat --url URL | --image REF [selector] [--wait]
                                        preheat content into the supernode's seed (and onto hosts);
                                        also: dfctl preheat list | status ID | cancel ID
                                        (see "dfctl preheat --help")
  dfctl status [--supernode URL] [--window 5m] [--json]
                                        is P2P working? This host (via its dfdaemon's --sock) or, with
                                        --supernode, the whole swarm, in plain words; exit 1 when
                                        degraded or not working (see "dfctl status --help")

Exit codes: 0 ok, 1 failure, 2 bad flags or arguments.

flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "preheat" {
		return runPreheat(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "status" {
		return runStatus(ctx, args[1:], stdout, stderr)
	}
	fset := pflag.NewFlagSet("dfctl", pflag.ContinueOnError)
	fset.SetOutput(stderr)
	var (
		prioritized                                            []string
		insecure                                               []string
		dockerConfig, address, namespace, sn, platform, logLvl string
		chunkSize, level                                       int
		registries                                             []string
		mirrorURL, certsDir, ctrConfig, snapAddr               string
		configVersion                                          int
		dryRun                                                 bool
		certs                                                  certsOptions
	)
	fset.StringSliceVar(&prioritized, "prioritize", nil, "convert: absolute path of a file to put before the prefetch landmark (repeatable)")
	fset.IntVar(&chunkSize, "chunk-size", 0, "convert: eStargz chunk size in bytes (default 4 MiB)")
	fset.IntVar(&level, "compression-level", 0, "convert: gzip level 1-9 (default 6)")
	fset.StringSliceVar(&insecure, "insecure-registry", nil, "registry host:port reached over plain HTTP (localhost always is); repeatable")
	fset.StringVar(&dockerConfig, "docker-config", "", "docker-style config.json with registry credentials (default: $DOCKER_CONFIG or ~/.docker)")
	fset.StringVar(&address, "address", "/run/containerd/containerd.sock", "pull: containerd socket")
	fset.StringVarP(&namespace, "namespace", "n", "default", "pull: containerd namespace")
	fset.StringVar(&sn, "snapshotter", "dfly", "pull: snapshotter to unpack into")
	fset.StringVar(&platform, "platform", "", "pull: platform (default the host's)")
	fset.StringVar(&logLvl, "log-level", "warn", "debug, info, warn or error")
	fset.StringSliceVar(&registries, "registry", []string{"docker.io"}, "containerd configure: registry HOST[:PORT] to pull through the mirror (repeatable)")
	fset.StringVar(&mirrorURL, "mirror", "http://127.0.0.1:65001", "containerd configure: the dfly mirror's URL (dfdaemon --mirror-listen)")
	fset.StringVar(&certsDir, "certs-dir", "/etc/containerd/certs.d", "containerd's registry config_path (hosts.toml per registry): written by containerd configure, followed by image pull")
	fset.StringVar(&ctrConfig, "config", "/etc/containerd/config.toml", "containerd configure: containerd's config.toml (\"\" leaves it alone)")
	fset.StringVar(&snapAddr, "snapshotter-address", "/run/dfly/snapshotter.sock", "containerd configure: dfly-snapshotter's socket for the proxy plugin (\"\" for none)")
	fset.IntVar(&configVersion, "config-version", 0, "containerd configure: config.toml version for a new file, 2 (containerd 1.6/1.7) or 3 (2.x); default: detected")
	fset.BoolVar(&dryRun, "dry-run", false, "containerd configure: print the diff, change nothing")
	fset.StringVar(&certs.Dir, "dir", "", "certs init: directory of the CA and host certificates")
	fset.StringSliceVar(&certs.Hosts, "hosts", nil, "certs init: host names or IP addresses, one certificate each (its SAN; e.g. the address peers dial)")
	fset.StringSliceVar(&certs.IPs, "ip", nil, "certs init: IP address added as a SAN to every certificate made (repeatable)")
	fset.BoolVar(&certs.Localhost, "localhost", false, "certs init: add localhost, 127.0.0.1 and ::1 to every certificate")
	fset.IntVar(&certs.Days, "days", 365, "certs init: validity of host certificates in days")
	fset.BoolVar(&certs.Renew, "renew", false, "certs init: issue new host certificates (same CA) even where valid ones exist")
	fset.BoolVar(&certs.Force, "force", false, "certs init: make a new CA, overwriting the old one, and new host certificates")
	fset.Usage = func() { _, _ = fmt.Fprint(stderr, usage+fset.FlagUsages()) }
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		_, _ = fmt.Fprintf(stderr, "dfctl: %v (see dfctl --help)\n", err)
		return 2
	}
	a := fset.Args()
	if len(a) == 2 && a[0] == "containerd" && a[1] == "configure" {
		o := containerdOptions{Registries: registries, Insecure: insecure, Mirror: mirrorURL, CertsDir: certsDir,
			Config: ctrConfig, Snapshotter: snapAddr, ConfigFormat: configVersion}
		if err := runContainerdConfigure(o, dryRun, stdout); err != nil {
			_, _ = fmt.Fprintln(stderr, "dfctl containerd configure:", err)
			return 1
		}
		return 0
	}
	if len(a) == 2 && a[0] == "certs" && a[1] == "init" {
		if err := certs.validate(); err != nil {
			_, _ = fmt.Fprintln(stderr, "dfctl certs init:", err)
			return 2
		}
		if err := runCertsInit(certs, stdout); err != nil {
			_, _ = fmt.Fprintln(stderr, "dfctl certs init:", err)
			return 1
		}
		return 0
	}
	if len(a) < 2 || a[0] != "image" {
		fset.Usage()
		return 2
	}
	log, err := cli.NewLogger(logLvl)
	if err != nil {
		_, _ = fmt.Fprintln(stderr, err)
		return 2
	}
	kc, err := snapshotter.DockerConfigKeychain(dockerConfig)
	if err != nil {
		_, _ = fmt.Fprintln(stderr, "dfctl:", err)
		return 1
	}
	r := &snapshotter.Resolver{Keychain: kc, Insecure: insecure, HostsDir: certsDir}
	switch {
	case a[1] == "convert" && len(a) == 4:
		d, err := snapshotter.Convert(ctx, a[2], a[3], r, snapshotter.ConvertOptions{
			Prioritized: prioritized, ChunkSize: chunkSize, CompressionLevel: level, Logger: log})
		if err != nil {
			_, _ = fmt.Fprintln(stderr, "dfctl image convert:", err)
			return 1
		}
		_, _ = fmt.Fprintf(stdout, "%s@%s\n", a[3], d)
		return 0
	case a[1] == "pull" && len(a) == 3:
		img, err := snapshotter.Pull(ctx, a[2], r, snapshotter.PullOptions{
			Address: address, Namespace: namespace, Snapshotter: sn, Platform: platform})
		if err != nil {
			_, _ = fmt.Fprintln(stderr, "dfctl image pull:", err)
			return 1
		}
		_, _ = fmt.Fprintf(stdout, "%s %s\n", img.Name(), img.Target().Digest)
		return 0
	}
	fset.Usage()
	return 2
}
