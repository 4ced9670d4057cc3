package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

const chartDir = "helm/dfly"

// helmBin returns the helm that .ci/install-go-tools builds, or skips.
func helmBin(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "helm")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("helm is not in $(go env GOPATH)/bin (.ci/install-go-tools builds helm.sh/helm/v4): chart not linted or rendered")
	return ""
}

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helmBin(t), args...)
	// No repositories, plugins or caches of the user's: only the chart.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// allOptions turns on every option of the chart at once.
const allOptions = `
image:
  tag: "0.2.0"
commonLabels:
  team: platform
tls:
  secretName: dfly-tls
  clientAuth: true
adminToken:
  existingSecret: my-admin-token
nodeGroups:
  - name: default
    nodeSelector: {dfly/zone: east}
    idc: east
    rack: r1
  - name: west
    nodeSelector: {dfly/zone: west}
    idc: west
priorityClassName: system-node-critical
supernode:
  store: {size: 200Gi, storageClassName: fast, quota: 180G}
  idc: east
  extraArgs: ["--upload-rate=500M"]
dfdaemon:
  store: {hostPath: /data/dfly/dfdaemon, quota: 100G}
  extraArgs: ["--download-rate=200M"]
containerd:
  registries: [docker.io, registry.internal:5000]
  insecureRegistries: [registry.internal:5000]
  configVersion: 3
  configDir: /etc/k8s-containerd
snapshotter:
  root: /data/dfly/snapshotter
  extraArgs: ["--no-prefetch"]
serviceMonitor:
  enabled: true
  labels: {release: prometheus}
`

func writeValues(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHelmLint(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
	}{
		{"defaults", nil},
		{"all options", []string{"-f", writeValues(t, allOptions)}},
		{"no snapshotter, no containerd configuration", []string{"--set", "snapshotter.enabled=false,containerd.configure=false"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := helm(t, append([]string{"lint", "--strict", chartDir}, c.args...)...)
			if err != nil {
				t.Fatalf("helm lint --strict: %v\n%s", err, out)
			}
		})
	}
}

// render runs helm template as release dfly in namespace dfly.
func render(t *testing.T, args ...string) []object {
	t.Helper()
	out, err := helm(t, append([]string{"template", "dfly", chartDir, "--namespace", "dfly"}, args...)...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	objs, err := decodeObjects("helm template", []byte(out))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func find[T any](objs []object, kind, name string) T {
	var zero T
	for _, o := range objs {
		if o.kind == kind && o.name == name {
			if v, ok := o.obj.(T); ok {
				return v
			}
		}
	}
	return zero
}

func TestHelmTemplate(t *testing.T) {
	cases := []struct {
		name      string
		args      []string
		external  map[string]bool
		configure bool
		check     func(t *testing.T, objs []object)
	}{
		{name: "defaults", configure: true, check: func(t *testing.T, objs []object) {
			if s := find[*corev1.Secret](objs, "Secret", "dfly-admin-token"); s == nil || len(s.Data["token"]) < 16 {
				t.Errorf("no admin token Secret with a token of 16 characters or more")
			}
			for _, o := range objs {
				if o.kind == "ServiceMonitor" {
					t.Errorf("%s rendered, but serviceMonitor.enabled defaults to false", o)
				}
			}
		}},
		{name: "all options", args: []string{"-f", writeValues(t, allOptions)}, configure: true,
			external: map[string]bool{"Secret/dfly-tls": true, "Secret/my-admin-token": true},
			check: func(t *testing.T, objs []object) {
				if find[*corev1.Secret](objs, "Secret", "dfly-admin-token") != nil {
					t.Error("the chart made an admin token although adminToken.existingSecret is set")
				}
				west := find[*appsv1.DaemonSet](objs, "DaemonSet", "dfly-dfdaemon-west")
				if west == nil {
					t.Fatal("no DaemonSet dfly-dfdaemon-west for node group west")
				}
				args := strings.Join(west.Spec.Template.Spec.Containers[0].Args, " ")
				if !strings.Contains(args, "--idc=west") || strings.Contains(args, "--rack") {
					t.Errorf("group west: args %s, want --idc=west and no --rack", args)
				}
				if west.Spec.Template.Spec.NodeSelector["dfly/zone"] != "west" {
					t.Errorf("group west: nodeSelector %v", west.Spec.Template.Spec.NodeSelector)
				}
				if find[*appsv1.DaemonSet](objs, "DaemonSet", "dfly-snapshotter-west") == nil {
					t.Error("no snapshotter DaemonSet for node group west")
				}
				// Every swarm member speaks TLS with the secret mounted.
				for _, w := range (manifests{objs: objs}).workloads() {
					c := w.tmpl.Spec.Containers[0]
					a := strings.Join(c.Args, " ")
					if !strings.Contains(a, "--tls-ca=/etc/dfly/tls/ca.crt") || !strings.Contains(a, "--tls-client-auth") {
						t.Errorf("%s: no TLS flags: %s", w.owner, a)
					}
					if vm := (container{w: w, c: &c}).mountFor("/etc/dfly/tls/ca.crt"); vm == nil || vm.Name != "tls" {
						t.Errorf("%s: the TLS secret is not mounted", w.owner)
					}
					if w.tmpl.Labels["team"] != "platform" {
						t.Errorf("%s: commonLabels missing from the pods", w.owner)
					}
				}
				ss := find[*appsv1.StatefulSet](objs, "StatefulSet", "dfly-supernode")
				if sc := ss.Spec.VolumeClaimTemplates[0].Spec.StorageClassName; sc == nil || *sc != "fast" {
					t.Errorf("storageClassName %v, want fast", sc)
				}
				if q := ss.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests.Storage().String(); q != "200Gi" {
					t.Errorf("store size %s, want 200Gi", q)
				}
				init := find[*appsv1.DaemonSet](objs, "DaemonSet", "dfly-dfdaemon").Spec.Template.Spec.InitContainers[0]
				ia := strings.Join(init.Args, " ")
				if !strings.Contains(ia, "--insecure-registry=registry.internal:5000") || !strings.Contains(ia, "--config-version=3") ||
					!strings.Contains(ia, "--config=/etc/k8s-containerd/config.toml") || !strings.Contains(ia, "--certs-dir=/etc/k8s-containerd/certs.d") {
					t.Errorf("containerd-config args %s", ia)
				}
				if cm := find[*corev1.ConfigMap](objs, "ConfigMap", "dfly-config"); cm == nil || cm.Data["registries"] != "docker.io,registry.internal:5000" {
					t.Errorf("registries ConfigMap %v", cm)
				}
			}},
		{name: "no snapshotter", args: []string{"--set", "snapshotter.enabled=false"}, configure: true, check: func(t *testing.T, objs []object) {
			for _, o := range objs {
				if strings.Contains(o.name, "snapshotter") {
					t.Errorf("%s rendered with snapshotter.enabled=false", o)
				}
			}
			init := find[*appsv1.DaemonSet](objs, "DaemonSet", "dfly-dfdaemon").Spec.Template.Spec.InitContainers[0]
			if v, _ := flagValue(init.Args, "snapshotter-address"); v != "" {
				t.Errorf("containerd configure registers the snapshotter %q although it is disabled", v)
			}
		}},
		{name: "containerd left alone", args: []string{"--set", "containerd.configure=false"}, check: func(t *testing.T, objs []object) {
			ds := find[*appsv1.DaemonSet](objs, "DaemonSet", "dfly-dfdaemon")
			if len(ds.Spec.Template.Spec.InitContainers) != 0 {
				t.Error("init container rendered with containerd.configure=false")
			}
			for _, v := range ds.Spec.Template.Spec.Volumes {
				if v.Name == "containerd-config" {
					t.Error("containerd's config directory mounted with containerd.configure=false")
				}
			}
		}},
	}
	flags := flagCache(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs := render(t, c.args...)
			m := manifests{objs: objs, namespace: "dfly", external: c.external, flags: flags, configure: c.configure}
			for _, p := range checkManifests(m) {
				t.Error(p)
			}
			c.check(t, objs)
		})
	}
}

