package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// metricSpec is one metric of the metric-name contract of issue #15 (the
// names every dfly process exposes): its type and its labels with their
// complete value sets (nil: any value).
type metricSpec struct {
	typ    string // counter, gauge, histogram
	labels map[string][]string
}

var contract = map[string]metricSpec{
	// peer side (dfdaemon; dfmount and dfly-snapshotter embed the same engine)
	"dfly_peer_bytes_total":                  {"counter", map[string][]string{"provenance": {"origin", "seed", "peer", "local"}}},
	"dfly_peer_downloads_total":              {"counter", map[string][]string{"result": {"ok", "error", "canceled"}}},
	"dfly_peer_block_fetch_duration_seconds": {"histogram", map[string][]string{"source": {"origin", "seed", "peer"}}},
	"dfly_peer_origin_fallbacks_total":       {"counter", nil},
	"dfly_peer_upload_bytes_total":           {"counter", nil},
	"dfly_peer_uploads_in_flight":            {"gauge", nil},
	"dfly_peer_uploads_rejected_total":       {"counter", map[string][]string{"reason": {"busy", "token", "other"}}},
	"dfly_peer_limiter_wait_seconds_total":   {"counter", map[string][]string{"limiter": {"download", "upload", "preheat"}}},
	"dfly_peer_tasks_active":                 {"gauge", nil},
	"dfly_store_bytes":                       {"gauge", nil},
	"dfly_store_quota_bytes":                 {"gauge", nil},
	"dfly_store_tasks":                       {"gauge", nil},
	"dfly_store_evictions_total":             {"counter", nil},
	"dfly_prefetch_progress_ratio":           {"gauge", map[string][]string{"layer": nil}},
	"dfly_fuse_read_duration_seconds":        {"histogram", nil},
	"dfly_fuse_read_errors_total":            {"counter", nil},
	"dfly_mirror_requests_total": {"counter", map[string][]string{
		"kind": {"blob", "manifest", "other"}, "result": {"p2p", "passthrough", "error"}}},
	// supernode side
	"dfly_supernode_peers":                 {"gauge", nil},
	"dfly_supernode_tasks":                 {"gauge", nil},
	"dfly_scheduler_sync_duration_seconds": {"histogram", nil},
	"dfly_scheduler_assignments_total":     {"counter", map[string][]string{"parent": {"peer", "seed"}}},
	"dfly_scheduler_withheld_total":        {"counter", nil},
	"dfly_seed_cache_total":                {"counter", map[string][]string{"result": {"hit", "miss", "revalidated", "refetched"}}},
	"dfly_seed_origin_bytes_total":         {"counter", nil},
	"dfly_seed_upload_bytes_total":         {"counter", nil},
	"dfly_preheat_jobs":                    {"gauge", map[string][]string{"state": {"queued", "running", "succeeded", "failed", "canceled"}}},
	// every process
	"dfly_build_info": {"gauge", map[string][]string{"component": nil, "version": nil}},
}

// targetLabels are added by Prometheus to every series.
var targetLabels = map[string]bool{"instance": true, "job": true}

// selectorUse is one metric selector in an expression.
type selectorUse struct {
	metric   string // as written (histograms with _bucket, _sum or _count)
	matchers [][3]string
}

// exprUse is what one PromQL expression refers to.
type exprUse struct {
	selectors []selectorUse
	grouping  []string // labels of by (...), without (...), on (...), ...
}

var (
	grafanaVars = regexp.MustCompile(`\$__(rate_interval|interval|range)|\$\{__(rate_interval|interval|range)\}`)
	groupingRe  = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	selectorRe  = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}`)
	matcherRe   = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$`)
	rangeRe     = regexp.MustCompile(`\[[^\]]*\]`)
	stringRe    = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	identRe     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	promKeyword = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
		"group_right": true, "and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true}
)

// parseExpr finds the metric selectors and grouping labels of a PromQL
// expression (enough PromQL for a dashboard: selectors, ranges, functions,
// aggregations, binary operators).
func parseExpr(expr string) (exprUse, error) {
	var u exprUse
	e := grafanaVars.ReplaceAllString(expr, "5m")
	for _, m := range groupingRe.FindAllStringSubmatch(e, -1) {
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				u.grouping = append(u.grouping, l)
			}
		}
	}
	e = groupingRe.ReplaceAllString(e, " ")
	for _, m := range selectorRe.FindAllStringSubmatch(e, -1) {
		s := selectorUse{metric: m[1]}
		if s.metric == "" {
			return u, fmt.Errorf("%q: a selector without a metric name", expr)
		}
		for _, part := range strings.Split(m[2], ",") {
			if strings.TrimSpace(part) == "" {
				continue
			}
			mm := matcherRe.FindStringSubmatch(part)
			if mm == nil {
				return u, fmt.Errorf("%q: cannot read matcher %q", expr, part)
			}
			s.matchers = append(s.matchers, [3]string{mm[1], mm[2], mm[3]})
		}
		u.selectors = append(u.selectors, s)
	}
	e = selectorRe.ReplaceAllString(e, " ")
	e = rangeRe.ReplaceAllString(e, " ")
	e = stringRe.ReplaceAllString(e, " ")
	for _, m := range identRe.FindAllStringSubmatch(e, -1) {
		name := strings.TrimRight(m[0], " (\t")
		if m[1] != "" || promKeyword[strings.ToLower(name)] {
			continue // a function or aggregation, or a keyword
		}
		u.selectors = append(u.selectors, selectorUse{metric: name})
	}
	return u, nil
}

