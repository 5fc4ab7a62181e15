// Package deploy holds keysync's deployment files; its tests check them with the same
// libraries the tools use (no Docker engine or cluster runs on these machines).
package deploy

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
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
	var limit string
	if v := ks.Environment["GOMEMLIMIT"]; v != nil {
		limit = *v
	}
	checkMemLimit(t, "docker-compose.yml", limit, int64(ks.MemLimit))
}

// checkMemLimit checks that GOMEMLIMIT is set and below the memory the process may use:
// the Go runtime then collects harder as the heap nears it, before the kernel kills it.
func checkMemLimit(t *testing.T, where, gomemlimit string, max int64) {
	t.Helper()
	m := regexp.MustCompile(`^([0-9]+)(B|KiB|MiB|GiB)?$`).FindStringSubmatch(gomemlimit)
	if m == nil {
		t.Fatalf("%s: GOMEMLIMIT is %q, want a size such as 230MiB", where, gomemlimit)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	n <<= map[string]int{"": 0, "B": 0, "KiB": 10, "MiB": 20, "GiB": 30}[m[2]]
	if max <= 0 || n >= max || n < max/2 {
		t.Fatalf("%s: GOMEMLIMIT %s is %d bytes, want it below the memory limit (%d bytes) and above half of it", where, gomemlimit, n, max)
	}
}

// The manifests decode strictly (unknown fields fail) into the Kubernetes API types,
// and keep the properties a hardened deployment needs: a pinned image, no service
// account token, probes, GOMEMLIMIT, NetworkPolicies, and the two database roles (a
// migration Job, a Deployment that does not migrate).
func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("kubernetes/keysync.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var (
		deploy   *appsv1.Deployment
		job      *batchv1.Job
		secrets  = map[string]corev1.Secret{}
		policies []networkingv1.NetworkPolicy
		kinds    = map[string]bool{}
	)
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		kinds[meta.Kind] = true
		switch meta.Kind {
		case "Deployment":
			deploy = &appsv1.Deployment{}
			strict(t, doc, deploy)
		case "Job":
			job = &batchv1.Job{}
			strict(t, doc, job)
		case "NetworkPolicy":
			var p networkingv1.NetworkPolicy
			strict(t, doc, &p)
			policies = append(policies, p)
		case "Service":
			var s corev1.Service
			strict(t, doc, &s)
		case "Secret":
			var s corev1.Secret
			strict(t, doc, &s)
			secrets[s.Name] = s
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
	for _, k := range []string{"Deployment", "Job", "NetworkPolicy", "Service", "Secret", "ConfigMap", "PodDisruptionBudget"} {
		if !kinds[k] {
			t.Fatalf("no %s", k)
		}
	}

	if rs := secrets["keysync"].StringData; rs["DATABASE_URL"] == "" || rs["STRIPE_API_KEY"] == "" || rs["CRYPTOLENS_TOKEN"] == "" {
		t.Fatalf("the Secret keysync lacks keysync's required variables: %v", keysOf(rs))
	}

	// The Deployment serves as the runtime role and never migrates.
	d := deploy.Spec.Template.Spec
	c := d.Containers[0]
	if *deploy.Spec.Replicas != 2 || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
		c.StartupProbe == nil || c.StartupProbe.HTTPGet == nil || c.StartupProbe.FailureThreshold*c.StartupProbe.PeriodSeconds < 30 ||
		c.Resources.Limits.Memory().IsZero() || c.Resources.Limits.Cpu().IsZero() || !*d.SecurityContext.RunAsNonRoot {
		t.Fatalf("deployment: want probes (startup, readiness, liveness), limits and non-root: %+v", deploy.Spec)
	}
	if grace := *d.TerminationGracePeriodSeconds; grace <= 30 {
		t.Fatalf("terminationGracePeriodSeconds %d must exceed KEYSYNC_SHUTDOWN_TIMEOUT (30s)", grace)
	}
	if envValue(c, "KEYSYNC_MIGRATE") != "false" || len(c.Args) != 1 || c.Args[0] != "serve" {
		t.Fatalf("deployment: args %v, KEYSYNC_MIGRATE %q; want serve with KEYSYNC_MIGRATE=false (the Job migrates)", c.Args, envValue(c, "KEYSYNC_MIGRATE"))
	}
	checkMemLimit(t, "Deployment", envValue(c, "GOMEMLIMIT"), c.Resources.Limits.Memory().Value())

	// Behind the Ingress every request comes from its controller: without the header
	// that names the client, every customer would share one per-client limit.
	if h := envValue(c, "KEYSYNC_CLIENT_IP_HEADER"); !regexp.MustCompile(`^[A-Za-z0-9-]+$`).MatchString(h) {
		t.Fatalf("deployment: KEYSYNC_CLIENT_IP_HEADER %q, want the header the Ingress names the client in (X-Forwarded-For)", h)
	}

	// The Job migrates as the migration role and grants the Deployment's role.
	if job == nil {
		t.Fatal("no migration Job")
	}
	j := job.Spec.Template.Spec
	m := j.Containers[0]
	if len(m.Args) != 1 || m.Args[0] != "migrate" || j.RestartPolicy == corev1.RestartPolicyAlways ||
		!*j.SecurityContext.RunAsNonRoot || !*m.SecurityContext.ReadOnlyRootFilesystem || m.Resources.Limits.Memory().IsZero() {
		t.Fatalf("job: want `migrate`, non-root, a read-only root and limits: %+v", j)
	}
	checkMemLimit(t, "Job", envValue(m, "GOMEMLIMIT"), m.Resources.Limits.Memory().Value())
	var migrateSecret string
	for _, e := range m.Env {
		if e.Name == "DATABASE_URL" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			migrateSecret = e.ValueFrom.SecretKeyRef.Name
		}
	}
	runtimeUser := dbUser(t, secrets["keysync"].StringData["DATABASE_URL"])
	migrateUser := dbUser(t, secrets[migrateSecret].StringData["DATABASE_URL"])
	roles, _ := os.ReadFile("postgres/roles.sql")
	if migrateUser == runtimeUser || envValue(m, "KEYSYNC_RUNTIME_ROLE") != runtimeUser ||
		!strings.Contains(string(roles), "CREATE ROLE "+runtimeUser+" ") || !strings.Contains(string(roles), "CREATE ROLE "+migrateUser+" ") {
		t.Fatalf("the Job connects as %q (secret %q) and grants %q; the Deployment connects as %q: want the two roles of postgres/roles.sql, the Job granting the Deployment's",
			migrateUser, migrateSecret, envValue(m, "KEYSYNC_RUNTIME_ROLE"), runtimeUser)
	}

	// Both run the same pinned image, without a service account token.
	image := c.Image
	if m.Image != image || strings.HasSuffix(image, ":latest") || !regexp.MustCompile(`:[0-9][^/]*$|@sha256:[0-9a-f]{64}$`).MatchString(image) {
		t.Fatalf("images %q (Deployment) and %q (Job): want one release pinned by a version tag or digest, never latest", image, m.Image)
	}
	for name, spec := range map[string]corev1.PodSpec{"Deployment": d, "Job": j} {
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Fatalf("%s: automountServiceAccountToken must be false (keysync never calls the Kubernetes API)", name)
		}
	}

	// Each pod is fenced by a NetworkPolicy: ingress only to its ports (the admin port
	// only from selected namespaces or pods), egress only to the ports it needs.
	checkNetworkPolicy(t, policies, deploy.Spec.Template.Labels, c.Ports, []string{"admin"}, []int{53, 443, 5432})
	checkNetworkPolicy(t, policies, job.Spec.Template.Labels, nil, nil, []int{53, 5432})
}

