package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// unitSpec is what deploy/systemd holds for one binary.
type unitSpec struct {
	file    string // under systemd/
	bin     string // in /usr/local/bin
	envVar  string // extra flags from /etc/default/<envFile>
	envFile string
	stateFlag,
	state string // the flag naming its state directory, and that directory
	metrics     string // --metrics-listen
	fuse        bool   // mounts FUSE or may open /dev/fuse: no device policy
	mounts      bool   // its mounts must reach the host: no mount namespace
	killProcess bool   // KillMode=process (detached layer servers survive)
}

var units = []unitSpec{
	{file: "dfly-supernode.service", bin: "supernode", envVar: "DFLY_SUPERNODE_ARGS", envFile: "dfly-supernode",
		stateFlag: "store", state: "/var/lib/dfly/supernode", metrics: ":8004"},
	{file: "dfly-dfdaemon.service", bin: "dfdaemon", envVar: "DFLY_DFDAEMON_ARGS", envFile: "dfly-dfdaemon",
		stateFlag: "store", state: "/var/lib/dfly/dfdaemon", metrics: "127.0.0.1:65002", fuse: true},
	{file: "dfly-snapshotter.service", bin: "dfly-snapshotter", envVar: "DFLY_SNAPSHOTTER_ARGS", envFile: "dfly-snapshotter",
		stateFlag: "root", state: "/var/lib/dfly/snapshotter", metrics: "127.0.0.1:65003", fuse: true, mounts: true, killProcess: true},
}

// unitFile is a parsed unit: section -> key -> values (keys may repeat).
type unitFile map[string]map[string][]string

func parseUnit(text string) (unitFile, error) {
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		case section == "":
			return nil, fmt.Errorf("line %d: %q outside a section", n, line)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return nil, fmt.Errorf("line %d: %q is not KEY=VALUE", n, line)
			}
			if strings.HasSuffix(v, "\\") {
				return nil, fmt.Errorf("line %d: continuation lines are not used in dfly's units", n)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u, sc.Err()
}

// get returns the last value of key in section ("" when unset).
func (u unitFile) get(section, key string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// envArgs returns the fields of VAR="..." in an EnvironmentFile.
func envArgs(text, name string) ([]string, error) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+"="); ok {
			return strings.Fields(strings.Trim(v, `"`)), nil
		}
	}
	return nil, fmt.Errorf("no %s= line", name)
}

// execArgv returns ExecStart as argv, $VAR replaced by extra.
func execArgv(u unitFile, envVar string, extra []string) []string {
	var argv []string
	for _, f := range strings.Fields(u.get("Service", "ExecStart")) {
		if f == "$"+envVar || f == "${"+envVar+"}" {
			argv = append(argv, extra...)
			continue
		}
		argv = append(argv, f)
	}
	return argv
}

// mountNamespaceOptions each give a service its own mount namespace, where
// mounts it makes do not reach the host (so containerd would not see them).
var mountNamespaceOptions = []string{"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
	"ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
	"ProtectProc", "ProcSubset", "PrivateMounts", "MountAPIVFS", "ReadWritePaths", "ReadOnlyPaths",
	"InaccessiblePaths", "ExecPaths", "NoExecPaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths",
	"RootDirectory", "RootImage", "MountFlags", "PrivateNetwork", "PrivateUsers", "PrivateIPC"}

func isOff(v string) bool {
	switch strings.ToLower(v) {
	case "", "no", "false", "0", "off":
		return true
	}
	return false
}

