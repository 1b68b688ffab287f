"""Triton python-backend model that serves model.onnx (in the same version folder) with onnxruntime.

It gives the same answers as the onnxruntime backend for the same file, where only the python
backend is available. Tensor names and types come from the model configuration. Requests that
Triton's dynamic batcher hands over together are concatenated, run once and split again.
A failing request gets an error response; it never takes the model down. When every request
of a call fails, execute raises instead, so that Triton counts them in
nv_inference_request_failure (it counts error responses as successes).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILENAME = "model.onnx"


def _execution_providers(instance_kind, device_id):
    if instance_kind == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": int(device_id)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        model_path = os.path.join(args["model_repository"], args["model_version"], ONNX_FILENAME)
        self._session = ort.InferenceSession(
            model_path,
            providers=_execution_providers(args["model_instance_kind"], args["model_instance_device_id"]),
        )
        self._batched = int(config.get("max_batch_size", 0)) > 0
        self._input_names = [tensor["name"] for tensor in config["input"]]
        self._output_names = [tensor["name"] for tensor in config["output"]]
        self._output_dtypes = {
            tensor["name"]: pb_utils.triton_string_to_numpy(tensor["data_type"]) for tensor in config["output"]
        }
        # A config that names tensors the ONNX file lacks must fail the load, not each request.
        model_inputs = {node.name for node in self._session.get_inputs()}
        model_outputs = {node.name for node in self._session.get_outputs()}
        missing = [n for n in self._input_names if n not in model_inputs]
        missing += [n for n in self._output_names if n not in model_outputs]
        if missing:
            raise pb_utils.TritonModelException(
                f"config.pbtxt names tensors that {ONNX_FILENAME} does not have: {missing}; "
                f"the model has inputs {sorted(model_inputs)} and outputs {sorted(model_outputs)}"
            )

    def execute(self, requests):
        responses = [None] * len(requests)
        failures: list[str] = []
        groups: dict[tuple[object, ...], list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            try:
                feeds = self._read_inputs(request)
            except ValueError as err:
                responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(err)))
                failures.append(str(err))
                continue
            # Only requests whose inputs agree beyond the batch dimension can be concatenated.
            key: tuple[object, ...] = tuple((name, feeds[name].dtype.str, feeds[name].shape[1:]) for name in self._input_names)
            if not self._batched:
                key = ("request", index)
            groups.setdefault(key, []).append((index, feeds))
        for members in groups.values():
            answers, error = self._run_group(members)
            for index, response in answers:
                responses[index] = response
            if error is not None:
                failures += [error] * len(answers)
        if failures and len(failures) == len(requests):
            # Triton counts error responses returned from execute as successes; an exception
            # fails every request of the call, and nv_inference_request_failure counts them
            # (which the canary analysis reads). A call with some good requests answers each.
            raise pb_utils.TritonModelException(failures[0])
        return responses

    def _read_inputs(self, request):
        feeds = {}
        for name in self._input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input tensor {name!r} is missing from the request")
            feeds[name] = tensor.as_numpy()
        return feeds

    def _run_group(self, members):
        sizes = [feeds[self._input_names[0]].shape[0] for _, feeds in members]
        try:
            if len(members) == 1:
                feeds = members[0][1]
            else:
                feeds = {name: np.concatenate([f[name] for _, f in members], axis=0) for name in self._input_names}
            results = self._session.run(self._output_names, feeds)
            if len(members) > 1 and any(result.shape[:1] != (sum(sizes),) for result in results):
                raise ValueError("outputs do not keep the batch dimension, so batched requests cannot be split")
        except Exception as err:  # onnxruntime raises several unrelated types for bad input
            message = f"inference failed: {err}"
            error = pb_utils.TritonError(message)
            answers = [(index, pb_utils.InferenceResponse(output_tensors=[], error=error)) for index, _ in members]
            return answers, None if not answers else message
        splits = np.cumsum(sizes)[:-1]
        per_output = [np.split(result, splits, axis=0) for result in results]
        responses = []
        for position, (index, _) in enumerate(members):
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(parts[position], dtype=self._output_dtypes[name]))
                for name, parts in zip(self._output_names, per_output, strict=True)
            ]
            responses.append((index, pb_utils.InferenceResponse(output_tensors=tensors)))
        return responses, None
