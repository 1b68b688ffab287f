"""`make samples`: config/samples/ filled in for the local test bed.

    make samples        # MODELOPS_TESTBED_INDEX picks the test bed, as for the tests

Brings up the test bed (or reuses it), trains the digits classifier with seed 0 (version 1)
and seed 1 (version 2), uploads both and the held-out evaluation set to the keys the samples
name (s3://models/digits/1/model.onnx, .../2/model.onnx, s3://models/digits/eval.npz), and
writes build/samples/: the same files with what a user edits filled in: the storage endpoint
and credentials, the bucket, each version's sha256, and `backend: python` (the test bed's
Triton has only the python backend; it runs the same model.onnx through onnxruntime).
Prints two lines, `SAMPLES=<folder>` and `STORAGE_CA=<the CA file that signs MinIO's
certificate>`, the values docs/install.md's commands take.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from e2e import support

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "config" / "samples"
OUT = ROOT / "build" / "samples"
# The seed that trains each sample version (models/digits.py --seed N).
VERSION_SEEDS = {1: 0, 2: 1}
TESTBED_BACKEND = "python"


def parse_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def fill(doc: dict[str, Any], testbed: support.Testbed, digests: dict[int, str]) -> dict[str, Any]:
    """One sample with the test bed's values where a user puts theirs."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "Secret":
        doc["stringData"] = {"AWS_ACCESS_KEY_ID": testbed.s3_access_key, "AWS_SECRET_ACCESS_KEY": testbed.s3_secret_key}
    elif kind == "Model":
        spec["storage"]["endpoint"] = testbed.s3_endpoint
        spec["storage"]["bucket"] = support.BUCKET
    elif kind == "ModelVersion":
        _, key = parse_s3(spec["artifact"]["uri"])
        spec["artifact"]["uri"] = f"s3://{support.BUCKET}/{key}"
        spec["artifact"]["sha256"] = digests[spec["version"]]
    elif kind == "ModelDeployment":
        spec["triton"]["backend"] = TESTBED_BACKEND
    return doc


def load_samples() -> dict[str, dict[str, Any]]:
    return {path.name: yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted(SAMPLES.glob("*.yaml"))}


def upload(testbed: support.Testbed, samples: dict[str, dict[str, Any]]) -> dict[int, str]:
    """Train and upload each sample version and the evaluation set; version -> sha256."""
    testbed.ensure_bucket()
    store = testbed.storage(support.BUCKET)
    digests = {}
    for doc in samples.values():
        if doc["kind"] == "ModelVersion":
            version = doc["spec"]["version"]
            _, key = parse_s3(doc["spec"]["artifact"]["uri"])
            _, digests[version] = store.upload(support.digits_model(seed=VERSION_SEEDS[version]).onnx, key)
        if doc["kind"] == "Model":
            _, key = parse_s3(doc["spec"]["versionDefaults"]["evaluation"]["datasetUri"])
            store.upload(support.digits_model(seed=0).eval_npz, key)
    return digests


def main() -> int:
    testbed, _ = support.bring_up()
    samples = load_samples()
    digests = upload(testbed, samples)
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.glob("*.yaml"):
        stale.unlink()
    for name, doc in samples.items():
        (OUT / name).write_text(yaml.safe_dump(fill(doc, testbed, digests), sort_keys=False), encoding="utf-8")
    print(f"SAMPLES={OUT}")
    print(f"STORAGE_CA={testbed.s3_ca}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
