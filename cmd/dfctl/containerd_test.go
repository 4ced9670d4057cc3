package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

func readTOML(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := toml.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s does not parse: %v\n%s", path, err, b)
	}
	return m
}

func dig(m map[string]any, path ...string) any {
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[p]
	}
	return cur
}

func TestContainerdConfigure(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs.d")
	cfg := filepath.Join(dir, "config.toml")
	existing := "# my containerd\nversion = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n"
	if err := os.WriteFile(cfg, []byte(existing), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"containerd", "configure", "--registry", "docker.io", "--registry", "reg.local:5000",
		"--insecure-registry", "reg.local:5000", "--certs-dir", certs, "--config", cfg}

	// Dry run: a diff, nothing written.
	var out, errb bytes.Buffer
	if code := run(t.Context(), append(args, "--dry-run"), &out, &errb); code != 0 {
		t.Fatalf("dry run exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "+server = \"https://registry-1.docker.io\"") || !strings.Contains(out.String(), "dry run: 3 file(s)") {
		t.Fatalf("dry run output:\n%s", out.String())
	}
	if _, err := os.Stat(filepath.Join(certs, "docker.io", "hosts.toml")); !os.IsNotExist(err) {
		t.Fatal("dry run wrote hosts.toml")
	}

	out.Reset()
	if code := run(t.Context(), args, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	hub := readTOML(t, filepath.Join(certs, "docker.io", "hosts.toml"))
	if hub["server"] != "https://registry-1.docker.io" || dig(hub, "host", "http://127.0.0.1:65001", "capabilities") == nil {
		t.Fatalf("docker.io hosts.toml: %v", hub)
	}
	if loc := readTOML(t, filepath.Join(certs, "reg.local:5000", "hosts.toml")); loc["server"] != "http://reg.local:5000" {
		t.Fatalf("insecure registry's server: %v", loc["server"])
	}
	c := readTOML(t, cfg)
	if dig(c, "plugins", "io.containerd.grpc.v1.cri", "registry", "config_path") != certs ||
		dig(c, "proxy_plugins", "dfly", "address") != "/run/dfly/snapshotter.sock" ||
		dig(c, "plugins", "io.containerd.grpc.v1.cri", "containerd", "snapshotter") != "overlayfs" {
		t.Fatalf("config.toml: %v", c)
	}
	b, _ := os.ReadFile(cfg)
	if !strings.HasPrefix(string(b), existing) {
		t.Fatal("the operator's config was rewritten instead of extended")
	}
	if bak, err := os.ReadFile(cfg + ".dfly-backup"); err != nil || string(bak) != existing {
		t.Fatalf("backup: %q %v", bak, err)
	}

	// Idempotent: a second run changes nothing.
	out.Reset()
	if code := run(t.Context(), args, &out, &errb); code != 0 || !strings.Contains(out.String(), "nothing to change") {
		t.Fatalf("second run exit %d: %s %s", code, out.String(), errb.String())
	}
	after, _ := os.ReadFile(cfg)
	if !bytes.Equal(after, b) {
		t.Fatal("second run changed config.toml")
	}
}

func TestContainerdConfigureV3AndConflicts(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	// A new file for containerd 2.x.
	o := containerdOptions{Registries: []string{"ghcr.io"}, Mirror: "http://127.0.0.1:65001", CertsDir: filepath.Join(dir, "certs.d"),
		Config: cfg, Snapshotter: "/run/dfly/snapshotter.sock", ConfigFormat: 3}
	var out bytes.Buffer
	if err := runContainerdConfigure(o, false, &out); err != nil {
		t.Fatal(err)
	}
	c := readTOML(t, cfg)
	if c["version"] != int64(3) || dig(c, "plugins", "io.containerd.cri.v1.images", "registry", "config_path") != o.CertsDir ||
		dig(c, "proxy_plugins", "dfly", "exports", "enable_remote_snapshot_annotations") != "true" {
		t.Fatalf("v3 config: %v", c)
	}

	// The operator's own values are never overwritten: dfctl says what to change.
	for name, body := range map[string]string{
		"other config_path": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/elsewhere\"\n",
		"table without key": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  mirrors = {}\n",
	} {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			o.ConfigFormat = 0
			err := runContainerdConfigure(o, false, &out)
			if err == nil || !strings.Contains(err.Error(), "config_path") {
				t.Fatalf("err %v, want one naming config_path", err)
			}
			if b, _ := os.ReadFile(cfg); string(b) != body {
				t.Fatal("config.toml changed despite the conflict")
			}
		})
	}
	for _, bad := range []containerdOptions{
		{CertsDir: dir},
		{Registries: []string{"https://x"}, CertsDir: dir},
	} {
		if err := runContainerdConfigure(bad, true, &out); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
	if err := os.WriteFile(cfg, []byte("not = [toml"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := runContainerdConfigure(o, true, &out); err == nil || !strings.Contains(err.Error(), "not valid TOML") {
		t.Fatalf("broken config.toml: %v", err)
	}
}

func TestDiffLines(t *testing.T) {
	ops := diffLines([]string{"a", "b", "c"}, []string{"a", "x", "c", "d"})
	var got []string
	for _, op := range ops {
		got = append(got, string(op.kind)+op.text)
	}
	if strings.Join(got, ",") != " a,-b,+x, c,+d" {
		t.Fatalf("diff %v", got)
	}
}