// checkNetworkPolicy checks that a policy selects the pods labelled so, governs both
// directions, admits traffic only to the pods' ports (none: no ingress rule), to the
// restricted ones (by name) only from selected namespaces or pods, and lets them out
// only to egress ports.
func checkNetworkPolicy(t *testing.T, policies []networkingv1.NetworkPolicy, podLabels map[string]string, ports []corev1.ContainerPort,
	restricted []string, egress []int) {
	t.Helper()
	for _, p := range policies {
		if !selects(p.Spec.PodSelector.MatchLabels, podLabels) || len(p.Spec.PodSelector.MatchExpressions) > 0 {
			continue
		}
		if len(p.Spec.PolicyTypes) != 2 {
			t.Fatalf("NetworkPolicy %s: policyTypes %v, want Ingress and Egress", p.Name, p.Spec.PolicyTypes)
		}
		open, fenced := map[string]bool{}, map[string]bool{}
		for _, cp := range ports {
			open[cp.Name], open[strconv.Itoa(int(cp.ContainerPort))] = true, true
			if slices.Contains(restricted, cp.Name) {
				fenced[cp.Name], fenced[strconv.Itoa(int(cp.ContainerPort))] = true, true
			}
		}
		admitted := map[string]bool{}
		for _, rule := range p.Spec.Ingress {
			if len(rule.Ports) == 0 {
				t.Fatalf("NetworkPolicy %s: an ingress rule open to every port", p.Name)
			}
			for _, rp := range rule.Ports {
				if rp.Port == nil || !open[rp.Port.String()] {
					t.Fatalf("NetworkPolicy %s: ingress to port %v, which the pod does not serve", p.Name, rp.Port)
				}
				if fenced[rp.Port.String()] {
					if why := openPeers(rule.From); why != "" {
						t.Fatalf("NetworkPolicy %s: ingress to port %v %s; want it only from selected namespaces or pods", p.Name, rp.Port, why)
					}
					admitted[rp.Port.String()] = true
				}
			}
		}
		for _, name := range restricted {
			if !admitted[name] {
				t.Fatalf("NetworkPolicy %s: no ingress rule admits port %s from anyone, want one from its selected clients", p.Name, name)
			}
		}
		if len(ports) == 0 && len(p.Spec.Ingress) > 0 {
			t.Fatalf("NetworkPolicy %s: ingress rules for pods that serve nothing", p.Name)
		}
		allowed, seen := map[string]bool{}, map[string]bool{}
		for _, n := range egress {
			allowed[strconv.Itoa(n)] = true
		}
		for _, rule := range p.Spec.Egress {
			if len(rule.Ports) == 0 {
				t.Fatalf("NetworkPolicy %s: an egress rule open to every port", p.Name)
			}
			for _, rp := range rule.Ports {
				if rp.Port == nil || !allowed[rp.Port.String()] {
					t.Fatalf("NetworkPolicy %s: egress to port %v, want only %v", p.Name, rp.Port, egress)
				}
				seen[rp.Port.String()] = true
			}
		}
		if len(seen) != len(allowed) {
			t.Fatalf("NetworkPolicy %s: egress to %v, want %v, which the pods need", p.Name, keysOf(seen), keysOf(allowed))
		}
		return
	}
	t.Fatalf("no NetworkPolicy selects the pods labelled %v", podLabels)
}