// contractMetric maps a selector's name to its contract entry.
func contractMetric(name string) (string, metricSpec, error) {
	if s, ok := contract[name]; ok {
		if s.typ == "histogram" {
			return "", s, fmt.Errorf("%s is a histogram: select %s_bucket, _sum or _count", name, name)
		}
		return name, s, nil
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if s, ok := contract[base]; ok && s.typ == "histogram" {
				if suffix == "_bucket" {
					s.labels = withLabel(s.labels, "le")
				}
				return base, s, nil
			}
		}
	}
	return "", metricSpec{}, fmt.Errorf("%s is not in the metric-name contract", name)
}

func withLabel(l map[string][]string, name string) map[string][]string {
	out := map[string][]string{name: nil}
	for k, v := range l {
		out[k] = v
	}
	return out
}

// checkExpr returns the ways expr leaves the contract; used collects the
// contract metrics it reads.
func checkExpr(expr string, used map[string]bool) []string {
	u, err := parseExpr(expr)
	if err != nil {
		return []string{err.Error()}
	}
	if len(u.selectors) == 0 {
		return []string{fmt.Sprintf("%q reads no metric", expr)}
	}
	var bad []string
	labelsHere := map[string]bool{}
	for _, s := range u.selectors {
		base, spec, err := contractMetric(s.metric)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%q: %v", expr, err))
			continue
		}
		used[base] = true
		for l := range spec.labels {
			labelsHere[l] = true
		}
		for _, m := range s.matchers {
			label, op, value := m[0], m[1], m[2]
			if targetLabels[label] {
				continue
			}
			values, ok := spec.labels[label]
			if !ok {
				bad = append(bad, fmt.Sprintf("%q: %s has no label %s", expr, s.metric, label))
				continue
			}
			if values == nil || (op != "=" && op != "=~") {
				continue
			}
			alts := []string{value}
			if op == "=~" {
				alts = strings.Split(value, "|")
			}
			for _, a := range alts {
				if !contains(values, a) {
					bad = append(bad, fmt.Sprintf("%q: %s{%s} has no value %q (it has %v)", expr, s.metric, label, a, values))
				}
			}
		}
	}
	for _, g := range u.grouping {
		if !labelsHere[g] && !targetLabels[g] {
			bad = append(bad, fmt.Sprintf("%q: groups by %s, which none of its metrics has", expr, g))
		}
	}
	return bad
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// dashboard is the part of Grafana's dashboard JSON model the test reads.
type dashboard struct {
	UID           string                       `json:"uid"`
	Title         string                       `json:"title"`
	SchemaVersion int                          `json:"schemaVersion"`
	Panels        []panel                      `json:"panels"`
	Templating    struct{ List []templateVar } `json:"templating"`
	Time          struct{ From, To string }    `json:"time"`
}

type templateVar struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Query string `json:"query"`
}

type panel struct {
	ID          int                      `json:"id"`
	Type        string                   `json:"type"`
	Title       string                   `json:"title"`
	Description string                   `json:"description"`
	Datasource  *datasourceRef           `json:"datasource"`
	GridPos     struct{ H, W, X, Y int } `json:"gridPos"`
	Targets     []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Panels []panel `json:"panels"` // of a collapsed row
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

var panelTypes = map[string]bool{"row": true, "timeseries": true, "stat": true, "gauge": true, "bargauge": true, "table": true, "heatmap": true}

// checkDashboard returns what is wrong with the dashboard JSON; used
// collects the contract metrics its expressions read.
func checkDashboard(data []byte, used map[string]bool) []string {
	var bad []string
	fail := func(f string, a ...any) { bad = append(bad, fmt.Sprintf(f, a...)) }
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return []string{"not a dashboard: " + err.Error()}
	}
	if d.UID == "" || len(d.UID) > 40 || d.Title == "" {
		fail("uid %q (1-40 characters) and title %q are required", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 {
		fail("schemaVersion %d: want 36 or later (datasource references by uid)", d.SchemaVersion)
	}
	if d.Time.From == "" || d.Time.To == "" {
		fail("no default time range")
	}
	dsVar := ""
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = v.Name
		}
	}
	if dsVar == "" {
		fail("no Prometheus datasource variable (templating): the dashboard would be tied to one data source")
	}
	ids := map[int]bool{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] || p.ID <= 0 {
				fail("panel %q: id %d is not unique and positive", p.Title, p.ID)
			}
			ids[p.ID] = true
			if !panelTypes[p.Type] || p.Title == "" {
				fail("panel %d: type %q, title %q", p.ID, p.Type, p.Title)
			}
			g := p.GridPos
			if g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
				fail("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Description == "" {
				fail("panel %q: no description (what it shows)", p.Title)
			}
			if p.FieldConfig.Defaults.Unit == "" {
				fail("panel %q: no unit", p.Title)
			}
			if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${"+dsVar+"}" {
				fail("panel %q: datasource %+v, want the Prometheus variable ${%s}", p.Title, p.Datasource, dsVar)
			}
			if len(p.Targets) == 0 {
				fail("panel %q: no queries", p.Title)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.RefID == "" || refs[tg.RefID] {
					fail("panel %q: refId %q missing or repeated", p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
				if tg.Datasource != nil && tg.Datasource.UID != "${"+dsVar+"}" {
					fail("panel %q query %s: datasource %+v", p.Title, tg.RefID, tg.Datasource)
				}
				for _, b := range checkExpr(tg.Expr, used) {
					fail("panel %q: %s", p.Title, b)
				}
			}
		}
	}
	walk(d.Panels)
	return bad
}