// TestHelmRefusesLatest: the values schema refuses image.tag=latest, and so
// does the template itself when the schema is skipped.
func TestHelmRefusesLatest(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "/image/tag"},
		{[]string{"--skip-schema-validation"}, `image.tag must name a version, not "latest"`},
	} {
		out, err := helm(t, append([]string{"template", "dfly", chartDir, "--set", "image.tag=latest"}, c.args...)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("helm template --set image.tag=latest %v: err %v, want an error naming %q; output:\n%s", c.args, err, c.want, out)
		}
	}
}

// TestHelmMatchesPlain: with its defaults the chart makes the objects of
// deploy/kubernetes (but the Namespace, which helm install --create-namespace
// makes, and the admin token Secret, which the plain manifests leave to the
// operator), with the same containers, flags, ports and mounts.
func TestHelmMatchesPlain(t *testing.T) {
	plain, err := decodeFiles(plainManifests(t))
	if err != nil {
		t.Fatal(err)
	}
	chart := render(t)
	shape := func(objs []object, skip func(object) bool) map[string]string {
		s := map[string]string{}
		for _, o := range objs {
			if skip(o) {
				continue
			}
			s[o.String()] = ""
		}
		for _, w := range (manifests{objs: objs}).workloads() {
			var cs []string
			for _, c := range (manifests{objs: []object{w.owner}}).containers() {
				var fl []string
				for _, a := range c.c.Args {
					if n := flagName(a); n != "" {
						fl = append(fl, n)
					} else {
						fl = append(fl, a)
					}
				}
				sort.Strings(fl)
				var ports []string
				for _, p := range c.c.Ports {
					ports = append(ports, p.Name)
				}
				var mounts []string
				for _, vm := range c.c.VolumeMounts {
					// The plain manifests mount the TLS Secret optionally (so
					// TLS takes only the flags); the chart only when it is set.
					if vm.MountPath != "/etc/dfly/tls" {
						mounts = append(mounts, vm.MountPath)
					}
				}
				sort.Strings(mounts)
				cs = append(cs, c.c.Name+" "+strings.Join(fl, ",")+" ports="+strings.Join(ports, ",")+" mounts="+strings.Join(mounts, ","))
			}
			s[w.owner.String()] = strings.Join(cs, "; ")
		}
		return s
	}
	p := shape(plain, func(o object) bool { return o.kind == "Namespace" })
	h := shape(chart, func(o object) bool { return o.String() == "Secret/dfly-admin-token" })
	for k, v := range p {
		if hv, ok := h[k]; !ok {
			t.Errorf("the chart does not make %s", k)
		} else if hv != v {
			t.Errorf("%s differs:\nplain %s\nchart %s", k, v, hv)
		}
	}
	for k := range h {
		if _, ok := p[k]; !ok {
			t.Errorf("the chart makes %s, which deploy/kubernetes lacks", k)
		}
	}
}