// openPeers says how an ingress rule's from list lets anyone in ("" when it does not):
// an empty list admits every source, an ipBlock any address in it (the internet, for
// 0.0.0.0/0), and an empty selector every namespace or pod.
func openPeers(from []networkingv1.NetworkPolicyPeer) string {
	if len(from) == 0 {
		return "from anywhere (no from)"
	}
	for _, peer := range from {
		ns, pod := peer.NamespaceSelector, peer.PodSelector
		switch {
		case peer.IPBlock != nil:
			return "from an ipBlock (" + peer.IPBlock.CIDR + ")"
		case ns == nil && pod == nil:
			return "from an empty peer"
		case ns != nil && len(ns.MatchLabels) == 0 && len(ns.MatchExpressions) == 0:
			return "from every namespace (an empty namespaceSelector)"
		case ns == nil && len(pod.MatchLabels) == 0 && len(pod.MatchExpressions) == 0:
			return "from every pod of the namespace (an empty podSelector)"
		}
	}
	return ""
}

// selects reports whether a non-empty matchLabels selector matches the labels.
func selects(matchLabels, labels map[string]string) bool {
	for k, v := range matchLabels {
		if labels[k] != v {
			return false
		}
	}
	return len(matchLabels) > 0
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func dbUser(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		t.Fatalf("DATABASE_URL %q names no user", raw)
	}
	return u.User.Username()
}

func strict(t *testing.T, doc string, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
		t.Fatalf("%T: %v", into, err)
	}
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
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

