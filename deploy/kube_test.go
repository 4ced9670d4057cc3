package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// object is one decoded Kubernetes object.
type object struct {
	source    string // file and document number
	kind      string
	name      string
	namespace string
	obj       any // a typed k8s.io/api object, or *serviceMonitor
}

func (o object) String() string { return o.kind + "/" + o.name }

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1) the chart uses; decoding refuses other fields.
type serviceMonitor struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames,omitempty"`
			Any        bool     `json:"any,omitempty"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// strictDecoder decodes YAML into the typed API objects, refusing unknown
// and duplicate fields (the API server's strict field validation).
func strictDecoder() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, rbacv1.AddToScheme, policyv1.AddToScheme, batchv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}

// decodeObjects decodes every YAML document of data.
func decodeObjects(source string, data []byte) ([]object, error) {
	dec := strictDecoder()
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []object
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, n, err)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, n, err)
		}
		if tm.Kind == "" && tm.APIVersion == "" {
			if j, err := yaml.YAMLToJSON(doc); err == nil && string(j) == "null" {
				continue // only comments
			}
			return nil, fmt.Errorf("%s: document %d has no kind and apiVersion", source, n)
		}
		src := fmt.Sprintf("%s#%d", source, n)
		if tm.APIVersion == "monitoring.coreos.com/v1" && tm.Kind == "ServiceMonitor" {
			sm := &serviceMonitor{}
			if err := yaml.UnmarshalStrict(doc, sm); err != nil {
				return nil, fmt.Errorf("%s: %w", src, err)
			}
			objs = append(objs, object{src, tm.Kind, sm.Metadata.Name, sm.Metadata.Namespace, sm})
			continue
		}
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		meta, err := metaOf(obj)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		objs = append(objs, object{src, tm.Kind, meta.GetName(), meta.GetNamespace(), obj})
	}
}

func metaOf(obj runtime.Object) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

// decodeFiles decodes the given YAML files.
func decodeFiles(files map[string]string) ([]object, error) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var all []object
	for _, n := range names {
		objs, err := decodeObjects(n, []byte(files[n]))
		if err != nil {
			return nil, err
		}
		all = append(all, objs...)
	}
	return all, nil
}

// plainManifests reads deploy/kubernetes/*.yaml.
func plainManifests(t *testing.T) map[string]string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests in kubernetes/: %v", err)
	}
	files := map[string]string{}
	for _, p := range paths {
		files[p] = readDeploy(t, p)
	}
	return files
}

// manifests is a set of objects meant to be applied together.
type manifests struct {
	objs      []object
	namespace string
	// external are objects the operator makes (kind/name), e.g. the admin
	// token Secret of the plain manifests.
	external map[string]bool
	// flags returns the flags of a binary.
	flags func(bin string) map[string]bool
	// configure: an init container must run dfctl containerd configure.
	configure bool
}

// workload is a pod template and its owner.
type workload struct {
	owner  object
	tmpl   *corev1.PodTemplateSpec
	claims []corev1.PersistentVolumeClaim
}

func (m manifests) workloads() []workload {
	var ws []workload
	for _, o := range m.objs {
		switch v := o.obj.(type) {
		case *appsv1.StatefulSet:
			ws = append(ws, workload{o, &v.Spec.Template, v.Spec.VolumeClaimTemplates})
		case *appsv1.DaemonSet:
			ws = append(ws, workload{o, &v.Spec.Template, nil})
		case *appsv1.Deployment:
			ws = append(ws, workload{o, &v.Spec.Template, nil})
		case *batchv1.Job:
			ws = append(ws, workload{o, &v.Spec.Template, nil})
		}
	}
	return ws
}

func (m manifests) has(kind, name string) bool {
	if m.external[kind+"/"+name] {
		return true
	}
	for _, o := range m.objs {
		if o.kind == kind && o.name == name {
			return true
		}
	}
	return false
}

// container is one container of a workload.
type container struct {
	w    workload
	c    *corev1.Container
	init bool
}

func (c container) String() string {
	return fmt.Sprintf("%s container %s", c.w.owner, c.c.Name)
}

// bin is the binary the container runs (basename of its command).
func (c container) bin() string {
	if len(c.c.Command) == 0 {
		return ""
	}
	return path.Base(c.c.Command[0])
}

func (m manifests) containers() []container {
	var cs []container
	for _, w := range m.workloads() {
		for i := range w.tmpl.Spec.InitContainers {
			cs = append(cs, container{w, &w.tmpl.Spec.InitContainers[i], true})
		}
		for i := range w.tmpl.Spec.Containers {
			cs = append(cs, container{w, &w.tmpl.Spec.Containers[i], false})
		}
	}
	return cs
}

// volume returns the pod volume a mount names.
func (c container) volume(name string) *corev1.Volume {
	for i, v := range c.w.tmpl.Spec.Volumes {
		if v.Name == name {
			return &c.w.tmpl.Spec.Volumes[i]
		}
	}
	return nil
}

// mountFor returns the volume mount holding path p (the longest prefix).
func (c container) mountFor(p string) *corev1.VolumeMount {
	var best *corev1.VolumeMount
	for i, vm := range c.c.VolumeMounts {
		mp := strings.TrimSuffix(vm.MountPath, "/")
		if (p == mp || strings.HasPrefix(p, mp+"/")) && (best == nil || len(mp) > len(best.MountPath)) {
			best = &c.c.VolumeMounts[i]
		}
	}
	return best
}

// port resolves a probe or service port against the container's ports.
func (c container) port(p intstr.IntOrString) (int32, bool) {
	for _, cp := range c.c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

func listenPort(addr string) (int32, bool) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, false
	}
	var n int32
	if _, err := fmt.Sscan(port, &n); err != nil {
		return 0, false
	}
	return n, true
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// kubeRule is one property every manifest set must have.
type kubeRule struct {
	name  string
	check func(m manifests) []string
}

// stateFlags name a file or directory a binary keeps across restarts; the
// value of those marked dir is a directory, the others a file in one.
var stateFlags = map[string]bool{"store": true, "root": true, "sock": false, "address": false, "config": false, "certs-dir": true}

var kubeRules = []kubeRule{
	{"images are versioned", func(m manifests) (bad []string) {
		for _, c := range m.containers() {
			repo, tag, ok := strings.Cut(c.c.Image, ":")
			switch {
			case !ok || tag == "":
				bad = append(bad, fmt.Sprintf("%s: image %q has no tag", c, c.c.Image))
			case tag == "latest":
				bad = append(bad, fmt.Sprintf("%s: image %q: tag latest", c, c.c.Image))
			case repo != "ghcr.io/dfly-p2p/dfly":
				bad = append(bad, fmt.Sprintf("%s: image %q is not ghcr.io/dfly-p2p/dfly", c, c.c.Image))
			}
		}
		return bad
	}},
	{"every container has resource requests", func(m manifests) (bad []string) {
		for _, c := range m.containers() {
			r := c.c.Resources
			if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() {
				bad = append(bad, fmt.Sprintf("%s: no cpu and memory requests", c))
			}
			if r.Limits.Memory().IsZero() {
				bad = append(bad, fmt.Sprintf("%s: no memory limit", c))
			}
		}
		return bad
	}},
	{"probes: /healthz and /readyz on the metrics port", func(m manifests) (bad []string) {
		for _, c := range m.containers() {
			if c.init {
				continue
			}
			ml, ok := flagValue(c.c.Args, "metrics-listen")
			mport, ok2 := listenPort(ml)
			if !ok || !ok2 {
				bad = append(bad, fmt.Sprintf("%s: no --metrics-listen HOST:PORT (%q)", c, ml))
			}
			for _, p := range []struct {
				kind, path string
				probe      *corev1.Probe
			}{{"liveness", "/healthz", c.c.LivenessProbe}, {"readiness", "/readyz", c.c.ReadinessProbe}} {
				if p.probe == nil || p.probe.HTTPGet == nil {
					bad = append(bad, fmt.Sprintf("%s: no HTTP %s probe", c, p.kind))
					continue
				}
				g := p.probe.HTTPGet
				if g.Path != p.path {
					bad = append(bad, fmt.Sprintf("%s: %s probe on %s, want %s", c, p.kind, g.Path, p.path))
				}
				port, ok := c.port(g.Port)
				if !ok {
					bad = append(bad, fmt.Sprintf("%s: %s probe port %s is not a declared container port", c, p.kind, g.Port.String()))
				} else if port != mport {
					bad = append(bad, fmt.Sprintf("%s: %s probe on port %d, but --metrics-listen is %s", c, p.kind, port, ml))
				}
				if g.Host != "" {
					bad = append(bad, fmt.Sprintf("%s: %s probe sets host %s (the listener must be on the pod's address)", c, p.kind, g.Host))
				}
			}
		}
		return bad
	}},
	{"state is on volumes: hostPath on nodes, a PVC for the supernode", func(m manifests) (bad []string) {
		for _, c := range m.containers() {
			_, daemonSet := c.w.owner.obj.(*appsv1.DaemonSet)
			for flag, isDir := range stateFlags {
				v, ok := flagValue(c.c.Args, flag)
				if !ok || v == "" {
					continue
				}
				dir := v
				if !isDir {
					dir = path.Dir(v)
				}
				vm := c.mountFor(dir)
				if vm == nil {
					bad = append(bad, fmt.Sprintf("%s: --%s %s is on no volume", c, flag, v))
					continue
				}
				vol := c.volume(vm.Name)
				claim := false
				for _, pvc := range c.w.claims {
					claim = claim || pvc.Name == vm.Name
				}
				switch {
				case daemonSet && (vol == nil || vol.HostPath == nil):
					bad = append(bad, fmt.Sprintf("%s: --%s %s is on volume %s, not a hostPath", c, flag, v, vm.Name))
				case daemonSet && vol.HostPath.Path != vm.MountPath:
					// Sockets, stores and containerd's config_path are
					// shared with the node by path.
					bad = append(bad, fmt.Sprintf("%s: hostPath %s mounted at %s: keep node paths the same inside", c, vol.HostPath.Path, vm.MountPath))
				case !daemonSet && (flag == "store" || flag == "root") && !claim:
					bad = append(bad, fmt.Sprintf("%s: --%s %s is on volume %s, not a volumeClaimTemplate", c, flag, v, vm.Name))
				}
			}
		}
		return bad
	}},
	{"node agents: store and socket hostPaths, host network", func(m manifests) (bad []string) {
		for _, c := range m.containers() {
			ds, ok := c.w.owner.obj.(*appsv1.DaemonSet)
			if !ok || c.init {
				continue
			}
			if _, ok := flagValue(c.c.Args, "store"); !ok && c.bin() == "dfdaemon" {
				bad = append(bad, fmt.Sprintf("%s: no --store", c))
			}
			if _, ok := flagValue(c.c.Args, "root"); !ok && c.bin() == "dfly-snapshotter" {
				bad = append(bad, fmt.Sprintf("%s: no --root", c))
			}
			if vm := c.mountFor("/run/dfly"); vm == nil || c.volume(vm.Name) == nil || c.volume(vm.Name).HostPath == nil || c.volume(vm.Name).HostPath.Path != "/run/dfly" {
				bad = append(bad, fmt.Sprintf("%s: the socket directory /run/dfly is not the node's (hostPath)", c))
			}
			spec := ds.Spec.Template.Spec
			if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
				bad = append(bad, fmt.Sprintf("%s: want hostNetwork (upload server and mirror on the node) with dnsPolicy ClusterFirstWithHostNet (the supernode's Service name), have %v/%s", ds.Name, spec.HostNetwork, spec.DNSPolicy))
			}
		}
		return bad
	}},
	{"snapshotter: /dev/fuse, privileged, mounts reach the host, OnDelete", func(m manifests) (bad []string) {
		for _, c := range m.containers() {
			if c.bin() != "dfly-snapshotter" {
				continue
			}
			vm := c.mountFor("/dev/fuse")
			if vm == nil || vm.MountPath != "/dev/fuse" {
				bad = append(bad, fmt.Sprintf("%s: /dev/fuse is not mounted", c))
			} else if v := c.volume(vm.Name); v == nil || v.HostPath == nil || v.HostPath.Path != "/dev/fuse" ||
				v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathCharDev {
				bad = append(bad, fmt.Sprintf("%s: /dev/fuse is not the node's character device (hostPath type CharDevice)", c))
			}
			if sc := c.c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
				bad = append(bad, fmt.Sprintf("%s: not privileged (FUSE mounts with Bidirectional propagation need it)", c))
			}
			root, _ := flagValue(c.c.Args, "root")
			if vm := c.mountFor(root); vm == nil || vm.MountPropagation == nil || *vm.MountPropagation != corev1.MountPropagationBidirectional {
				bad = append(bad, fmt.Sprintf("%s: --root %s is not mounted with Bidirectional propagation (containerd would not see the layers)", c, root))
			}
			if ds, ok := c.w.owner.obj.(*appsv1.DaemonSet); ok && ds.Spec.UpdateStrategy.Type != appsv1.OnDeleteDaemonSetStrategyType {
				bad = append(bad, fmt.Sprintf("%s: updateStrategy %s; want OnDelete (a restart kills the layer servers)", ds.Name, ds.Spec.UpdateStrategy.Type))
			}
		}
		return bad
	}},
	{"containerd is configured from a node agent", func(m manifests) (bad []string) {
		found := false
		for _, c := range m.containers() {
			if c.bin() != "dfctl" {
				continue
			}
			if strings.Join(c.c.Args[:min(2, len(c.c.Args))], " ") != "containerd configure" {
				bad = append(bad, fmt.Sprintf("%s: dfctl %v, want dfctl containerd configure", c, c.c.Args))
				continue
			}
			found = true
			if !c.init {
				bad = append(bad, fmt.Sprintf("%s: containerd configure runs once per pod start: make it an init container", c))
			}
			for _, f := range []string{"config", "certs-dir"} {
				v, _ := flagValue(c.c.Args, f)
				if v == "" {
					bad = append(bad, fmt.Sprintf("%s: no --%s", c, f))
					continue
				}
				vm := c.mountFor(v)
				if vm == nil || c.volume(vm.Name) == nil || c.volume(vm.Name).HostPath == nil {
					bad = append(bad, fmt.Sprintf("%s: --%s %s is not on the node's containerd directory (hostPath)", c, f, v))
				}
			}
		}
		if !found && m.configure {
			bad = append(bad, "no init container runs dfctl containerd configure")
		}
		return bad
	}},
	{"services select pods and name their ports", func(m manifests) (bad []string) {
		for _, o := range m.objs {
			svc, ok := o.obj.(*corev1.Service)
			if !ok {
				continue
			}
			sel := labels.SelectorFromSet(svc.Spec.Selector)
			var matched []container
			for _, c := range m.containers() {
				if !c.init && len(svc.Spec.Selector) > 0 && sel.Matches(labels.Set(c.w.tmpl.Labels)) {
					matched = append(matched, c)
				}
			}
			if len(matched) == 0 {
				bad = append(bad, fmt.Sprintf("%s selects no pods", o))
				continue
			}
			for _, p := range svc.Spec.Ports {
				tp := p.TargetPort
				if tp.Type == intstr.Int && tp.IntVal == 0 {
					tp = intstr.FromInt32(p.Port)
				}
				for _, c := range matched {
					port, ok := c.port(tp)
					if !ok {
						bad = append(bad, fmt.Sprintf("%s port %s: %s declares no port %s", o, p.Name, c, tp.String()))
					} else if port != p.Port {
						bad = append(bad, fmt.Sprintf("%s port %s is %d but reaches container port %d (keep them equal)", o, p.Name, p.Port, port))
					}
				}
			}
		}
		for _, w := range m.workloads() {
			ss, ok := w.owner.obj.(*appsv1.StatefulSet)
			if !ok {
				continue
			}
			var headless *corev1.Service
			for _, o := range m.objs {
				if s, ok := o.obj.(*corev1.Service); ok && o.name == ss.Spec.ServiceName {
					headless = s
				}
			}
			if headless == nil || headless.Spec.ClusterIP != corev1.ClusterIPNone {
				bad = append(bad, fmt.Sprintf("%s: serviceName %q is not a headless Service of the set", w.owner, ss.Spec.ServiceName))
			}
		}
		return bad
	}},
	{"the supernode Service: grpc 8002, upload 8001, metrics 8004", func(m manifests) (bad []string) {
		want := map[string]int32{"grpc": 8002, "upload": 8001, "metrics": 8004}
		n := 0
		for _, o := range m.objs {
			svc, ok := o.obj.(*corev1.Service)
			if !ok || svc.Spec.Selector["app.kubernetes.io/component"] != "supernode" {
				continue
			}
			n++
			got := map[string]int32{}
			for _, p := range svc.Spec.Ports {
				got[p.Name] = p.Port
			}
			for name, port := range want {
				if got[name] != port {
					bad = append(bad, fmt.Sprintf("%s: port %s is %d, want %d", o, name, got[name], port))
				}
			}
		}
		if n < 2 {
			bad = append(bad, fmt.Sprintf("%d Services select the supernode, want a Service and a headless one", n))
		}
		return bad
	}},
	{"references resolve", func(m manifests) (bad []string) {
		for _, w := range m.workloads() {
			spec := w.tmpl.Spec
			if sa := spec.ServiceAccountName; sa != "" && !m.has("ServiceAccount", sa) {
				bad = append(bad, fmt.Sprintf("%s: ServiceAccount %s does not exist", w.owner, sa))
			}
			if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
				bad = append(bad, fmt.Sprintf("%s: mounts a service account token, but dfly never calls the Kubernetes API", w.owner))
			}
			for _, v := range spec.Volumes {
				if s := v.Secret; s != nil && !(s.Optional != nil && *s.Optional) && !m.has("Secret", s.SecretName) {
					bad = append(bad, fmt.Sprintf("%s: Secret %s (volume %s) does not exist and is not optional", w.owner, s.SecretName, v.Name))
				}
				if cm := v.ConfigMap; cm != nil && !(cm.Optional != nil && *cm.Optional) && !m.has("ConfigMap", cm.Name) {
					bad = append(bad, fmt.Sprintf("%s: ConfigMap %s (volume %s) does not exist", w.owner, cm.Name, v.Name))
				}
			}
		}
		for _, c := range m.containers() {
			defined := map[string]bool{}
			for _, e := range c.c.Env {
				defined[e.Name] = true
				if e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil {
					continue
				}
				ref := e.ValueFrom.ConfigMapKeyRef
				if cm := m.configMap(ref.Name); cm == nil {
					bad = append(bad, fmt.Sprintf("%s: env %s: ConfigMap %s does not exist", c, e.Name, ref.Name))
				} else if _, ok := cm.Data[ref.Key]; !ok {
					bad = append(bad, fmt.Sprintf("%s: env %s: ConfigMap %s has no key %s", c, e.Name, ref.Name, ref.Key))
				}
			}
			for _, a := range append(append([]string{}, c.c.Command...), c.c.Args...) {
				for _, ref := range envRef.FindAllStringSubmatch(a, -1) {
					if !defined[ref[1]] {
						bad = append(bad, fmt.Sprintf("%s: %q uses $(%s), which its env does not define", c, a, ref[1]))
					}
				}
			}
			for _, vm := range c.c.VolumeMounts {
				if c.volume(vm.Name) == nil && !c.isClaim(vm.Name) {
					bad = append(bad, fmt.Sprintf("%s: mounts volume %s, which the pod does not have", c, vm.Name))
				}
			}
		}
		return bad
	}},
	{"every flag exists in the binary", func(m manifests) (bad []string) {
		for _, c := range m.containers() {
			if !knownBinary(c.bin()) {
				bad = append(bad, fmt.Sprintf("%s runs %q, not one of %v", c, c.c.Command, binaries))
				continue
			}
			if len(c.c.Command) != 1 || c.c.Command[0] != "/usr/local/bin/"+c.bin() {
				bad = append(bad, fmt.Sprintf("%s: command %q, want [/usr/local/bin/%s]", c, c.c.Command, c.bin()))
			}
			known := m.flags(c.bin())
			for _, a := range c.c.Args {
				if n := flagName(a); n != "" && !known[n] {
					bad = append(bad, fmt.Sprintf("%s: %s has no flag --%s", c, c.bin(), n))
				}
			}
		}
		return bad
	}},
	{"one namespace", func(m manifests) (bad []string) {
		for _, o := range m.objs {
			if o.kind != "Namespace" && o.namespace != m.namespace {
				bad = append(bad, fmt.Sprintf("%s: namespace %q, want %q", o, o.namespace, m.namespace))
			}
		}
		return bad
	}},
	{"ServiceMonitors select metrics Services", func(m manifests) (bad []string) {
		for _, o := range m.objs {
			sm, ok := o.obj.(*serviceMonitor)
			if !ok {
				continue
			}
			sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s: %v", o, err))
				continue
			}
			n := 0
			for _, so := range m.objs {
				svc, ok := so.obj.(*corev1.Service)
				if !ok || !sel.Matches(labels.Set(svc.Labels)) {
					continue
				}
				n++
				for _, ep := range sm.Spec.Endpoints {
					has := false
					for _, p := range svc.Spec.Ports {
						has = has || p.Name == ep.Port
					}
					if !has {
						bad = append(bad, fmt.Sprintf("%s: %s has no port %s", o, so, ep.Port))
					}
				}
			}
			if n != 3 {
				bad = append(bad, fmt.Sprintf("%s selects %d Services, want 3 (supernode, dfdaemon, snapshotter metrics)", o, n))
			}
		}
		return bad
	}},
}

func (m manifests) configMap(name string) *corev1.ConfigMap {
	for _, o := range m.objs {
		if cm, ok := o.obj.(*corev1.ConfigMap); ok && o.name == name {
			return cm
		}
	}
	return nil
}

func (c container) isClaim(name string) bool {
	for _, pvc := range c.w.claims {
		if pvc.Name == name {
			return true
		}
	}
	return false
}

func knownBinary(b string) bool {
	for _, k := range binaries {
		if k == b {
			return true
		}
	}
	return false
}

// checkManifests returns every rule m breaks.
func checkManifests(m manifests) []string {
	var bad []string
	for _, r := range kubeRules {
		for _, p := range r.check(m) {
			bad = append(bad, r.name+": "+p)
		}
	}
	return bad
}

// flagCache returns knownFlags, asking each binary once.
func flagCache(t *testing.T) func(string) map[string]bool {
	seen := map[string]map[string]bool{}
	return func(bin string) map[string]bool {
		if f, ok := seen[bin]; ok {
			return f
		}
		seen[bin] = knownFlags(t, bin)
		return seen[bin]
	}
}

func plainSet(t *testing.T, objs []object) manifests {
	return manifests{objs: objs, namespace: "dfly", flags: flagCache(t),
		// Made by hand (kubectl create secret): never a token in a manifest.
		external: map[string]bool{"Secret/dfly-admin-token": true}, configure: true}
}

func TestKubernetesManifests(t *testing.T) {
	objs, err := decodeFiles(plainManifests(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"Namespace/dfly", "ConfigMap/dfly-config", "ServiceAccount/dfly",
		"Service/dfly-supernode", "Service/dfly-supernode-headless", "StatefulSet/dfly-supernode",
		"Service/dfly-dfdaemon-metrics", "DaemonSet/dfly-dfdaemon",
		"Service/dfly-snapshotter-metrics", "DaemonSet/dfly-snapshotter"}
	var got []string
	for _, o := range objs {
		got = append(got, o.String())
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("objects:\n got %v\nwant %v", got, want)
	}
	for _, p := range checkManifests(plainSet(t, objs)) {
		t.Error(p)
	}
}

// TestKubernetesRulesBite breaks the plain manifests one way at a time and
// expects the decoder or a rule to notice.
func TestKubernetesRulesBite(t *testing.T) {
	cases := []struct {
		name, file string
		old, new   string
		n          int // occurrences replaced (0 = all)
		want       string
	}{
		{"unknown field", "20-supernode.yaml", "          imagePullPolicy: IfNotPresent\n", "          imagePullPolicy: IfNotPresent\n          imagePullPolcy: Always\n", 1, "unknown field"},
		{"duplicate field", "20-supernode.yaml", "  replicas: 1\n", "  replicas: 1\n  replicas: 2\n", 1, "replicas"},
		{"misspelt kind", "30-dfdaemon.yaml", "kind: DaemonSet", "kind: Daemonset", 1, "Daemonset"},
		{"latest image", "30-dfdaemon.yaml", "dfly:0.1.0", "dfly:latest", 1, "tag latest"},
		{"untagged image", "20-supernode.yaml", "dfly:0.1.0", "dfly", 1, "no tag"},
		{"no requests", "40-snapshotter.yaml", "            requests:\n              cpu: 200m\n              memory: 256Mi\n", "", 1, "no cpu and memory requests"},
		{"init container without requests", "30-dfdaemon.yaml", "            requests:\n              cpu: 10m\n              memory: 32Mi\n", "", 1, "containerd-config: no cpu"},
		{"readiness on /healthz", "20-supernode.yaml", "path: /readyz", "path: /healthz", 1, "readiness probe on /healthz"},
		{"liveness on another port", "30-dfdaemon.yaml", "              path: /healthz\n              port: metrics", "              path: /healthz\n              port: upload", 1, "liveness probe on port 8003"},
		{"probe on an undeclared port", "40-snapshotter.yaml", "              port: metrics", "              port: stats", 1, "not a declared container port"},
		{"metrics on loopback only", "30-dfdaemon.yaml", "--metrics-listen=$(NODE_IP):65002", "--metrics-listen=127.0.0.1:65003", 1, "--metrics-listen is 127.0.0.1:65003"},
		{"store in the container", "30-dfdaemon.yaml", "--store=/var/lib/dfly/dfdaemon", "--store=/data/store", 1, "--store /data/store is on no volume"},
		{"store on emptyDir", "30-dfdaemon.yaml", "          hostPath:\n            path: /var/lib/dfly/dfdaemon\n            type: DirectoryOrCreate\n", "          emptyDir: {}\n", 1, "not a hostPath"},
		{"no /dev/fuse", "40-snapshotter.yaml", "            - name: fuse\n              mountPath: /dev/fuse\n", "", 1, "/dev/fuse is not mounted"},
		{"/dev/fuse not a device", "40-snapshotter.yaml", "type: CharDevice", "type: File", 1, "CharDevice"},
		{"snapshotter unprivileged", "40-snapshotter.yaml", "privileged: true", "privileged: false", 1, "not privileged"},
		{"mounts do not propagate", "40-snapshotter.yaml", "              mountPropagation: Bidirectional\n", "", 1, "Bidirectional"},
		{"snapshotter rolling update", "40-snapshotter.yaml", "    type: OnDelete", "    type: RollingUpdate", 1, "OnDelete"},
		{"no host network", "30-dfdaemon.yaml", "      hostNetwork: true\n", "", 1, "hostNetwork"},
		{"service port name typo", "20-supernode.yaml", "      targetPort: upload", "      targetPort: uplaod", 1, "declares no port uplaod"},
		{"service selects nothing", "30-dfdaemon.yaml", "    app.kubernetes.io/component: dfdaemon\n  ports:", "    app.kubernetes.io/component: dfdaemons\n  ports:", 1, "dfly-dfdaemon-metrics selects no pods"},
		{"supernode port moved", "20-supernode.yaml", "      port: 8002\n", "      port: 9002\n", 0, "port grpc is 9002"},
		{"missing ConfigMap key", "10-config.yaml", "  registries: ", "  registry: ", 1, "has no key registries"},
		{"undefined env var", "30-dfdaemon.yaml", "--host-id=$(NODE_NAME)", "--host-id=$(HOSTNAME)", 1, "$(HOSTNAME)"},
		{"unknown flag", "30-dfdaemon.yaml", "--log-level=info", "--log-levels=info", 1, "no flag --log-levels"},
		{"service account token", "20-supernode.yaml", "      automountServiceAccountToken: false\n", "", 1, "service account token"},
		{"another namespace", "40-snapshotter.yaml", "  namespace: dfly\n", "  namespace: default\n", 1, `namespace "default"`},
		{"config.toml off the node", "30-dfdaemon.yaml", "--config=/etc/containerd/config.toml", "--config=/tmp/config.toml", 1, "--config /tmp/config.toml"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			files := plainManifests(t)
			p := filepath.Join("kubernetes", c.file)
			n := c.n
			if n == 0 {
				n = -1
			}
			broken := strings.Replace(files[p], c.old, c.new, n)
			if broken == files[p] {
				t.Fatalf("%q is not in %s", c.old, p)
			}
			files[p] = broken
			var problems []string
			if objs, err := decodeFiles(files); err != nil {
				problems = []string{err.Error()}
			} else {
				problems = checkManifests(plainSet(t, objs))
			}
			if !strings.Contains(strings.Join(problems, "\n"), c.want) {
				t.Errorf("problems %q, want one containing %q", problems, c.want)
			}
		})
	}
}

// TestKubernetesDirHasOnlyManifests: kubectl apply -f DIR reads .yaml files
// only, so anything else there would silently not be applied.
func TestKubernetesDirHasOnlyManifests(t *testing.T) {
	entries, err := os.ReadDir("kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".yaml") {
			t.Errorf("kubernetes/%s: not a .yaml manifest", e.Name())
		}
	}
}
