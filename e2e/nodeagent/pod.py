"""One pod's life on a test bed node, as a kubelet would live it.

A PodWorker thread sets up the sandbox, runs init containers in order to completion,
starts the containers, runs their startup, readiness and liveness probes, restarts
them as restartPolicy says (with CrashLoopBackOff), and reports the truth in the pod's
status: phase, conditions, container states, exit codes, termination messages and
restart counts. On deletion it stops the containers within the grace period, tears the
sandbox down, and removes the pod object.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import lifecycle, sandbox
from .images import PROJECT_MOUNT, ContainerConfigError, Identity, ImageRuntime, UnrunnableImage, container_argv, identity, resolve_image

log = logging.getLogger("nodeagent.pod")

TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
TICK = 0.1
# How often a pod whose containers will not run (again) retries its status report.
IDLE_REPORT_SECONDS = 2.0
# Requests from a pod's thread give up after this, so that a hung apiserver never holds a
# container's stop past its grace period; they are retried.
API_TIMEOUT_SECONDS = 5.0


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ProbeState:
    spec: dict
    next_at: float
    successes: int = 0
    failures: int = 0


@dataclass
class Container:
    spec: dict
    init: bool
    runtime: ImageRuntime | None = None
    identity: Identity | None = None  # who it runs as, for a built image
    process: subprocess.Popen | None = None
    restart_count: int = 0
    state: dict = field(default_factory=lambda: {"waiting": {"reason": "PodInitializing"}})
    last_state: dict = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    restart_at: float | None = None
    backoff: float | None = None  # the last restart's delay; None before the first
    started_mono: float | None = None  # when the current (or last) run started, monotonic
    probes: dict[str, ProbeState] = field(default_factory=dict)
    done: bool = False  # terminated and will not run again

    @property
    def name(self) -> str:
        return self.spec["name"]


class PodWorker(threading.Thread):
    def __init__(self, agent, pod: dict):
        super().__init__(name=f"pod-{pod['metadata']['namespace']}/{pod['metadata']['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        self.namespace = pod["metadata"]["namespace"]
        self.pod_name = pod["metadata"]["name"]
        self.dir = agent.state_dir / "pods" / self.uid
        self.netns = f"{agent.netns_prefix}{agent.node_short}-{self.uid[:8]}"
        self.pod_ip: str | None = None
        self.start_time = now_rfc3339()
        self.stop_requested = threading.Event()
        grace = pod["spec"].get("terminationGracePeriodSeconds")
        self.grace_seconds = float(grace) if grace is not None else 30.0
        # When the containers must be gone (monotonic), once a stop is requested; a later
        # request with a shorter grace period (kubectl delete --grace-period=0) brings it forward.
        self.stop_deadline: float | None = None
        self.force_gone = False
        self.init_containers = [Container(c, init=True) for c in pod["spec"].get("initContainers") or []]
        self.containers = [Container(c, init=False) for c in pod["spec"]["containers"]]
        self.init_done = not self.init_containers
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.mounts: dict[str, Path] = {}
        self.transitions: dict[str, tuple[str, str]] = {}
        self.last_status: dict | None = None

    # ------------------------------------------------------------------ control

    def request_stop(self, grace_seconds: float | None, gone: bool = False) -> None:
        if grace_seconds is not None:
            self.grace_seconds = grace_seconds
        deadline = time.monotonic() + self.grace_seconds
        self.stop_deadline = deadline if self.stop_deadline is None else min(self.stop_deadline, deadline)
        self.force_gone = self.force_gone or gone
        self.stop_requested.set()

    def run(self) -> None:
        # Nothing may end this thread but a stop: an error is logged, the containers it
        # touched are reported as they are, and the pod stays supervised. A thread that died
        # would leave its pod reported Running with no process, and never finish its deletion.
        try:
            self._run()
        except Exception:  # noqa: BLE001 - a broken pod must not take the node down
            log.exception("pod %s/%s: unexpected error; stopping its containers", self.namespace, self.pod_name)
            self._fail_unsupervised()
        finally:
            self._teardown()

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._terminal_already():
            return
        if not self._prepare():
            self._idle_until_stopped()
            return
        while not self.stop_requested.is_set():
            try:
                self._step()
            except Exception:  # noqa: BLE001 - reported truthfully below, retried next tick
                log.exception("pod %s/%s: error while supervising", self.namespace, self.pod_name)
            self._report()
            if self.phase in ("Succeeded", "Failed"):
                self._release_sandbox()
                self._idle_until_stopped()
                break
            self.stop_requested.wait(TICK)

    def _idle_until_stopped(self) -> None:
        """Nothing more will run: keep the last status reported (a patch lost to an apiserver
        outage is sent again) until the pod is deleted."""
        while not self.stop_requested.is_set():
            self._report()
            self.stop_requested.wait(IDLE_REPORT_SECONDS)

    def _fail_unsupervised(self) -> None:
        """After an error the worker cannot go on from: stop every container and report the
        pod Failed, with each container terminated, rather than Running with no one watching it."""
        try:
            self._stop_containers()  # records each one's exit
            for container in self.init_containers + self.containers:
                container.done = True
                container.ready = False
            self.phase, self.reason = "Failed", "NodeAgentError"
            self.message = "the node agent could not supervise this pod; see its log"
            self._idle_until_stopped()
        except Exception:  # noqa: BLE001 - the teardown that follows still runs
            log.exception("pod %s/%s: could not report the failure", self.namespace, self.pod_name)

    def _terminal_already(self) -> bool:
        phase = (self.pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            self.phase = phase
            self.stop_requested.wait()
            return True
        return False

    # ------------------------------------------------------------------ setup

    def _prepare(self) -> bool:
        """Resolve images, create the network namespace and the volumes. False if the pod cannot start."""
        for container in self.init_containers + self.containers:
            try:
                container.runtime = resolve_image(container.spec["image"], self.agent.project_root)
                self.agent.event(self.pod, "Normal", "Pulled", container.runtime.describe(container.name, container.spec["image"]))
            except UnrunnableImage as err:
                container.state = {"waiting": {"reason": "ErrImagePull", "message": str(err)}}
                self.agent.event(self.pod, "Warning", "Failed", f"Failed to pull image: {err}")
        if any(c.runtime is None for c in self.init_containers + self.containers):
            self.reason, self.message = None, None
            self._report()
            return False
        try:
            self.pod_ip = self.agent.allocate_ip(self.uid)
            sandbox.create_netns(self.netns, self.pod_ip, self.agent.network)
        except (sandbox.SandboxError, OSError) as err:
            self.message = f"pod sandbox: {err}"
            self.agent.event(self.pod, "Warning", "FailedCreatePodSandBox", str(err))
            self._report()
            return False
        self._report()
        source = sandbox.VolumeSource(self.agent.core, self.pod)
        while not self.stop_requested.is_set():
            try:
                for volume in self.pod["spec"].get("volumes") or []:
                    target = self.dir / "volumes" / volume["name"]
                    self.mounts[volume["name"]] = sandbox.materialize_volume(volume, target, source)
                    fs_group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
                    if fs_group is not None:
                        sandbox.apply_fs_group(volume, self.mounts[volume["name"]], int(fs_group))
                return True
            except Exception as err:  # noqa: BLE001 - reported as an event and retried, like kubelet
                self.agent.event(self.pod, "Warning", "FailedMount", f"MountVolume.SetUp failed: {err}")
                self.stop_requested.wait(2.0)
        return False

    # ------------------------------------------------------------------ the loop

    def _step(self) -> None:
        if not self.init_done:
            self._step_init()
        else:
            self._step_containers()
        self.phase = self._phase()

    @property
    def policy(self) -> str:
        return self.pod["spec"].get("restartPolicy", lifecycle.ALWAYS)

    def _step_init(self) -> None:
        for container in self.init_containers:
            if container.done:
                continue
            self._supervise(container)
            if not container.done or _exit_code(container) != 0:
                return
        self.init_done = True
        for container in self.containers:
            container.state = {"waiting": {"reason": "ContainerCreating"}}

    def _step_containers(self) -> None:
        for container in self.containers:
            if not container.done:
                self._supervise(container)

    def _supervise(self, container: Container) -> None:
        """One look at one container: start it when due, record its exit and decide on a
        restart, or probe it. An error here is this container's alone: it is logged and
        reported, and the container is tried again after a back-off."""
        try:
            if container.process is None:
                if container.restart_at is None or time.monotonic() >= container.restart_at:
                    self._start(container)
                return
            code = container.process.poll()
            if code is None:
                self._probe(container)
                return
            self._exited(container, code)
        except Exception as err:  # noqa: BLE001 - see above
            log.exception("pod %s/%s: container %s", self.namespace, self.pod_name, container.name)
            if container.process is not None and container.process.poll() is None:
                return  # still running: it stays supervised
            if container.process is not None:
                self._exited(container, container.process.poll())
                return
            container.state = {"waiting": {"reason": lifecycle.RUN_CONTAINER_ERROR, "message": str(err)}}
            self._schedule_restart(container, keep_count=True)

    def _exited(self, container: Container, code: int) -> None:
        self._terminated(container, code)
        if lifecycle.restarts(self.policy, _exit_code(container) or 0, init=container.init):
            self._schedule_restart(container)
        else:
            container.done = True
            if container.init:
                self.reason = None

    def _phase(self) -> str:
        return lifecycle.pod_phase(self.policy, self.init_done,
                                   [_view(c) for c in self.init_containers], [_view(c) for c in self.containers])

    # ------------------------------------------------------------------ containers

    def _read_only_volume(self, name: str) -> bool:
        """A claim marked readOnly in the pod is mounted read-only in every container."""
        for volume in self.pod["spec"].get("volumes") or []:
            if volume["name"] == name:
                return bool((volume.get("persistentVolumeClaim") or {}).get("readOnly"))
        return False

    def _env(self, container: Container) -> dict[str, str]:
        runtime = container.runtime
        agent = self.agent
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME": self.pod_name,
            "HOME": "/root",
            # In-cluster clients find the apiserver here. A real kubelet points these at the
            # kubernetes Service; the test bed has no kube-proxy, so they name the apiserver itself.
            "KUBERNETES_SERVICE_HOST": agent.apiserver_host,
            "KUBERNETES_SERVICE_PORT": str(agent.apiserver_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(agent.apiserver_port),
        }
        if runtime.kind == "image":
            # The image's ENV first; what the kubelet and the pod set goes over it.
            env = {"HOME": "/", **runtime.env, **{k: v for k, v in env.items() if k not in ("PATH", "HOME")}}
        if runtime.kind == "project":
            env["PATH"] = f"{agent.project_python.parent}:{env['PATH']}"
            env["PYTHONPATH"] = f"{PROJECT_MOUNT}/operator"
            env["PYTHONUNBUFFERED"] = "1"
        source = sandbox.VolumeSource(agent.core, self.pod)
        for env_from in container.spec.get("envFrom") or []:
            prefix = env_from.get("prefix", "")
            if "configMapRef" in env_from:
                ref = env_from["configMapRef"]
                data = source.config_map(ref["name"], ref.get("optional", False)) or {}
            else:
                ref = env_from["secretRef"]
                data = source.secret(ref["name"], ref.get("optional", False)) or {}
            env.update({prefix + k: v.decode() for k, v in data.items()})
        for var in container.spec.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = _expand(var.get("value", ""), env)
                continue
            value_from = var["valueFrom"]
            if "fieldRef" in value_from:
                pod = {**self.pod, "status": {"podIP": self.pod_ip or "", "hostIP": agent.host_ip}}
                env[var["name"]] = sandbox._field_value(pod, value_from["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in value_from or "secretKeyRef" in value_from:
                is_cm = "configMapKeyRef" in value_from
                ref = value_from["configMapKeyRef" if is_cm else "secretKeyRef"]
                data = (source.config_map if is_cm else source.secret)(ref["name"], ref.get("optional", False)) or {}
                if ref["key"] in data:
                    env[var["name"]] = data[ref["key"]].decode()
                elif not ref.get("optional", False):
                    raise sandbox.SandboxError(f"couldn't find key {ref['key']} in {ref['name']}")
            elif "resourceFieldRef" in value_from:
                resource = value_from["resourceFieldRef"]["resource"]
                kind, _, name = resource.partition(".")
                env[var["name"]] = str((container.spec.get("resources") or {}).get(kind, {}).get(name, "0"))
        return env

    def _start(self, container: Container) -> None:
        spec = container.spec
        try:
            env = self._env(container)
            argv = container_argv(spec, container.runtime)
            if container.runtime.kind == "triton":
                argv, extra_env = self.agent.triton_command(argv)
                env.update(extra_env)
            mounts = []
            for mount in spec.get("volumeMounts") or []:
                host = self.mounts[mount["name"]]
                if mount.get("subPath"):
                    host = host / mount["subPath"]
                    host.mkdir(parents=True, exist_ok=True) if not host.exists() else None
                mounts.append((host, mount["mountPath"], bool(mount.get("readOnly")) or self._read_only_volume(mount["name"])))
            if container.runtime.kind == "image":
                container.identity = identity(self.pod["spec"], spec, container.runtime.user)
        except (sandbox.SandboxError, KeyError, ContainerConfigError) as err:
            container.state = {"waiting": {"reason": lifecycle.CREATE_CONTAINER_CONFIG_ERROR, "message": str(err)}}
            self.agent.event(self.pod, "Warning", "Failed", f"Error: {err}")
            self._schedule_restart(container, keep_count=True)
            return
        termination_file = self.dir / f"{container.name}.termination-log"
        termination_file.write_bytes(b"")
        script = self.dir / f"{container.name}.sh"
        workdir = spec.get("workingDir") or container.runtime.workdir
        termination_path = spec.get("terminationMessagePath", "/dev/termination-log")
        hostname = (self.pod["spec"].get("hostname") or self.pod_name)[:63]
        if container.runtime.kind == "image":
            script.write_text(sandbox.image_launch_script(
                container.runtime.rootfs, self.dir / f"{container.name}.rootfs", mounts, termination_file,
                termination_path, workdir, hostname, self.pod_ip or "", container.identity, self.agent.project_python,
            ))
        else:
            script.write_text(sandbox.launch_script(
                mounts, termination_file, termination_path, workdir,
                self.agent.project_root if container.runtime.kind == "project" else None, hostname,
            ))
        log_file = self.dir / f"{container.name}.log"
        if log_file.exists():  # the instance before stays readable: kubectl logs --previous
            log_file.replace(self.dir / f"{container.name}.previous.log")
        container.process = sandbox.start_container(self.netns, script, argv, env, log_file)
        (self.dir / f"{container.name}.pid").write_text(str(container.process.pid))
        container.state = {"running": {"startedAt": now_rfc3339()}}
        container.started_mono = time.monotonic()
        container.restart_at = None
        container.ready = False
        container.started = not spec.get("startupProbe")
        start = time.monotonic()
        container.probes = {
            kind: ProbeState(spec[key], start + spec[key].get("initialDelaySeconds", 0))
            for kind, key in (("startup", "startupProbe"), ("readiness", "readinessProbe"), ("liveness", "livenessProbe"))
            if spec.get(key)
        }
        if not container.init and "readiness" not in container.probes:
            container.ready = container.started
        self.agent.event(self.pod, "Normal", "Started", f"Started container {container.name}")

    def _terminated(self, container: Container, code: int) -> None:
        container.state = {"terminated": lifecycle.terminated_state(
            code, container.state.get("running", {}).get("startedAt", now_rfc3339()), now_rfc3339(),
            f"modelops://{container.process.pid}", self._termination_message(container, code))}
        container.ready = False
        container.process = None
        (self.dir / f"{container.name}.pid").unlink(missing_ok=True)

    def _termination_message(self, container: Container, code: int) -> str:
        path = self.dir / f"{container.name}.termination-log"
        try:
            message = path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        except FileNotFoundError:
            message = ""
        policy = container.spec.get("terminationMessagePolicy", "File")
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            try:
                lines = (self.dir / f"{container.name}.log").read_text(errors="replace").splitlines()
            except FileNotFoundError:
                lines = []
            message = "\n".join(lines[-FALLBACK_LOG_LINES:])[-2048:]
        return message

    def _schedule_restart(self, container: Container, keep_count: bool = False) -> None:
        if "terminated" in container.state:
            container.last_state = container.state
        if not keep_count:
            container.restart_count += 1
        now = time.monotonic()
        # A container that never started (a config error) backs off as one that crashed at once.
        ran_for = now - container.started_mono if container.started_mono is not None and not keep_count else 0.0
        delay = self.agent.backoff.next_delay(container.backoff, ran_for)
        container.backoff = delay
        container.restart_at = now + delay
        if not keep_count:
            container.state = lifecycle.back_off_state(container.name, self.pod_name, delay)
            self.agent.event(self.pod, "Warning", "BackOff", f"Back-off restarting failed container {container.name}")

    # ------------------------------------------------------------------ probes

    def _probe(self, container: Container) -> None:
        now = time.monotonic()
        for kind in ("startup", "readiness", "liveness"):
            state = container.probes.get(kind)
            if state is None or now < state.next_at:
                continue
            if kind != "startup" and not container.started:
                continue
            if kind == "startup" and container.started:
                continue
            spec = state.spec
            state.next_at = now + spec.get("periodSeconds", 10)
            ok = self._run_probe(container, spec)
            if ok:
                state.successes += 1
                state.failures = 0
            else:
                state.failures += 1
                state.successes = 0
            threshold_ok = spec.get("successThreshold", 1)
            threshold_fail = spec.get("failureThreshold", 3)
            if kind == "startup":
                if ok:
                    container.started = True
                    if "readiness" not in container.probes:
                        container.ready = True
                elif state.failures >= threshold_fail:
                    self._kill_unhealthy(container, "startup")
                    return
            elif kind == "readiness":
                if ok and state.successes >= threshold_ok:
                    container.ready = True
                elif not ok and state.failures >= threshold_fail:
                    container.ready = False
            elif not ok and state.failures >= threshold_fail:
                self._kill_unhealthy(container, "liveness")
                return

    def _kill_unhealthy(self, container: Container, kind: str) -> None:
        self.agent.event(self.pod, "Warning", "Unhealthy", f"{kind.capitalize()} probe failed; restarting {container.name}")
        sandbox.signal_group(container.process.pid, signal.SIGKILL)
        container.process.wait()
        # The exit is picked up on the next step like any other, so restartPolicy applies.
        container.process = _Exited(container.process, 137)

    def _enter(self, container: Container, *namespaces: str) -> list[str]:
        """nsenter into a running container: its namespaces and, for a built image, its
        root, working directory and user."""
        argv = ["nsenter", "-t", str(container.process.pid), *namespaces]
        if container.runtime.kind == "image" and container.identity is not None:
            argv += ["-r", "-w", "-S", str(container.identity.uid), "-G", str(container.identity.gid)]
        return [*argv, "--"]

    def _run_probe(self, container: Container, spec: dict) -> bool:
        timeout = spec.get("timeoutSeconds", 1)
        ports = {p["name"]: p["containerPort"] for p in container.spec.get("ports") or [] if p.get("name")}
        try:
            if "httpGet" in spec:
                http = spec["httpGet"]
                port = ports.get(http["port"], http["port"])
                scheme = http.get("scheme", "HTTP").lower()
                url = f"{scheme}://{http.get('host') or self.pod_ip}:{port}{http.get('path', '/')}"
                request = urllib.request.Request(url, headers={h["name"]: h["value"] for h in http.get("httpHeaders") or []})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return 200 <= response.status < 400
            if "tcpSocket" in spec:
                port = ports.get(spec["tcpSocket"]["port"], spec["tcpSocket"]["port"])
                with socket.create_connection((spec["tcpSocket"].get("host") or self.pod_ip, int(port)), timeout=timeout):
                    return True
            if "exec" in spec:
                result = subprocess.run(
                    [*self._enter(container, "-m", "-n"), *spec["exec"]["command"]],
                    capture_output=True, timeout=timeout, env=self._env(container),
                )
                return result.returncode == 0
        except (urllib.error.URLError, OSError, subprocess.TimeoutExpired, ValueError):
            return False
        return False

    # ------------------------------------------------------------------ status

    def _condition(self, kind: str, status: bool, reason: str | None = None) -> dict:
        value = "True" if status else "False"
        previous = self.transitions.get(kind)
        if previous is None or previous[0] != value:
            self.transitions[kind] = (value, now_rfc3339())
        condition = {"type": kind, "status": value, "lastTransitionTime": self.transitions[kind][1], "lastProbeTime": None}
        if reason and not status:
            condition["reason"] = reason
        return condition

    def _container_status(self, container: Container) -> dict:
        # What the process is now, not only what the last step recorded: a container whose
        # process exited since is reported terminated, never running.
        process = container.process
        returncode = process.poll() if process is not None else None
        alive = process is not None and returncode is None
        container_id = f"modelops://{process.pid}" if process is not None else ""
        state = lifecycle.reported_state(container.state, alive, returncode, now_rfc3339(), container_id)
        status = {
            "name": container.name,
            "image": container.spec["image"],
            "imageID": container.spec["image"],
            "ready": container.ready and alive,
            "restartCount": container.restart_count,
            "started": alive and container.started,
            "state": state,
            "lastState": container.last_state,
        }
        if alive:
            status["containerID"] = container_id
        elif "terminated" in state:
            status["containerID"] = state["terminated"]["containerID"]
        return status

    def status(self) -> dict:
        statuses = [self._container_status(c) for c in self.containers]
        containers_ready = all(c["ready"] for c in statuses)
        scheduled = [c for c in (self.pod.get("status") or {}).get("conditions") or [] if c["type"] == "PodScheduled"]
        conditions = [
            self._condition("PodReadyToStartContainers", self.pod_ip is not None),
            self._condition("Initialized", self.init_done, "ContainersNotInitialized"),
            self._condition("ContainersReady", containers_ready, "ContainersNotReady"),
            self._condition("Ready", containers_ready, "ContainersNotReady"),
            *scheduled,
        ]
        status = {
            "phase": self.phase,
            "conditions": conditions,
            "hostIP": self.agent.host_ip,
            "hostIPs": [{"ip": self.agent.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}] if self.pod_ip else None,
            "startTime": self.start_time,
            "containerStatuses": statuses,
            "reason": self.reason,
            "message": self.message,
        }
        if self.init_containers:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.init_containers]
        return status

    def _report(self) -> None:
        status = self.status()
        if status == self.last_status:
            return
        try:
            self.agent.patch_pod_status(self.namespace, self.pod_name, status)
            self.last_status = status
        except Exception as err:  # noqa: BLE001 - retried on the next tick
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.pod_name, err)

    # ------------------------------------------------------------------ teardown

    def _pre_stop(self, container: Container, deadline: float) -> None:
        """Run the container's preStop hook (exec, httpGet or sleep) within the grace period."""
        hook = ((container.spec.get("lifecycle") or {}).get("preStop")) or {}
        remaining = max(0.0, deadline - time.monotonic())
        try:
            if "sleep" in hook:
                time.sleep(min(float(hook["sleep"]["seconds"]), remaining))
            elif "exec" in hook:
                subprocess.run(
                    [*self._enter(container, "-m", "-n", "-u"), *hook["exec"]["command"]],
                    capture_output=True, timeout=remaining, env=self._env(container),
                )
            elif "httpGet" in hook:
                self._run_probe(container, {"httpGet": hook["httpGet"], "timeoutSeconds": max(1, int(remaining))})
        except Exception as err:  # noqa: BLE001 - a failed hook never delays the stop past its grace period
            self.agent.event(self.pod, "Warning", "FailedPreStopHook", f"PreStopHook failed: {err}")

    def _stop_containers(self) -> None:
        """preStop hooks, SIGTERM, and SIGKILL for whatever still runs at the end of the grace
        period (which a later deletion with a shorter one brings forward); each container's
        exit is recorded in its state."""
        running = [c for c in self.init_containers + self.containers if c.process is not None]
        if not running:
            return
        # Without a deletion (the pod ended, or the worker failed), the pod's own grace period.
        unrequested = time.monotonic() + self.grace_seconds

        def deadline() -> float:
            return self.stop_deadline if self.stop_deadline is not None else unrequested
        if self.stop_requested.is_set() and not self.agent.shutting_down:
            hooks = [threading.Thread(target=self._pre_stop, args=(c, deadline()), daemon=True) for c in running
                     if not c.init and (c.spec.get("lifecycle") or {}).get("preStop")]
            for hook in hooks:
                hook.start()
            for hook in hooks:
                while hook.is_alive() and time.monotonic() < deadline():
                    hook.join(TICK)
        for container in running:
            if container.process.poll() is None:
                self.agent.event(self.pod, "Normal", "Killing", f"Stopping container {container.name}")
            sandbox.signal_group(container.process.pid, signal.SIGTERM)
        while any(c.process.poll() is None for c in running) and time.monotonic() < deadline():
            time.sleep(TICK)
        for container in running:
            if container.process.poll() is None:
                sandbox.signal_group(container.process.pid, signal.SIGKILL)
            code = container.process.wait()
            self._terminated(container, code)

    def _release_sandbox(self) -> None:
        self._stop_containers()
        sandbox.delete_netns(self.netns)
        self.agent.release_ip(self.uid)

    def _teardown(self) -> None:
        """Stop what runs, remove the sandbox, and finish the pod's deletion in the apiserver
        (grace 0, retried through an outage), so that it never stays Terminating."""
        try:
            self._release_sandbox()
        except Exception:  # noqa: BLE001 - the pod object is still removed
            log.exception("pod %s/%s: tearing down the sandbox failed", self.namespace, self.pod_name)
        try:
            while not self.force_gone and not self.agent.shutting_down:
                if self.agent.delete_pod(self.namespace, self.pod_name, self.uid):
                    break
                time.sleep(IDLE_REPORT_SECONDS)
        finally:
            self.agent.forget(self.uid)


class _Exited:
    """Stands in for a process the agent killed, so the next step sees its exit code."""

    def __init__(self, process: subprocess.Popen, code: int):
        self.pid = process.pid
        self._code = code

    def poll(self) -> int:
        return self._code

    def wait(self, timeout: float | None = None) -> int:
        return self._code


def _exit_code(container: Container) -> int | None:
    return container.state.get("terminated", {}).get("exitCode")


def _view(container: Container) -> lifecycle.ContainerView:
    alive = container.process is not None and container.process.poll() is None
    return lifecycle.ContainerView(running=alive, done=container.done, exit_code=_exit_code(container),
                                   restart_count=container.restart_count)


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values."""
    for name, replacement in env.items():
        value = value.replace(f"$({name})", replacement)
    return value