func dashboardExprs(t *testing.T, data []byte) []string {
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return exprs
}

const dashboardFile = "grafana/dfly-dashboard.json"

func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, p := range checkDashboard(data, used) {
		t.Error(p)
	}
	// The dashboard shows the whole contract.
	var missing []string
	for name := range contract {
		if !used[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("the dashboard shows none of %v", missing)
	}
}

// TestGrafanaExpressionsParse has Prometheus's own parser read every query
// (promtool check rules on a rule file of them).
func TestGrafanaExpressionsParse(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (Debian package prometheus): PromQL of the dashboard not parsed")
	}
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range dashboardExprs(t, data) {
		e = grafanaVars.ReplaceAllString(e, "5m")
		q, _ := json.Marshal(e) // a JSON string is a YAML string
		fmt.Fprintf(&b, "      - record: dfly:dashboard_query_%d\n        expr: %s\n", i, q)
	}
	p := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", p).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

// TestCheckExpr: the expression rules, one case each.
func TestCheckExpr(t *testing.T) {
	for _, c := range []struct {
		expr string
		want string // "" = no problem
	}{
		{`sum(rate(dfly_peer_bytes_total{provenance="peer"}[$__rate_interval])) / sum(rate(dfly_peer_bytes_total[$__rate_interval]))`, ""},
		{`histogram_quantile(0.99, sum by (le, source) (rate(dfly_peer_block_fetch_duration_seconds_bucket[5m])))`, ""},
		{`dfly_store_bytes / (dfly_store_quota_bytes > 0)`, ""},
		{`sum(rate(dfly_seed_cache_total{result=~"hit|revalidated"}[5m]))`, ""},
		{`count by (component, version) (dfly_build_info)`, ""},
		{`dfly_peer_uploads_in_flight{instance="a:1"}`, ""},
		{`rate(dfly_peer_bytes_total{provenance="swarm"}[5m])`, `has no value "swarm"`},
		{`rate(dfly_seed_cache_total{result=~"hit|stale"}[5m])`, `has no value "stale"`},
		{`rate(dfly_peer_bytez_total[5m])`, "dfly_peer_bytez_total is not in the metric-name contract"},
		{`rate(dfly_peer_downloads_total{status="ok"}[5m])`, "has no label status"},
		{`sum by (source) (rate(dfly_peer_downloads_total[5m]))`, "groups by source"},
		{`rate(dfly_fuse_read_duration_seconds[5m])`, "is a histogram"},
		{`rate(dfly_peer_origin_fallbacks_total_bucket[5m])`, "not in the metric-name contract"},
		{`up`, "up is not in the metric-name contract"},
		{`vector(1)`, "reads no metric"},
	} {
		got := strings.Join(checkExpr(c.expr, map[string]bool{}), "\n")
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("checkExpr(%s) = %q, want %q", c.expr, got, c.want)
		}
	}
}

// TestCheckDashboardBites breaks the dashboard one way at a time.
func TestCheckDashboardBites(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, old, new, want string
	}{
		{"not JSON", `"panels": [`, `"panels": [,`, "not a dashboard"},
		{"no uid", `"uid": "dfly-overview"`, `"uid": ""`, "uid"},
		{"old schema", `"schemaVersion": 39`, `"schemaVersion": 16`, "schemaVersion"},
		{"fixed data source", `"uid": "${datasource}"`, `"uid": "prom-1"`, "datasource"},
		{"off the grid", `"w": 24,`, `"w": 25,`, "24-column grid"},
		{"unknown metric", `dfly_supernode_peers`, `dfly_supernode_hosts`, "dfly_supernode_hosts is not in the metric-name contract"},
	} {
		t.Run(c.name, func(t *testing.T) {
			broken := strings.Replace(string(data), c.old, c.new, 1)
			if broken == string(data) {
				t.Fatalf("%q is not in the dashboard", c.old)
			}
			got := strings.Join(checkDashboard([]byte(broken), map[string]bool{}), "\n")
			if !strings.Contains(got, c.want) {
				t.Errorf("problems %q, want one naming %q", got, c.want)
			}
		})
	}
}