// checkUnit returns every rule the unit breaks. flags are the binary's.
func checkUnit(s unitSpec, text, envText string, flags map[string]bool) []string {
	var bad []string
	fail := func(f string, a ...any) { bad = append(bad, fmt.Sprintf(f, a...)) }
	u, err := parseUnit(text)
	if err != nil {
		return []string{err.Error()}
	}
	extra, err := envArgs(envText, s.envVar)
	if err != nil {
		fail("systemd/default/%s: %v", s.envFile, err)
	}
	argv := execArgv(u, s.envVar, nil)
	if len(argv) == 0 || argv[0] != "/usr/local/bin/"+s.bin {
		fail("ExecStart must run /usr/local/bin/%s, runs %q", s.bin, argv)
	}
	if !strings.Contains(u.get("Service", "ExecStart"), "$"+s.envVar) {
		fail("ExecStart must take extra flags from $%s", s.envVar)
	}
	if got, want := u.get("Service", "EnvironmentFile"), "-/etc/default/"+s.envFile; got != want {
		fail("EnvironmentFile=%s, want %s (optional: leading -)", got, want)
	}
	if got := u.get("Service", "Restart"); got != "on-failure" {
		fail("Restart=%s, want on-failure", got)
	}
	if got := u.get("Install", "WantedBy"); got != "multi-user.target" {
		fail("WantedBy=%s, want multi-user.target", got)
	}
	if len(argv) > 0 {
		if v, _ := flagValue(argv[1:], s.stateFlag); v != s.state {
			fail("--%s %q, want %s", s.stateFlag, v, s.state)
		}
		if got, want := u.get("Service", "StateDirectory"), strings.TrimPrefix(s.state, "/var/lib/"); got != want {
			fail("StateDirectory=%s, want %s (the --%s directory)", got, want, s.stateFlag)
		}
		if v, _ := flagValue(argv[1:], "metrics-listen"); v != s.metrics {
			fail("--metrics-listen %q, want %s", v, s.metrics)
		}
		for _, a := range append(argv[1:], extra...) {
			if n := flagName(a); n != "" && !flags[n] {
				fail("%s has no flag --%s", s.bin, n)
			}
		}
	}
	if km := u.get("Service", "KillMode"); (km == "process") != s.killProcess {
		fail("KillMode=%s; want process exactly for the snapshotter (its layer servers must survive a restart)", km)
	}
	if s.fuse {
		if !isOff(u.get("Service", "PrivateDevices")) {
			fail("PrivateDevices hides /dev/fuse")
		}
		if p := u.get("Service", "DevicePolicy"); p == "strict" || p == "closed" {
			fail("DevicePolicy=%s blocks /dev/fuse", p)
		}
		if !isOff(u.get("Service", "ProtectClock")) {
			fail("ProtectClock implies a device policy that blocks /dev/fuse")
		}
		if allow := u["Service"]["DeviceAllow"]; len(allow) > 0 && !strings.Contains(strings.Join(allow, " "), "/dev/fuse") {
			fail("DeviceAllow without /dev/fuse blocks it")
		}
	}
	if s.mounts {
		for _, k := range mountNamespaceOptions {
			if v := u.get("Service", k); v != "" && !isOff(v) {
				fail("%s=%s gives the unit a private mount namespace: its FUSE mounts would not reach containerd", k, v)
			}
		}
		if caps := u.get("Service", "CapabilityBoundingSet"); caps != "" && !strings.Contains(caps, "CAP_SYS_ADMIN") {
			fail("CapabilityBoundingSet lacks CAP_SYS_ADMIN (mounting)")
		}
	}
	if isOff(u.get("Service", "NoNewPrivileges")) {
		fail("NoNewPrivileges=yes is missing")
	}
	return bad
}

