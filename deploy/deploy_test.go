// Package deploy holds keysync's deployment files; its tests check them with the same
// libraries the tools use (no Docker engine or cluster runs on these machines).
package deploy

import (
	"context"
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/metrics"
)

// The compose file loads and validates as Docker Compose itself would load it.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  "..",
		ConfigFiles: []types.ConfigFile{{Filename: "../docker-compose.yml"}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) { o.SetProjectName("keysync", true) })
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"postgres", "sandbox", "keysync"} {
		if _, ok := p.Services[name]; !ok {
			t.Fatalf("no %s service", name)
		}
	}
	ks := p.Services["keysync"]
	if ks.DependsOn["postgres"].Condition != "service_healthy" || ks.Build == nil || ks.Build.Dockerfile != "deploy/Dockerfile" {
		t.Fatalf("keysync service: %+v", ks)
	}
	if v := ks.Environment["STRIPE_API_BASE"]; v == nil || *v != "http://sandbox:12111" {
		t.Fatalf("keysync does not talk to the sandbox: %v", ks.Environment)
	}
	if p.Services["sandbox"].Build.Target != "sandbox" {
		t.Fatal("the sandbox service does not build the sandbox target")
	}
}

// The manifests decode strictly (unknown fields fail) into the Kubernetes API types.
func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("kubernetes/keysync.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		kinds[meta.Kind] = true
		switch meta.Kind {
		case "Deployment":
			var d appsv1.Deployment
			strict(t, doc, &d)
			c := d.Spec.Template.Spec.Containers[0]
			if *d.Spec.Replicas != 2 || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
				c.Resources.Limits.Memory().IsZero() || c.Resources.Limits.Cpu().IsZero() || !*d.Spec.Template.Spec.SecurityContext.RunAsNonRoot {
				t.Fatalf("deployment: %+v", d.Spec)
			}
			if grace := *d.Spec.Template.Spec.TerminationGracePeriodSeconds; grace <= 30 {
				t.Fatalf("terminationGracePeriodSeconds %d must exceed KEYSYNC_SHUTDOWN_TIMEOUT (30s)", grace)
			}
		case "Service":
			var s corev1.Service
			strict(t, doc, &s)
		case "Secret":
			var s corev1.Secret
			strict(t, doc, &s)
			if s.StringData["DATABASE_URL"] == "" || s.StringData["STRIPE_API_KEY"] == "" || s.StringData["CRYPTOLENS_TOKEN"] == "" {
				t.Fatalf("secret lacks keysync's required variables: %v", keys(s.StringData))
			}
		case "ConfigMap":
			var cm corev1.ConfigMap
			strict(t, doc, &cm)
			if _, err := license.ParsePlans("plans.yaml", []byte(cm.Data["plans.yaml"]), 1001); err != nil {
				t.Fatalf("the ConfigMap's plans file: %v", err)
			}
		case "PodDisruptionBudget":
			var p policyv1.PodDisruptionBudget
			strict(t, doc, &p)
		default:
			t.Fatalf("unexpected kind %q", meta.Kind)
		}
	}
	for _, k := range []string{"Deployment", "Service", "Secret", "ConfigMap", "PodDisruptionBudget"} {
		if !kinds[k] {
			t.Fatalf("no %s", k)
		}
	}
}

func strict(t *testing.T, doc string, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
		t.Fatalf("%T: %v", into, err)
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// The image is built with the same command as `make build`.
func TestDockerfileBuildsLikeMake(t *testing.T) {
	t.Parallel()
	mk, _ := os.ReadFile("../Makefile")
	df, _ := os.ReadFile("Dockerfile")
	m := regexp.MustCompile(`(?m)^BUILD\s*=\s*(.+)$`).FindStringSubmatch(string(mk))
	if m == nil {
		t.Fatal("no BUILD in the Makefile")
	}
	build := strings.NewReplacer("$(GO)", "go", "$(VERSION)", "${VERSION}").Replace(strings.TrimSpace(m[1]))
	for _, bin := range []string{"keysync", "keysync-sandbox"} {
		want := "RUN " + build + " -o /out/" + bin + " ./cmd/" + bin
		if !strings.Contains(string(df), want) {
			t.Fatalf("the Dockerfile does not build %s with `make build`'s command:\n  want %s", bin, want)
		}
	}
}

func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	raw, _ := os.ReadFile("systemd/keysync.service")
	unit := string(raw)
	for _, want := range []string{"[Unit]", "[Service]", "[Install]", "ExecStart=/usr/local/bin/keysync serve",
		"EnvironmentFile=/etc/keysync/keysync.env", "KillSignal=SIGTERM", "NoNewPrivileges=yes"} {
		if !strings.Contains(unit, want) {
			t.Fatalf("unit lacks %q", want)
		}
	}
}

// Every metric the alerts and the dashboard query exists.
func TestAlertsAndDashboardUseRealMetrics(t *testing.T) {
	t.Parallel()
	known := metricNames(t)
	var exprs []string
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	raw, _ := os.ReadFile("prometheus/alerts.yml")
	if err := yaml.UnmarshalStrict(raw, &rules); err != nil {
		t.Fatal(err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	var dash struct {
		Panels []struct {
			Targets []struct{ Expr string }
		}
	}
	raw, _ = os.ReadFile("grafana/keysync-dashboard.json")
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("got %d expressions", len(exprs))
	}
	name := regexp.MustCompile(`keysync_[a-z_]+`)
	for _, e := range exprs {
		for _, n := range name.FindAllString(e, -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count"), "_sum")
			if !known[base] {
				t.Fatalf("%q uses %s, which keysync does not export", e, n)
			}
		}
	}
}

type fakeDB struct{}

func (fakeDB) JobsByState(context.Context) (map[string]int, error)       { return map[string]int{}, nil }
func (fakeDB) OldestPendingEvent(context.Context) (time.Duration, error) { return 0, nil }
func (fakeDB) LastSweep(context.Context) (time.Duration, bool, error)    { return 0, true, nil }

func metricNames(t *testing.T) map[string]bool {
	t.Helper()
	m := metrics.New()
	m.Watch(fakeDB{}, fakeDB{}, func() time.Duration { return 0 })
	m.WatchSweeps(fakeDB{}, time.Hour)
	known := map[string]bool{}
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok {
			continue
		}
		ch := make(chan *prometheus.Desc)
		go func() {
			c.Describe(ch)
			close(ch)
		}()
		for d := range ch {
			if m := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(d.String()); m != nil {
				known[m[1]] = true
			}
		}
	}
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		known[f.GetName()] = true
	}
	return known
}