// The unit runs the two database roles (ExecStartPre= migrates as the migration role,
// serve does not migrate), hands secrets over as credentials, not environment, caps
// memory, and does not restart on a configuration error.
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	unit := readUnit(t, "systemd/keysync.service")
	one := func(key string) string {
		t.Helper()
		if len(unit[key]) != 1 {
			t.Fatalf("unit: got %s=%q, want exactly one", key, unit[key])
		}
		return unit[key][0]
	}
	if one("ExecStart") != "/usr/local/bin/keysync serve" || one("RestartPreventExitStatus") != "2" || one("KillSignal") != "SIGTERM" {
		t.Fatalf("unit: ExecStart=%q RestartPreventExitStatus=%q KillSignal=%q; want serve, 2 (a configuration error), SIGTERM",
			one("ExecStart"), one("RestartPreventExitStatus"), one("KillSignal"))
	}

	// Environment= lines hold several assignments each; *_FILE paths name credentials.
	env := map[string]string{}
	for _, line := range unit["Environment"] {
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	creds := map[string]bool{}
	for _, c := range unit["LoadCredential"] {
		name, path, _ := strings.Cut(c, ":")
		if !strings.HasPrefix(path, "/etc/keysync/credentials/") {
			t.Fatalf("LoadCredential=%s: want a file under /etc/keysync/credentials", c)
		}
		creds[name] = true
	}
	for _, secret := range []string{"DATABASE_URL", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRETS", "CRYPTOLENS_TOKEN", "KEYSYNC_ADMIN_TOKEN"} {
		if _, ok := env[secret]; ok {
			t.Fatalf("unit sets %s in its environment, want it as a credential (%s_FILE)", secret, secret)
		}
		file, ok := strings.CutPrefix(env[secret+"_FILE"], "%d/")
		if !ok || !creds[file] {
			t.Fatalf("unit: %s_FILE=%q, want %%d/<name> of a LoadCredential=", secret, env[secret+"_FILE"])
		}
	}

	// Two roles: the migration role's URL only for ExecStartPre's migrate.
	pre := regexp.MustCompile(`^/usr/bin/env DATABASE_URL_FILE=%d/([a-z-]+) /usr/local/bin/keysync migrate$`).FindStringSubmatch(one("ExecStartPre"))
	roles, _ := os.ReadFile("postgres/roles.sql")
	if pre == nil || !creds[pre[1]] || pre[1] == strings.TrimPrefix(env["DATABASE_URL_FILE"], "%d/") ||
		env["KEYSYNC_MIGRATE"] != "false" || !strings.Contains(string(roles), "CREATE ROLE "+env["KEYSYNC_RUNTIME_ROLE"]+" ") {
		t.Fatalf("unit: ExecStartPre=%q, KEYSYNC_MIGRATE=%q, KEYSYNC_RUNTIME_ROLE=%q; want keysync migrate with a credential of its own, serve not migrating, and the runtime role of postgres/roles.sql",
			one("ExecStartPre"), env["KEYSYNC_MIGRATE"], env["KEYSYNC_RUNTIME_ROLE"])
	}

	// Memory: GOMEMLIMIT below MemoryMax.
	max := regexp.MustCompile(`^([0-9]+)M$`).FindStringSubmatch(one("MemoryMax"))
	if max == nil {
		t.Fatalf("MemoryMax=%q, want megabytes (256M)", one("MemoryMax"))
	}
	mb, _ := strconv.ParseInt(max[1], 10, 64)
	checkMemLimit(t, "keysync.service", env["GOMEMLIMIT"], mb<<20)

	// The sandbox, directive by directive, so that it holds where systemd-analyze is
	// not installed (TestSystemdUnitExposure rates the whole).
	for key, want := range map[string]string{
		"DynamicUser": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "ProtectSystem": "strict",
		"ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes", "PrivateUsers": "yes", "ProtectKernelTunables": "yes",
		"ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
		"ProtectProc": "invisible", "ProcSubset": "pid", "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes",
		"MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native", "UMask": "0077",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
	} {
		if got := one(key); got != want {
			t.Fatalf("unit: %s=%q, want %q", key, got, want)
		}
	}
}

// systemd rates the unit's exposure "OK" (at most 2.0 of 10). Debian's systemd package
// has systemd-analyze; .ci/run installs it where it is missing.
func TestSystemdUnitExposure(t *testing.T) {
	t.Parallel()
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze is not installed: apt-get install systemd (.ci/run does)")
	}
	out, err := exec.Command(tool, "security", "--offline=true", "systemd/keysync.service").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for keysync\.service: ([0-9.]+) (\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze printed no overall exposure:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security --offline=true: %s %s", m[1], m[2])
	if score > 2.0 {
		t.Fatalf("exposure %s %s, want at most 2.0 (OK):\n%s", m[1], m[2], out)
	}
}

// readUnit parses a systemd unit file into its directives' values, in order (sections
// merged: the unit uses each key in one section only).
func readUnit(t *testing.T, path string) map[string][]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string][]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: cannot read %q", path, line)
		}
		unit[k] = append(unit[k], v)
	}
	return unit
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
