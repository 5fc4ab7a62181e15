package deploy

import (
	"os"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// The registry-free image (deploy/image/Containerfile, which `make image-test` builds and
// runs) and the registry-based one (deploy/Dockerfile) run keysync alike, as the numeric
// user the Kubernetes Deployment names: runAsNonRoot can verify only a numeric USER.
func TestImagesAgree(t *testing.T) {
	t.Parallel()
	scratch := finalStage(t, "image/Containerfile")
	docker := finalStage(t, "Dockerfile")
	for _, k := range []string{"USER", "EXPOSE", "ENTRYPOINT", "CMD"} {
		if scratch[k] == "" || scratch[k] != docker[k] {
			t.Errorf("%s: image/Containerfile has %q, Dockerfile %q", k, scratch[k], docker[k])
		}
	}
	if scratch["FROM"] != "scratch" {
		t.Errorf("image/Containerfile builds FROM %q, want scratch: it must build without a registry", scratch["FROM"])
	}

	const uid = "65532"
	if got := scratch["USER"]; got != uid+":"+uid {
		t.Errorf("USER %q, want %s:%s", got, uid, uid)
	}
	if got := deploymentUser(t); got != uid {
		t.Errorf("the Deployment's runAsUser is %s, the images' user %s", got, uid)
	}

	// The image's passwd and group name the user, as distroless's do: keysync's operator
	// commands (run in the container) audit under its name.
	passwd, _ := os.ReadFile("image/passwd")
	group, _ := os.ReadFile("image/group")
	if u := entry(string(passwd), uid); len(u) != 7 || u[3] != uid || entry(string(group), uid) == nil {
		t.Errorf("image/passwd and image/group do not name uid and gid %s:\n%s%s", uid, passwd, group)
	}
}

// finalStage returns the instructions of a Containerfile's last stage, by keyword
// (upper case) with their arguments as written; FROM's names the base without its alias.
func finalStage(t *testing.T, path string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stage map[string]string
	text := strings.ReplaceAll(string(raw), "\\\n", " ")
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		keyword, args, _ := strings.Cut(line, " ")
		keyword, args = strings.ToUpper(keyword), strings.TrimSpace(args)
		if keyword == "FROM" {
			stage = map[string]string{"FROM": strings.Fields(args)[0]}
			continue
		}
		if stage == nil {
			t.Fatalf("%s: %s before FROM", path, keyword)
		}
		stage[keyword] = args
	}
	if stage == nil {
		t.Fatalf("%s: no FROM", path)
	}
	return stage
}

// deploymentUser returns the runAsUser of the Deployment in kubernetes/keysync.yaml.
func deploymentUser(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("kubernetes/keysync.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for doc := range strings.SplitSeq(string(raw), "\n---\n") {
		var d appsv1.Deployment
		if err := yaml.Unmarshal([]byte(doc), &d); err != nil {
			t.Fatal(err)
		}
		if d.Kind != "Deployment" {
			continue
		}
		if sc := d.Spec.Template.Spec.SecurityContext; sc != nil && sc.RunAsUser != nil {
			return strconv.FormatInt(*sc.RunAsUser, 10)
		}
		t.Fatal("the Deployment sets no pod runAsUser")
	}
	t.Fatal("no Deployment in kubernetes/keysync.yaml")
	return ""
}

// entry returns the fields of the line of a passwd or group file whose id (the third
// field) is id, or nil.
func entry(file, id string) []string {
	for line := range strings.SplitSeq(file, "\n") {
		if f := strings.Split(line, ":"); len(f) > 2 && f[2] == id {
			return f
		}
	}
	return nil
}
