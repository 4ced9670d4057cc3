package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// containerdOptions are the inputs of "dfctl containerd configure".
type containerdOptions struct {
	Registries   []string // registries whose pulls go through the mirror
	Insecure     []string // of those, reached over plain HTTP
	Mirror       string   // the mirror's URL
	CertsDir     string   // containerd's config_path (hosts.toml per registry)
	Config       string   // containerd's config.toml ("" = leave it alone)
	Snapshotter  string   // the snapshotter's socket ("" = no proxy plugin)
	ConfigFormat int      // config.toml version: 2 (containerd 1.6/1.7) or 3 (2.x); 0 = detect
}

// fileChange is one file dfctl writes.
type fileChange struct {
	Path     string
	Old, New []byte
	Existed  bool
}

// planContainerd computes the files "containerd configure" writes; files
// already as wanted are not in the plan.
func planContainerd(o containerdOptions) ([]fileChange, error) {
	if len(o.Registries) == 0 {
		return nil, errors.New("no registry: pass --registry HOST[:PORT] (repeatable), e.g. --registry docker.io")
	}
	var plan []fileChange
	for _, r := range o.Registries {
		if strings.ContainsAny(r, "/ ") || r == "" {
			return nil, fmt.Errorf("--registry %q: want HOST[:PORT] (no scheme, no path)", r)
		}
		path := filepath.Join(o.CertsDir, r, "hosts.toml")
		c, err := change(path, hostsToml(r, o.Mirror, contains(o.Insecure, r)))
		if err != nil {
			return nil, err
		}
		if c != nil {
			plan = append(plan, *c)
		}
	}
	if o.Config != "" {
		c, err := planConfig(o)
		if err != nil {
			return nil, err
		}
		if c != nil {
			plan = append(plan, *c)
		}
	}
	return plan, nil
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// change returns the change that makes path hold want, or nil if it does.
func change(path string, want []byte) (*fileChange, error) {
	old, err := os.ReadFile(path)
	switch {
	case err == nil && bytes.Equal(old, want):
		return nil, nil
	case err == nil:
		return &fileChange{Path: path, Old: old, New: want, Existed: true}, nil
	case errors.Is(err, os.ErrNotExist):
		return &fileChange{Path: path, New: want}, nil
	}
	return nil, fmt.Errorf("read %s: %w", path, err)
}

// hostsToml is the hosts.toml of a registry: the mirror first, then the
// registry itself (containerd moves on when the mirror fails).
func hostsToml(registry, mirror string, insecure bool) []byte {
	server := "https://" + registry
	if registry == "docker.io" {
		server = "https://registry-1.docker.io"
	}
	if insecure {
		server = "http://" + registry
	}
	return fmt.Appendf(nil, `# Written by "dfctl containerd configure": pulls from %s go through this
# host's dfly registry mirror (peer to peer) first, and straight to the
# registry when the mirror does not answer.
server = %q

[host.%q]
  capabilities = ["pull", "resolve"]
`, registry, server, mirror)
}

// setting is one key dfly needs in containerd's config.toml.
type setting struct {
	table []string // table path, e.g. plugins, io.containerd.grpc.v1.cri, registry
	key   string
	value string
}

func (s setting) header() string {
	parts := make([]string, len(s.table))
	for i, p := range s.table {
		if regexp.MustCompile(`^[A-Za-z0-9_-]+$`).MatchString(p) {
			parts[i] = p
		} else {
			parts[i] = fmt.Sprintf("%q", p)
		}
	}
	return "[" + strings.Join(parts, ".") + "]"
}

func (s setting) line() string { return fmt.Sprintf("  %s = %q", s.key, s.value) }

// settings are what config.toml of the given format needs.
func settings(o containerdOptions, format int) []setting {
	cri := []string{"plugins", "io.containerd.grpc.v1.cri", "registry"}
	if format >= 3 {
		cri = []string{"plugins", "io.containerd.cri.v1.images", "registry"}
	}
	out := []setting{{table: cri, key: "config_path", value: o.CertsDir}}
	if o.Snapshotter != "" {
		pp := []string{"proxy_plugins", "dfly"}
		out = append(out, setting{pp, "type", "snapshot"}, setting{pp, "address", o.Snapshotter})
		if format >= 3 {
			out = append(out, setting{append(pp, "exports"), "enable_remote_snapshot_annotations", "true"})
		}
	}
	return out
}

// planConfig adds what is missing to config.toml without touching the
// rest: a key whose table is absent goes into a marked block appended at
// the end; a key with another value, or missing from a table the file
// already defines, is left to the operator with the exact line to add
// (rewriting somebody's TOML loses its comments and layout).
func planConfig(o containerdOptions) (*fileChange, error) {
	old, err := os.ReadFile(o.Config)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", o.Config, err)
	}
	existed := err == nil
	doc := map[string]any{}
	if err := toml.Unmarshal(old, &doc); err != nil {
		return nil, fmt.Errorf("%s is not valid TOML (fix it first): %w", o.Config, err)
	}
	format := o.ConfigFormat
	if v, ok := doc["version"].(int64); ok {
		format = int(v)
	}
	if format == 0 {
		format = detectConfigFormat()
	}
	if format != 2 && format != 3 {
		return nil, fmt.Errorf("%s: config version %d is not supported; dfly needs version = 2 (containerd 1.6/1.7) or 3 (2.x)", o.Config, format)
	}
	var manual []string
	blocks := map[string][]string{}
	var order []string
	for _, s := range settings(o, format) {
		tbl, defined := lookupTable(doc, s.table)
		if defined {
			if v, ok := tbl[s.key]; ok {
				if fmt.Sprint(v) != s.value {
					manual = append(manual, fmt.Sprintf("%s: set %s = %q under %s (it is %q)", o.Config, s.key, s.value, s.header(), fmt.Sprint(v)))
				}
				continue
			}
			manual = append(manual, fmt.Sprintf("%s: add %s = %q under %s", o.Config, s.key, s.value, s.header()))
			continue
		}
		h := s.header()
		if _, ok := blocks[h]; !ok {
			order = append(order, h)
		}
		blocks[h] = append(blocks[h], s.line())
	}
	if len(manual) > 0 {
		return nil, fmt.Errorf("containerd's config needs changes dfctl does not make in tables you already define:\n  %s", strings.Join(manual, "\n  "))
	}
	if len(order) == 0 {
		return nil, nil
	}
	var b bytes.Buffer
	b.Write(old)
	if len(old) == 0 {
		fmt.Fprintf(&b, "version = %d\n", format)
	}
	if len(old) > 0 && !bytes.HasSuffix(old, []byte("\n")) {
		b.WriteByte('\n')
	}
	b.WriteString("\n# Added by \"dfctl containerd configure\" (dfly registry mirror and snapshotter).\n")
	for _, h := range order {
		b.WriteString(h + "\n" + strings.Join(blocks[h], "\n") + "\n")
	}
	check := map[string]any{}
	if err := toml.Unmarshal(b.Bytes(), &check); err != nil {
		return nil, fmt.Errorf("the changed %s would not parse (please report this): %w", o.Config, err)
	}
	return &fileChange{Path: o.Config, Old: old, New: b.Bytes(), Existed: existed}, nil
}

