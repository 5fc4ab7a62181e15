package deploy

import (
	"os"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// Prometheus scrapes the admin listener, where /metrics is; the Service, which takes
// the internet's webhooks, exposes only the public listener.
func TestKubernetesPortsSplitPublicAndAdmin(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("kubernetes/keysync.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var dep appsv1.Deployment
	var svc corev1.Service
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var meta struct{ Kind string }
		_ = yaml.Unmarshal([]byte(doc), &meta)
		switch meta.Kind {
		case "Deployment":
			strict(t, doc, &dep)
		case "Service":
			strict(t, doc, &svc)
		}
	}
	c := dep.Spec.Template.Spec.Containers[0]
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	listen := map[string]string{}
	for _, e := range c.Env {
		listen[e.Name] = e.Value
	}
	for name, variable := range map[string]string{"http": "KEYSYNC_LISTEN", "admin": "KEYSYNC_ADMIN_LISTEN"} {
		if want := ":" + strconv.Itoa(int(ports[name])); ports[name] == 0 || listen[variable] != want {
			t.Errorf("container port %s is %d, but %s is %q", name, ports[name], variable, listen[variable])
		}
	}
	if got := dep.Spec.Template.Annotations["prometheus.io/port"]; got != strconv.Itoa(int(ports["admin"])) {
		t.Errorf("Prometheus scrapes port %s, want the admin listener's %d", got, ports["admin"])
	}
	for _, p := range svc.Spec.Ports {
		if p.TargetPort.String() != "http" {
			t.Errorf("the Service exposes %s; want only the public listener (http)", p.TargetPort.String())
		}
	}
}