func readDeploy(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(rel)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSystemdUnits(t *testing.T) {
	for _, s := range units {
		t.Run(s.file, func(t *testing.T) {
			text := readDeploy(t, filepath.Join("systemd", s.file))
			env := readDeploy(t, filepath.Join("systemd", "default", s.envFile))
			for _, p := range checkUnit(s, text, env, knownFlags(t, s.bin)) {
				t.Error(p)
			}
		})
	}
}

// TestSystemdRulesBite breaks one rule at a time and expects checkUnit to
// notice.
func TestSystemdRulesBite(t *testing.T) {
	snap, daemon, super := units[2], units[1], units[0]
	cases := []struct {
		name     string
		unit     unitSpec
		old, new string // text replacement in the unit
		want     string
	}{
		{"snapshotter without KillMode=process", snap, "KillMode=process\n", "", "KillMode"},
		{"supernode with KillMode=process", super, "Type=exec\n", "Type=exec\nKillMode=process\n", "KillMode"},
		{"snapshotter in a mount namespace", snap, "NoNewPrivileges=yes\n", "NoNewPrivileges=yes\nPrivateTmp=yes\n", "PrivateTmp"},
		{"snapshotter with ProtectSystem", snap, "NoNewPrivileges=yes\n", "NoNewPrivileges=yes\nProtectSystem=full\n", "ProtectSystem"},
		{"snapshotter without CAP_SYS_ADMIN", snap, "CAP_SYS_ADMIN ", "", "CAP_SYS_ADMIN"},
		{"dfdaemon without /dev/fuse", daemon, "NoNewPrivileges=yes\n", "NoNewPrivileges=yes\nPrivateDevices=yes\n", "/dev/fuse"},
		{"dfdaemon with ProtectClock", daemon, "NoNewPrivileges=yes\n", "NoNewPrivileges=yes\nProtectClock=yes\n", "ProtectClock"},
		{"Restart=always", super, "Restart=on-failure", "Restart=always", "Restart"},
		{"mandatory EnvironmentFile", super, "EnvironmentFile=-/", "EnvironmentFile=/", "EnvironmentFile"},
		{"binary elsewhere", super, "/usr/local/bin/supernode", "/usr/bin/supernode", "/usr/local/bin"},
		{"state outside /var/lib/dfly", daemon, "--store /var/lib/dfly/dfdaemon", "--store /srv/dfdaemon", "--store"},
		{"unknown flag", daemon, "--listen 0.0.0.0:8003", "--listen 0.0.0.0:8003 --no-such-flag", "--no-such-flag"},
		{"no metrics listener", super, " --metrics-listen :8004", "", "--metrics-listen"},
		{"no NoNewPrivileges", super, "NoNewPrivileges=yes\n", "", "NoNewPrivileges"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			text := readDeploy(t, filepath.Join("systemd", c.unit.file))
			env := readDeploy(t, filepath.Join("systemd", "default", c.unit.envFile))
			broken := strings.Replace(text, c.old, c.new, 1)
			if broken == text {
				t.Fatalf("%q is not in %s", c.old, c.unit.file)
			}
			flags := knownFlags(t, c.unit.bin)
			if p := checkUnit(c.unit, text, env, flags); len(p) != 0 {
				t.Fatalf("the unit as shipped breaks rules: %v", p)
			}
			p := checkUnit(c.unit, broken, env, flags)
			if !strings.Contains(strings.Join(p, "\n"), c.want) {
				t.Errorf("broken unit: problems %q, want one naming %q", p, c.want)
			}
		})
	}
}

// TestSystemdAnalyzeVerify runs systemd's own checker on copies of the units
// whose binaries are the freshly built ones (it checks that ExecStart is
// executable). Any diagnostic about a unit file fails the test.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd): units not verified by systemd")
	}
	dir := t.TempDir()
	var paths []string
	for _, s := range units {
		text := readDeploy(t, filepath.Join("systemd", s.file))
		text = strings.ReplaceAll(text, "/usr/local/bin/", binDir+"/")
		p := filepath.Join(dir, s.file)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	cmd := exec.Command(sa, append([]string{"verify", "--man=no"}, paths...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, line := range bytes.Split(out, []byte("\n")) {
		for _, s := range units {
			if bytes.Contains(line, []byte(s.file)) {
				t.Errorf("systemd-analyze verify: %s", line)
			}
		}
	}
}

// TestSysusers checks that dfly.sysusers.conf makes the user and group the
// units run as (systemd-sysusers, dry run into an empty root).
func TestSysusers(t *testing.T) {
	conf, err := filepath.Abs(filepath.Join("systemd", "dfly.sysusers.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	for _, s := range units {
		u, err := parseUnit(readDeploy(t, filepath.Join("systemd", s.file)))
		if err != nil {
			t.Fatal(err)
		}
		if user := u.get("Service", "User"); user != "" {
			users = append(users, user)
			if g := u.get("Service", "Group"); g != "" && g != user {
				t.Errorf("%s: Group=%s, want the user's own group %s (what sysusers makes)", s.file, g, user)
			}
		}
	}
	if len(users) == 0 {
		t.Fatal("no unit names a User=: the supernode should not run as root")
	}
	ss, err := exec.LookPath("systemd-sysusers")
	if err != nil {
		t.Skip("systemd-sysusers is not installed (Debian package systemd): dfly.sysusers.conf not checked")
	}
	out, err := exec.Command(ss, "--dry-run", "--root="+t.TempDir(), conf).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-sysusers --dry-run %s: %v\n%s", conf, err, out)
	}
	for _, u := range users {
		if !strings.Contains(string(out), "Creating user '"+u+"'") {
			t.Errorf("dfly.sysusers.conf does not make user %s:\n%s", u, out)
		}
	}
}
