package health

// The chart's Argo CD health checks in Argo CD's own Lua VM. The cases (objects whose statuses
// the operator's own code produced, and the health each must get) come from a JSON file that
// tests/unit/test_argocd_lua_vm.py writes; MODELOPS_ARGOCD_CASES names it and
// MODELOPS_ARGOCD_CHECKS the directory of <group>/<kind>/health.lua.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/argoproj/argo-cd/v3/util/lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

type healthCase struct {
	Name            string         `json:"name"`
	Object          map[string]any `json:"object"`
	Status          string         `json:"status"`
	MessageContains string         `json:"messageContains"`
}

func TestChartHealthChecks(t *testing.T) {
	raw, err := os.ReadFile(os.Getenv("MODELOPS_ARGOCD_CASES"))
	if err != nil {
		t.Fatalf("reading the cases: %v", err)
	}
	var cases []healthCase
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatalf("decoding the cases: %v", err)
	}
	if len(cases) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			obj := &unstructured.Unstructured{Object: c.Object}
			gvk := obj.GroupVersionKind()
			script, err := os.ReadFile(filepath.Join(os.Getenv("MODELOPS_ARGOCD_CHECKS"), gvk.Group, gvk.Kind, "health.lua"))
			if err != nil {
				t.Fatalf("no health check for %s: %v", gvk, err)
			}
			// As the application controller runs a health.lua from argocd-cm: standard libraries off.
			vm := lua.VM{}
			got, err := vm.ExecuteHealthLua(obj, string(script))
			if err != nil {
				t.Fatalf("the script failed: %v", err)
			}
			if string(got.Status) != c.Status {
				t.Errorf("status %q (message %q), want %q", got.Status, got.Message, c.Status)
			}
			if !strings.Contains(got.Message, c.MessageContains) {
				t.Errorf("message %q does not contain %q", got.Message, c.MessageContains)
			}
		})
	}
}
