"""`python -m modelops.compress` end to end against an in-memory store: exit codes and messages."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from modelops.api.version import VersionReason
from modelops.compress import report
from modelops.compress.__main__ import main
from modelops.contract import exitcodes
from modelops.contract.report import JobReason, JobReport, reported_reason
from modelops.reuse import Reason
from modelops.storage import ObjectStore, StorageConfig, TransferTuning

pytestmark = pytest.mark.unit

EVAL = {"datasetUri": "s3://models/digits/eval.npz", "metric": "top1-accuracy", "threshold": 0.5}


@pytest.fixture
def store(fake_s3, digits_model) -> ObjectStore:
    for path in (digits_model.onnx, digits_model.eval_npz):
        fake_s3.objects[("models", f"digits/{path.name}")] = (path.read_bytes(), {})
    return ObjectStore(StorageConfig(), TransferTuning(part_size=32 * 1024), client=fake_s3, sleep=lambda _: None)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _args(
    source_sha: str,
    recipe: dict,
    prefix: str = "s3://models/out/run/",
    evaluation: dict | None = EVAL,
    source="digits/model.onnx",
) -> list[str]:
    argv = [
        "--source-uri",
        f"s3://models/{source}",
        "--source-sha256",
        source_sha,
        "--source-format",
        "onnx",
        "--recipe-json",
        json.dumps(recipe),
        "--output-prefix",
        prefix,
        "--threads",
        "1",
    ]
    return argv + (["--eval-json", json.dumps(evaluation)] if evaluation else [])


def _main(tmp_path: Path, argv: list[str], store: ObjectStore | None, env: dict | None = None) -> tuple[int, dict]:
    log = tmp_path / "termination-log"
    code = main(argv, {"MODELOPS_TERMINATION_LOG": str(log), **(env or {})}, store)
    text = log.read_text()
    assert len(text.encode()) < 4096
    return code, json.loads(text)


def test_success_publishes_model_then_report_and_writes_the_termination_message(
    tmp_path, store, fake_s3, digits_model, capsys
) -> None:
    code, message = _main(
        tmp_path, _args(_sha(digits_model.onnx.read_bytes()), {"quantization": "int8-weight-only"}), store
    )
    assert code == exitcodes.SUCCESS
    assert set(message) == set(report.COMPACT_KEYS)
    assert message["outcome"] == "Passed" and message["device"] == "cpu"
    assert message["artifact"]["uri"] == "s3://models/out/run/model.onnx"
    assert message["metric"]["name"] == "top1-accuracy" and message["metric"]["passed"] is True
    puts = [call for call in fake_s3.calls if call.startswith("put ")]
    # The artifact, the measurement (for later versions on the same dataset), then report.json.
    assert puts[0] == "put out/run/model.onnx" and puts[-1] == "put out/run/report.json"
    assert len(puts) == 3 and puts[1].startswith("put out/run/evaluations/")
    assert message["artifact"]["etag"]
    full = json.loads(fake_s3.objects[("models", "out/run/report.json")][0])
    assert {k: full[k] for k in report.COMPACT_KEYS if k != "latency"} == {k: v for k, v in message.items() if k != "latency"}
    # The termination message carries where latency was measured; report.json also has how.
    assert message["latency"] == {k: full["latency"][k] for k in message["latency"]}
    assert message["latency"]["runtime"].startswith("onnxruntime ") and message["latency"]["device"] == "cpu"
    assert "vnni" in message["latency"]["cpu"] and full["latency"]["rounds"] >= 5
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == message
    # Built as a JobReport: every key of the record, none added, and it reads back as itself.
    assert set(full) == FULL_REPORT_KEYS
    assert set(full["latency"]) == {"device", "cpu", "threads", "batch", "rounds", "spread", "spreadBefore", "spreadAfter",
                                   "runtime", "runtimeBefore", "runtimeAfter"}
    assert JobReport.model_validate(full).record() == full
    # The Job's steps, in order, each within the one before it ends; evaluate is not counted in compress.
    steps = [t["step"] for t in message["timings"]]
    assert steps == ["download", "compress", "evaluate"]
    spans = {t["step"]: t for t in message["timings"]}
    assert spans["download"]["finishedAt"] <= spans["compress"]["startedAt"]
    assert spans["compress"]["startedAt"] <= spans["evaluate"]["startedAt"] <= spans["compress"]["finishedAt"]
    assert all(t["seconds"] > 0 for t in message["timings"])


FULL_REPORT_KEYS = {
    "outcome", "reason", "message", "device", "artifact", "source", "bytesBefore", "bytesAfter", "ratio", "latencyMsBefore",
    "latencyMsAfter", "latency", "interface", "objective", "chosenQuantization", "resolvedRecipe", "candidates", "layers",
    "metric", "evaluation", "recipe", "recipeHash", "cacheKey", "compressorVersion", "libraries", "weights", "notes",
    "seconds", "createdAt", "calibration", "download", "timings",
}


def test_a_report_takes_only_a_known_reason_and_an_older_name_reads_as_the_current_one() -> None:
    with pytest.raises(ValidationError, match="reason"):
        JobReport.model_validate({"outcome": "Failed", "reason": "SomethingBroke"})
    with pytest.raises(ValidationError, match="outcome"):
        JobReport.model_validate({"outcome": "Maybe", "reason": "InternalError"})
    assert reported_reason("AccuracyGateFailed") is VersionReason.ACCURACY_GATE_REJECTED
    assert reported_reason("OutOfMemory") is JobReason.OUT_OF_MEMORY
    assert reported_reason("CachedCompressionEvaluated") is Reason.EVALUATED_FROM_CACHE
    assert reported_reason("SomethingBroke") is None and reported_reason(None) is None


def _puts(fake_s3) -> list[str]:
    return [call for call in fake_s3.calls if call.startswith("put ")]


def _downloads(fake_s3) -> list[str]:
    return [call for call in fake_s3.calls if call.startswith("get ") and "bytes=" in call]


def test_a_second_run_reuses_the_complete_entry(tmp_path, store, fake_s3, digits_model) -> None:
    argv = _args(_sha(digits_model.onnx.read_bytes()), {"quantization": "fp16"})
    first_code, first = _main(tmp_path, argv, store)
    fake_s3.calls.clear()
    second_code, second = _main(tmp_path, argv, store)
    assert first_code == second_code == exitcodes.SUCCESS
    assert second["artifact"] == first["artifact"] and second["metric"] == first["metric"]
    assert second["reason"] == "CompressedFromCache"
    assert _puts(fake_s3) == [] and _downloads(fake_s3) == []


def test_a_changed_evaluation_evaluates_the_cached_artifact_without_compressing(tmp_path, store, fake_s3, digits_model) -> None:
    sha = _sha(digits_model.onnx.read_bytes())
    _, first = _main(tmp_path, _args(sha, {"quantization": "fp16"}), store)
    fake_s3.calls.clear()
    code, message = _main(
        tmp_path,
        _args(sha, {"quantization": "fp16"}, evaluation={**EVAL, "metric": "top1-agreement", "threshold": 0.9}),
        store,
    )
    assert code == exitcodes.SUCCESS and message["metric"]["name"] == "top1-agreement"
    assert message["reason"] == "CachedCompressionEvaluated" and message["artifact"] == first["artifact"]
    assert [t["step"] for t in message["timings"]] == ["download", "evaluate"], "this Job compressed nothing"
    # The cached artifact was read (and its sha256 verified), nothing compressed or republished.
    assert "get out/run/model.onnx bytes=0-" in " ".join(_downloads(fake_s3))
    assert [p for p in _puts(fake_s3) if not p.startswith("put out/run/evaluations/")] == []
    assert len(_puts(fake_s3)) == 1


def test_a_dataset_replaced_in_place_is_evaluated_again(tmp_path, store, fake_s3, digits_model) -> None:
    sha = _sha(digits_model.onnx.read_bytes())
    argv = _args(sha, {"quantization": "int8-weight-only"})
    _main(tmp_path, argv, store)
    data = np.load(digits_model.eval_npz)
    half = len(data["labels"]) // 2
    fake_s3.objects[("models", "digits/eval.npz")] = (_npz(inputs=data["inputs"][:half], labels=data["labels"][:half]), {})
    fake_s3.calls.clear()
    code, message = _main(tmp_path, argv, store)
    assert code == exitcodes.SUCCESS and message["reason"] == "CachedCompressionEvaluated"
    assert "get digits/eval.npz bytes=0-" in " ".join(_downloads(fake_s3))
    full_puts = _puts(fake_s3)
    assert len(full_puts) == 1 and full_puts[0].startswith("put out/run/evaluations/")
    stored = json.loads(fake_s3.objects[("models", full_puts[0].removeprefix("put models/").removeprefix("put "))][0])
    assert stored["dataset"]["samples"] == half


def test_a_missing_dataset_fails_before_anything_is_reused(tmp_path, store, fake_s3, digits_model) -> None:
    argv = _args(_sha(digits_model.onnx.read_bytes()), {"quantization": "fp16"})
    _main(tmp_path, argv, store)
    del fake_s3.objects[("models", "digits/eval.npz")]
    code, message = _main(tmp_path, argv, store)
    assert code == exitcodes.BAD_ARTIFACT
    assert message["reason"] == "DatasetNotFound" and "s3://models/digits/eval.npz" in message["message"]


def test_a_stricter_threshold_is_rejected_from_the_recorded_measurement(tmp_path, store, fake_s3, digits_model) -> None:
    sha = _sha(digits_model.onnx.read_bytes())
    recipe = {"quantization": "int8-weight-only", "pruning": {"method": "unstructured", "amount": 0.5}}
    loose = {**EVAL, "metric": "cosine-similarity", "threshold": 0.5}
    _, first = _main(tmp_path, _args(sha, recipe, evaluation=loose), store)
    measured = first["metric"]["compressed"]
    assert measured < 1.0, "the pruned model must differ from its parent for this test to mean anything"
    fake_s3.calls.clear()
    stricter = {**loose, "threshold": (measured + 1.0) / 2}
    code, message = _main(tmp_path, _args(sha, recipe, evaluation=stricter), store)
    assert code == exitcodes.REJECTED and message["outcome"] == "Rejected"
    assert message["metric"]["compressed"] == measured and message["metric"]["passed"] is False
    assert _puts(fake_s3) == [] and _downloads(fake_s3) == []


def test_a_corrupted_cache_entry_is_compressed_again(tmp_path, store, fake_s3, digits_model) -> None:
    argv = _args(_sha(digits_model.onnx.read_bytes()), {"quantization": "fp16"})
    _, first = _main(tmp_path, argv, store)
    fake_s3.objects[("models", "out/run/model.onnx")] = (b"garbage", {"sha256": first["artifact"]["sha256"]})
    fake_s3.calls.clear()
    code, message = _main(tmp_path, argv, store)
    assert code == exitcodes.SUCCESS and message["reason"] != "CompressedFromCache"
    assert "put out/run/model.onnx" in _puts(fake_s3)
    assert fake_s3.objects[("models", "out/run/model.onnx")][0] != b"garbage"
    assert _sha(fake_s3.objects[("models", "out/run/model.onnx")][0]) == message["artifact"]["sha256"]


def test_rejection_exits_11_and_still_publishes_the_report(tmp_path, store, fake_s3, digits_model) -> None:
    recipe = {"quantization": "int8-dynamic", "pruning": {"method": "unstructured", "amount": 0.9}}
    code, message = _main(
        tmp_path, _args(_sha(digits_model.onnx.read_bytes()), recipe, evaluation={**EVAL, "threshold": 1.0}), store
    )
    assert code == exitcodes.REJECTED
    assert message["outcome"] == "Rejected" and message["metric"]["drop"] > 1.0
    assert f"dropped {message['metric']['drop']:.2f} points" in message["message"]
    assert json.loads(fake_s3.objects[("models", "out/run/report.json")][0])["outcome"] == "Rejected"


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-digest", "ChecksumMismatch"),
        ("missing-source", "ArtifactNotFound"),
        ("not-onnx", "UnreadableArtifact"),
        ("dataset-without-inputs", "BadDataset"),
        ("dataset-without-labels", "BadDataset"),
    ],
)
def test_bad_artifacts_exit_10_and_publish_nothing(tmp_path, store, fake_s3, digits_model, case, reason) -> None:
    sha = _sha(digits_model.onnx.read_bytes())
    argv = _args(sha, {"quantization": "fp16"})
    if case == "wrong-digest":
        argv = _args("f" * 64, {})
    elif case == "missing-source":
        argv = _args(sha, {}, source="digits/absent.onnx")
    elif case == "not-onnx":
        fake_s3.objects[("models", "digits/junk.onnx")] = (b"PK\x03\x04 not a model", {})
        argv = _args(_sha(b"PK\x03\x04 not a model"), {}, source="digits/junk.onnx")
    elif case == "dataset-without-inputs":
        fake_s3.objects[("models", "digits/eval.npz")] = (_npz(x=np.zeros((2, 64), np.float32)), {})
    else:
        data = np.load(digits_model.eval_npz)
        fake_s3.objects[("models", "digits/eval.npz")] = (_npz(inputs=data["inputs"]), {})
    code, message = _main(tmp_path, argv, store)
    assert code == exitcodes.BAD_ARTIFACT
    assert (message["outcome"], message["reason"]) == ("Failed", reason)
    assert not [key for (_, key) in fake_s3.objects if key.startswith("out/")]


@pytest.mark.parametrize(
    ("mutate", "reason", "named"),
    [
        (lambda a: a[:-1], "InvalidArguments", "--threads"),  # drops the value of --threads
        (lambda a: [x for x in a if x != "--source-uri"][1:], "InvalidArguments", "--source-uri"),
        (lambda a: a[:7] + ["{not json"] + a[8:], "InvalidArguments", "--recipe-json"),
        (lambda a: a[:7] + ['{"quantization": "int3"}'] + a[8:], "InvalidRecipe", "quantization"),
        (lambda a: a[:7] + ['{"targetFormat": "torchscript"}'] + a[8:], "UnsupportedRecipe", "targetFormat"),
        (lambda a: a[:3] + ["abc"] + a[4:], "InvalidArguments", "source-sha256"),
        (lambda a: a[:9] + ["s3://"] + a[10:], "InvalidArguments", "output-prefix"),
        (
            lambda a: a + ["--eval-json", '{"datasetUri": "s3://models/e.npz", "metric": "f1", "threshold": 1}'],
            "InvalidRecipe",
            "evaluation.metric",
        ),
    ],
)
def test_usage_errors_exit_2_naming_the_argument(tmp_path, store, digits_model, mutate, reason, named) -> None:
    argv = mutate(_args(_sha(digits_model.onnx.read_bytes()), {}, evaluation=None))
    code, message = _main(tmp_path, argv, store)
    assert code == exitcodes.USAGE
    assert message["reason"] == reason
    assert named in message["message"]


def test_unreachable_storage_is_transient_and_secrets_stay_out(tmp_path, digits_model) -> None:
    env = {
        "MODELOPS_S3_ENDPOINT": "http://127.0.0.1:1",
        "AWS_ACCESS_KEY_ID": "AKIDSECRETID",
        "AWS_SECRET_ACCESS_KEY": "the-secret-key-value",
    }
    store = ObjectStore(
        StorageConfig.from_env(env), TransferTuning(max_attempts=1, stream_attempts=1, connect_timeout_s=2)
    )
    code, message = _main(tmp_path, _args(_sha(digits_model.onnx.read_bytes()), {}), store, env)
    assert code == exitcodes.TRANSIENT
    assert message["reason"] == "StorageUnreachable"
    assert "the-secret-key-value" not in json.dumps(message)


def test_exit_codes_are_distinct_and_every_failure_but_transient_is_permanent() -> None:
    codes = [exitcodes.SUCCESS, exitcodes.USAGE, exitcodes.BAD_ARTIFACT, exitcodes.REJECTED, exitcodes.TRANSIENT]
    assert codes == [0, 2, 10, 11, 12]
    assert set(codes) - {exitcodes.SUCCESS, exitcodes.TRANSIENT} == exitcodes.PERMANENT_FAILURES


def test_exitcodes_import_pulls_in_neither_torch_nor_onnx() -> None:
    probe = "import sys, modelops.contract.exitcodes; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_compact_report_truncates_long_messages() -> None:
    text = report.compact(report.failure_report(JobReason.INTERNAL_ERROR, "x" * 10_000).record())
    assert len(text) <= report.TERMINATION_LIMIT
    assert json.loads(text)["message"].endswith("...")


DIGITS_SIGNATURE = {
    "maxBatchSize": 64,
    "inputs": [{"name": "input", "dataType": "FP32", "dims": [64]}],
    "outputs": [{"name": "logits", "dataType": "FP32", "dims": [10]}],
}


def test_a_signature_mismatch_is_rejected_naming_the_tensor_and_caches_nothing(tmp_path, store, fake_s3, digits_model) -> None:
    sha = _sha(digits_model.onnx.read_bytes())
    renamed = {**DIGITS_SIGNATURE, "outputs": [{"name": "scores", "dataType": "FP32", "dims": [10]}]}
    code, message = _main(tmp_path, _args(sha, {"quantization": "int8-weight-only"}) + ["--signature-json", json.dumps(renamed)], store)
    assert code == exitcodes.REJECTED
    assert (message["outcome"], message["reason"]) == ("Rejected", "SignatureMismatch")
    assert "output 'scores'" in message["message"] and "'logits'" in message["message"]
    assert not [key for (_, key) in fake_s3.objects if key.startswith("out/")], "a mismatch is no cache entry"


def test_a_matching_signature_passes_and_a_cached_entry_is_checked_against_the_next_signature(
    tmp_path, store, fake_s3, digits_model
) -> None:
    sha = _sha(digits_model.onnx.read_bytes())
    argv = _args(sha, {"quantization": "int8-weight-only"})
    code, message = _main(tmp_path, argv + ["--signature-json", json.dumps(DIGITS_SIGNATURE)], store)
    assert code == exitcodes.SUCCESS
    full = json.loads(fake_s3.objects[("models", "out/run/report.json")][0])
    assert [t["name"] for t in full["interface"]["outputs"]] == ["logits"]
    # The same artifact and recipe under a Model whose signature differs: the cached entry is not served.
    wider = {**DIGITS_SIGNATURE, "inputs": [{"name": "input", "dataType": "FP32", "dims": [128]}]}
    fake_s3.calls.clear()
    code, message = _main(tmp_path, argv + ["--signature-json", json.dumps(wider)], store)
    assert (code, message["reason"]) == (exitcodes.REJECTED, "SignatureMismatch")
    assert "the cached compressed artifact" in message["message"] and "input 'input'" in message["message"]
    assert not [c for c in fake_s3.calls if c.startswith("put ")]


def test_a_cached_compression_evaluated_for_a_new_gate_is_held_to_the_signature(tmp_path, store, fake_s3, digits_model) -> None:
    # Cached without a signature; then the same artifact and recipe, a different gate (so the
    # cached artifact is evaluated, not compressed) and a signature it does not match.
    sha = _sha(digits_model.onnx.read_bytes())
    _main(tmp_path, _args(sha, {"quantization": "int8-weight-only"}), store)
    renamed = {**DIGITS_SIGNATURE, "outputs": [{"name": "scores", "dataType": "FP32", "dims": [10]}]}
    other_gate = {**EVAL, "metric": "top1-agreement", "threshold": 0.9}
    argv = _args(sha, {"quantization": "int8-weight-only"}, evaluation=other_gate) + ["--signature-json", json.dumps(renamed)]
    code, message = _main(tmp_path, argv, store)
    assert (code, message["reason"]) == (exitcodes.REJECTED, "SignatureMismatch")
    assert "output 'scores'" in message["message"]


def test_an_invalid_signature_is_a_usage_error_naming_the_field(tmp_path, store, digits_model) -> None:
    bad = {**DIGITS_SIGNATURE, "maxBatchSize": -1}
    argv = _args(_sha(digits_model.onnx.read_bytes()), {}) + ["--signature-json", json.dumps(bad)]
    code, message = _main(tmp_path, argv, store)
    assert (code, message["reason"]) == (exitcodes.USAGE, "InvalidArguments")
    assert "signature-json: maxBatchSize" in message["message"]


def test_auto_tries_every_candidate_serves_the_smallest_that_passes_and_caches_it_under_its_recipe(
    tmp_path, store, fake_s3, digits_model
) -> None:
    from modelops.cachekey import compressed_prefix, compression_cache_key
    from modelops.compress.pipeline import AUTO_CANDIDATES

    sha = _sha(digits_model.onnx.read_bytes())
    argv = _args(sha, {"quantization": "auto", "objective": "size"}) + ["--signature-json", json.dumps(DIGITS_SIGNATURE)]
    code, message = _main(tmp_path, argv, store)
    assert code == exitcodes.SUCCESS, message
    candidates = {c["quantization"]: c for c in message["candidates"]}
    assert list(candidates) == list(AUTO_CANDIDATES), "every candidate is reported, none dropped"
    for c in candidates.values():
        assert c["verdict"] in ("Passed", "Rejected", "Unsupported", "Failed")
        if c["verdict"] in ("Passed", "Rejected"):
            assert c["bytes"] > 0 and c["metric"]["name"] == "top1-accuracy"
            # Only a candidate that passed is timed: a rejected one can never be served.
            assert (c["latencyMs"] > 0) if c["verdict"] == "Passed" else c["latencyMs"] is None
        else:
            assert c["bytes"] is None and c["message"]
    passed = [c for c in candidates.values() if c["verdict"] == "Passed"]
    smallest = min(passed, key=lambda c: c["bytes"])
    assert message["chosenQuantization"] == smallest["quantization"] and message["objective"] == "size"
    assert message["bytesAfter"] == smallest["bytes"]
    assert message["message"].startswith(f"auto chose {smallest['quantization']}")
    # The pick is a complete cache entry of its own recipe, where an explicit request finds it.
    resolved = {"quantization": smallest["quantization"]}
    prefix = compressed_prefix("models", compression_cache_key(sha, resolved))
    assert message["artifact"]["uri"] == prefix + "model.onnx"
    fake_s3.calls.clear()
    code, explicit = _main(
        tmp_path, _args(sha, resolved, prefix=prefix) + ["--signature-json", json.dumps(DIGITS_SIGNATURE)], store
    )
    assert code == exitcodes.SUCCESS and explicit["artifact"] == message["artifact"]
    assert not [c for c in fake_s3.calls if c.startswith("put ")], "the explicit request hits the cache"


def test_auto_by_latency_picks_the_fastest_passing_candidate(tmp_path, store, digits_model) -> None:
    sha = _sha(digits_model.onnx.read_bytes())
    code, message = _main(tmp_path, _args(sha, {"quantization": "auto", "objective": "latency"}), store)
    assert code == exitcodes.SUCCESS
    passed = [c for c in message["candidates"] if c["verdict"] == "Passed"]
    assert message["chosenQuantization"] == min(passed, key=lambda c: c["latencyMs"])["quantization"]


def test_auto_without_an_evaluation_is_refused(tmp_path, store, digits_model) -> None:
    code, message = _main(tmp_path, _args(_sha(digits_model.onnx.read_bytes()), {"quantization": "auto"}, evaluation=None), store)
    assert (code, message["reason"]) == (exitcodes.USAGE, "UnsupportedRecipe")
    assert "needs an evaluation" in message["message"]


def test_auto_rejects_when_no_candidate_passes(tmp_path, store, fake_s3, digits_model) -> None:
    recipe = {"quantization": "auto", "pruning": {"method": "unstructured", "amount": 0.95}}
    code, message = _main(tmp_path, _args(_sha(digits_model.onnx.read_bytes()), recipe, evaluation={**EVAL, "threshold": 0.0}), store)
    assert code == exitcodes.REJECTED and message["outcome"] == "Rejected"
    assert message["chosenQuantization"] is None
    assert "no candidate passed the gate" in message["message"]
    assert all(c["verdict"] != "Passed" for c in message["candidates"])


def test_a_long_candidate_list_fits_the_termination_message_with_its_verdicts() -> None:
    candidates = [
        {"quantization": q, "verdict": "Rejected", "bytes": 123456, "ratio": 3.9, "latencyMs": 12.5,
         "metric": {"name": "cosine-similarity", "threshold": 0.99, "compressed": 0.98, "passed": False},
         "message": "x" * 240}
        for q in ("int8-dynamic", "int8-weight-only", "int4-weight-only", "fp16")
    ] * 3
    text = report.compact({"outcome": "Rejected", "message": "m" * 3000, "candidates": candidates,
                           "latency": {"runtime": "onnxruntime", "rounds": 7, "cpu": "c"}})
    short = json.loads(text)
    assert len(text.encode()) <= report.TERMINATION_LIMIT
    assert [c["verdict"] for c in short["candidates"]] == ["Rejected"] * 12
    assert "message" not in short["candidates"][0] and short["latency"] == {"runtime": "onnxruntime", "cpu": "c"}


def test_an_input_with_a_default_value_matches_the_signature_and_is_evaluated(tmp_path, store, fake_s3, digits_model) -> None:
    """ONNX calls an input with an initializer of the same name an input (with a default), so
    the Job passes it and feeds it from the dataset; the e2e rollback story relies on this."""
    import onnx

    model = onnx.load(str(digits_model.onnx))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((1, 64), np.float32), "input"))
    data = model.SerializeToString()
    fake_s3.objects[("models", "digits/defaulted.onnx")] = (data, {})
    argv = _args(_sha(data), {"quantization": "int8-weight-only"}, source="digits/defaulted.onnx")
    code, message = _main(tmp_path, argv + ["--signature-json", json.dumps(DIGITS_SIGNATURE)], store)
    assert code == exitcodes.SUCCESS, message
    assert message["metric"]["drop"] == 0.0, "the dataset, not the zero default, was fed"
    full = json.loads(fake_s3.objects[("models", "out/run/report.json")][0])
    assert full["interface"]["inputs"][0] == {"name": "input", "dataType": "FP32", "dims": [-1, 64], "hasDefault": True}


def test_bytes_that_differ_from_a_verified_signature_are_rejected_as_tampered(tmp_path, store, fake_s3) -> None:
    """With --source-signer (the operator verified the signed digest), other bytes are a tampered
    file: Rejected with ArtifactTampered naming the file and signer, and nothing is published."""
    code, message = _main(tmp_path, [*_args("f" * 64, {}), "--source-signer", "release"], store)
    assert code == exitcodes.REJECTED
    assert (message["outcome"], message["reason"]) == ("Rejected", "ArtifactTampered")
    assert message["message"].startswith("file model.onnx: ") and "signed by release" in message["message"]
    assert not [key for (_, key) in fake_s3.objects if key.startswith("out/")]


def test_recompress_compresses_again_where_a_cached_entry_would_be_reused(tmp_path, store, fake_s3, digits_model) -> None:
    argv = _args(_sha(digits_model.onnx.read_bytes()), {"quantization": "int8-weight-only"}, evaluation=None)
    def artifact_puts() -> int:
        return sum(call == "put out/run/model.onnx" for call in fake_s3.calls)

    assert _main(tmp_path, argv, store)[0] == exitcodes.SUCCESS and artifact_puts() == 1
    assert _main(tmp_path, argv, store)[0] == exitcodes.SUCCESS and artifact_puts() == 1  # reused
    assert _main(tmp_path, [*argv, "--recompress"], store)[0] == exitcodes.SUCCESS and artifact_puts() == 2