// lookupTable returns the table at path and whether the document defines it.
func lookupTable(doc map[string]any, path []string) (map[string]any, bool) {
	cur := doc
	for _, p := range path {
		next, ok := cur[p].(map[string]any)
		if !ok {
			return nil, false
		}
		cur = next
	}
	return cur, true
}

// detectConfigFormat asks the installed containerd for its major version.
func detectConfigFormat() int {
	out, err := exec.Command("containerd", "--version").Output()
	if err != nil {
		return 2
	}
	if m := regexp.MustCompile(`\sv?(\d+)\.\d+`).FindSubmatch(out); m != nil {
		if major, _ := strconv.Atoi(string(m[1])); major >= 2 {
			return 3
		}
	}
	return 2
}

// applyChanges writes the plan: each file atomically, an existing one
// kept first as FILE.dfly-backup (the first time) or
// FILE.dfly-backup.TIMESTAMP.
func applyChanges(plan []fileChange, now time.Time) ([]string, error) {
	var backups []string
	for _, c := range plan {
		if err := os.MkdirAll(filepath.Dir(c.Path), 0o755); err != nil {
			return backups, fmt.Errorf("create %s: %w", filepath.Dir(c.Path), err)
		}
		mode := os.FileMode(0o644)
		if c.Existed {
			if fi, err := os.Stat(c.Path); err == nil {
				mode = fi.Mode().Perm()
			}
			bak := c.Path + ".dfly-backup"
			if _, err := os.Stat(bak); err == nil {
				bak += "." + now.UTC().Format("20060102T150405Z")
			}
			if err := os.WriteFile(bak, c.Old, mode); err != nil {
				return backups, fmt.Errorf("back up %s: %w", c.Path, err)
			}
			backups = append(backups, bak)
		}
		tmp := c.Path + ".dfly-tmp"
		if err := os.WriteFile(tmp, c.New, mode); err != nil {
			return backups, fmt.Errorf("write %s: %w", tmp, err)
		}
		if err := os.Rename(tmp, c.Path); err != nil {
			os.Remove(tmp)
			return backups, fmt.Errorf("install %s: %w", c.Path, err)
		}
	}
	return backups, nil
}

