"""`python -m modelops.compress`: the entry point of the compression Job.

Storage settings come from the environment (StorageConfig.from_env). The compact report goes
to the file named by MODELOPS_TERMINATION_LOG (default /dev/termination-log) and to stdout;
the exit code is one of modelops.contract.exitcodes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from modelops.api.model import Compression, Evaluation, Signature
from modelops.cachekey import InvalidRecipe, field_error
from modelops.compress import report
from modelops.compress.job import JobResult, JobSpec, run
from modelops.compress.recipe import SOURCE_FORMATS
from modelops.contract import exitcodes
from modelops.contract.report import JobReason
from modelops.storage import ObjectStore, StorageConfig

DEFAULT_TERMINATION_LOG = "/dev/termination-log"


ModelT = TypeVar("ModelT", bound=BaseModel)


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would exit(2) before we could report
        raise UsageError(message)


def parse_json_argument(text: str, model: type[ModelT], option: str, field: str = "") -> ModelT:
    """A JSON argument parsed by its API model: bad JSON is a usage error naming the option, a
    bad field an InvalidRecipe naming the field."""
    try:
        return model.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] == "json_invalid":
            raise UsageError(f"{option}: not valid JSON ({first['msg']})") from None
        raise field_error(err, field) from None


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"{text!r} must list positive dimensions")
    return shape


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def parse_files_argument(text: str | None) -> list[dict[str, str]] | None:
    if text is None:
        return None
    try:
        files = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--source-files-json: not JSON ({exc})") from None
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str) for f in files):
        raise UsageError("--source-files-json: must be a list of {path, sha256}")
    return files


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m modelops.compress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source-uri", required=True, help="s3://bucket/key of the artifact")
    parser.add_argument("--source-sha256", required=True, help="expected sha256 of the artifact")
    parser.add_argument("--source-format", required=True, choices=SOURCE_FORMATS)
    parser.add_argument("--source-files-json", help="a file set: [{path, sha256}] under --source-uri (a prefix ending in /)")
    parser.add_argument("--source-entrypoint", help="the file set's ONNX graph (default model.onnx)")
    parser.add_argument("--recipe-json", required=True, help="the compression recipe (the API's compression, as JSON)")
    parser.add_argument("--output-prefix", required=True, help="s3://bucket/prefix/ for model.* and report.json")
    parser.add_argument("--eval-json", help="the evaluation (the API's accuracy gate, as JSON)")
    parser.add_argument("--signature-json", help="the Model's signature (the API's, as JSON), checked against the artifact")
    parser.add_argument("--input-names", type=_names, help="ONNX input names for torch sources (comma-separated)")
    parser.add_argument("--output-names", type=_names, help="ONNX output names for torch sources (comma-separated)")
    parser.add_argument("--input-shape", type=_shape, help="example input shape for TorchScript sources, e.g. 1,64")
    parser.add_argument("--threads", type=int, help="CPU threads for weight processing and onnxruntime")
    parser.add_argument("--max-artifact-bytes", type=_positive, help="refuse a source artifact larger than this")
    parser.add_argument("--max-dataset-bytes", type=_positive, help="refuse an evaluation dataset larger than this")
    parser.add_argument("--source-signer", help="the trusted signer the operator verified the source's signature of")
    parser.add_argument("--recompress", action="store_true", help="compress even when a cached entry exists")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary directory)")
    return parser


def write_termination_message(result: JobResult, environ: Mapping[str, str]) -> str:
    text = report.compact(result.report)
    path = environ.get("MODELOPS_TERMINATION_LOG", DEFAULT_TERMINATION_LOG)
    try:
        Path(path).write_text(text)
    except OSError as exc:
        logging.getLogger("modelops.compress").warning("cannot write the termination message to %s: %s", path, exc)
    return text


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, store: ObjectStore | None = None
) -> int:
    environ = os.environ if environ is None else environ
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("modelops").setLevel(logging.INFO)
    try:
        args = build_parser().parse_args(argv)
        recipe = parse_json_argument(args.recipe_json, Compression, "--recipe-json")
        evaluation = None
        if args.eval_json is not None:
            evaluation = parse_json_argument(args.eval_json, Evaluation, "--eval-json", "evaluation")
        signature = None
        if args.signature_json is not None:
            try:
                signature = parse_json_argument(args.signature_json, Signature, "--signature-json")
            except InvalidRecipe as exc:  # the operator renders it from the Model: a usage error, not a recipe's
                raise UsageError(f"signature-json: {exc}") from None
        source_files = parse_files_argument(args.source_files_json)
        store = store or ObjectStore(StorageConfig.from_env(environ))
    except InvalidRecipe as exc:
        result = JobResult(exitcodes.USAGE, report.failure_report(JobReason.INVALID_RECIPE, str(exc)).record())
    except (UsageError, ValueError) as exc:
        result = JobResult(exitcodes.USAGE, report.failure_report(JobReason.INVALID_ARGUMENTS, str(exc)).record())
    else:
        spec = JobSpec(
            source_uri=args.source_uri,
            source_sha256=args.source_sha256,
            source_format=args.source_format,
            recipe=recipe,
            output_prefix=args.output_prefix,
            evaluation=evaluation,
            input_names=args.input_names,
            output_names=args.output_names,
            input_shape=args.input_shape,
            threads=args.threads,
            signature=signature,
            max_artifact_bytes=args.max_artifact_bytes,
            max_dataset_bytes=args.max_dataset_bytes,
            source_files=source_files,
            source_entrypoint=args.source_entrypoint,
            source_signer=args.source_signer,
            recompress=args.recompress,
        )
        if args.workdir is not None:
            result = run(spec, store, args.workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="modelops-compress-") as scratch:
                result = run(spec, store, Path(scratch))
    print(write_termination_message(result, environ))
    return int(result.exit_code)


if __name__ == "__main__":
    sys.exit(main())
