"""Render the Triton pod templates of a set of objects with the operator found on PYTHONPATH.

Reads a JSON list of {"name", "deployment", "model", "version"} (the objects as the API server
stores them) on stdin and writes {name: pod template} on stdout. It uses only the entry points
the reconcile uses (model_validate, VersionView.from_body, render_deployment), so it runs the
same on the last release's tree (`git archive`) and on HEAD: tests/unit/test_upgrade_render.py
compares the two. HEAD's render_deployment takes its inputs as one `DeploymentInputs`; the
release's took them as keyword arguments."""

import json
import sys

from modelops.api import ModelDeploymentSpec, ModelSpec
from modelops.core import render
from modelops.core.objects import OwnerRef, VersionView
from modelops.settings import Settings


def main() -> None:
    settings = Settings.from_env({})
    templates = {}
    for case in json.load(sys.stdin):
        md = case["deployment"]
        spec = ModelDeploymentSpec.model_validate(md["spec"])
        inputs = {
            "name": md["metadata"]["name"], "namespace": md["metadata"]["namespace"], "owner": OwnerRef.of(md), "spec": spec,
            "model_name": spec.model, "model": ModelSpec.model_validate(case["model"]["spec"]),
            "version": VersionView.from_body(case["version"]), "settings": settings,
            "retry": (md["metadata"].get("annotations") or {}).get("modelops.dev/retry"),
        }
        if hasattr(render, "DeploymentInputs"):
            rendered = render.render_deployment(render.DeploymentInputs(**inputs))
        else:
            rendered = render.render_deployment(**inputs)
        templates[case["name"]] = rendered["spec"]["template"]
    json.dump(templates, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()