// writeDiff prints a line diff of a change (unchanged lines around the
// changes, like diff -u without hunk headers).
func writeDiff(w io.Writer, c fileChange) {
	before := "/dev/null"
	if c.Existed {
		before = c.Path
	}
	fmt.Fprintf(w, "--- %s\n+++ %s\n", before, c.Path)
	a, b := splitLines(c.Old), splitLines(c.New)
	ops := diffLines(a, b)
	const ctx = 2
	for i, op := range ops {
		near := false
		for j := max(0, i-ctx); j <= min(len(ops)-1, i+ctx); j++ {
			if ops[j].kind != ' ' {
				near = true
				break
			}
		}
		if op.kind != ' ' || near {
			fmt.Fprintf(w, "%c%s\n", op.kind, op.text)
		}
	}
}

func splitLines(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

type diffOp struct {
	kind byte // ' ', '-', '+'
	text string
}

// diffLines is a longest-common-subsequence line diff (config files are small).
func diffLines(a, b []string) []diffOp {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var ops []diffOp
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			ops = append(ops, diffOp{' ', a[i]})
			i, j = i+1, j+1
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, diffOp{'-', a[i]})
			i++
		default:
			ops = append(ops, diffOp{'+', b[j]})
			j++
		}
	}
	return ops
}

// runContainerdConfigure is "dfctl containerd configure".
func runContainerdConfigure(o containerdOptions, dryRun bool, stdout io.Writer) error {
	sort.Strings(o.Registries)
	plan, err := planContainerd(o)
	if err != nil {
		return err
	}
	if len(plan) == 0 {
		fmt.Fprintln(stdout, "containerd is already configured for dfly; nothing to change")
		return nil
	}
	for _, c := range plan {
		writeDiff(stdout, c)
	}
	if dryRun {
		fmt.Fprintf(stdout, "dry run: %d file(s) would change\n", len(plan))
		return nil
	}
	backups, err := applyChanges(plan, time.Now())
	for _, b := range backups {
		fmt.Fprintln(stdout, "backup:", b)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %d file(s); restart containerd if config.toml changed (hosts.toml changes apply to the next pull)\n", len(plan))
	return nil
}
