"""A pod's sandbox on the test bed: its network namespace, its volumes and its processes.

Each pod gets a network namespace with one veth on the test bed's bridge, so it has an
IP of its own and two pods can both listen on :8000. Each container is started through
`ip netns exec`, which also gives it a private mount namespace; inside it, the pod's
volumes are bind-mounted at the paths the pod asks for, and the termination message file
is bind-mounted at terminationMessagePath.

A container of a built image (images.ImageRuntime kind "image") gets its own root: an
overlay of the image's unpacked root filesystem (shared, never written) under a
per-container upper directory, with /proc, /sys, a private /dev and the pod's /etc/hosts
mounted in, the volumes bind-mounted under it, and the root remounted read-only for
readOnlyRootFilesystem. enter.py then chroots into it and becomes the container's user.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .images import PROJECT_MOUNT, Identity


class SandboxError(Exception):
    """The sandbox could not be set up; the message says why."""


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SandboxError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class Network:
    bridge: str
    gateway: str
    prefix: int


def veth_name(netns: str) -> str:
    # Interface names are limited to 15 characters.
    return "mv" + hashlib.sha1(netns.encode()).hexdigest()[:10]


def create_netns(netns: str, pod_ip: str, network: Network) -> None:
    delete_netns(netns)
    host_side, pod_side = veth_name(netns), veth_name(netns) + "p"
    run(["ip", "netns", "add", netns])
    run(["ip", "link", "add", host_side, "type", "veth", "peer", "name", pod_side])
    run(["ip", "link", "set", pod_side, "netns", netns])
    run(["ip", "link", "set", host_side, "master", network.bridge, "up"])
    run(["ip", "-n", netns, "link", "set", pod_side, "name", "eth0"])
    run(["ip", "-n", netns, "addr", "add", f"{pod_ip}/{network.prefix}", "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    run(["ip", "-n", netns, "route", "add", "default", "via", network.gateway])


def delete_netns(netns: str) -> None:
    run(["ip", "netns", "del", netns], check=False)
    run(["ip", "link", "del", veth_name(netns)], check=False)


def list_netns(prefix: str) -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0].startswith(prefix)]


# --------------------------------------------------------------------------- volumes


def _write_items(target: Path, data: dict[str, bytes], items: list[dict] | None, mode: int | None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    selected = [(i["key"], i["path"], i.get("mode")) for i in items] if items else [(k, k, None) for k in data]
    for key, rel, item_mode in selected:
        if key not in data:
            raise SandboxError(f"key {key!r} is not present")
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
        path.chmod(item_mode if item_mode is not None else (mode if mode is not None else 0o644))


def _field_value(pod: dict, field_path: str) -> str:
    metadata = pod["metadata"]
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": pod.get("status", {}).get("podIP", ""),
        "status.hostIP": pod.get("status", {}).get("hostIP", ""),
    }
    if field_path in simple:
        return simple[field_path]
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if field_path == prefix:
            return "\n".join(f'{k}="{v}"' for k, v in sorted((metadata.get(source) or {}).items()))
        if field_path.startswith(prefix + "['"):
            return (metadata.get(source) or {}).get(field_path[len(prefix) + 2 : -2], "")
    raise SandboxError(f"unsupported fieldRef {field_path!r}")


class VolumeSource:
    """Reads what volumes refer to from the API; the agent passes its client in."""

    def __init__(self, core_api, pod: dict):
        self.core = core_api
        self.pod = pod
        self.namespace = pod["metadata"]["namespace"]

    def config_map(self, name: str, optional: bool) -> dict[str, bytes] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            cm = self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as err:
            if err.status == 404 and optional:
                return None
            raise SandboxError(f'configmap "{name}" not found') from err
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        return data

    def secret(self, name: str, optional: bool) -> dict[str, bytes] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.core.read_namespaced_secret(name, self.namespace)
        except ApiException as err:
            if err.status == 404 and optional:
                return None
            raise SandboxError(f'secret "{name}" not found') from err
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def claimed_path(self, claim_name: str) -> Path:
        """The host directory of the PersistentVolume bound to a claim: a `local` or `hostPath`
        volume, the kinds a node can mount without a CSI driver."""
        from kubernetes.client.exceptions import ApiException

        try:
            claim = self.core.read_namespaced_persistent_volume_claim(claim_name, self.namespace)
        except ApiException as err:
            raise SandboxError(f'persistentvolumeclaim "{claim_name}" not found') from err
        if (claim.status.phase or "") != "Bound" or not claim.spec.volume_name:
            raise SandboxError(f'persistentvolumeclaim "{claim_name}" is not bound yet')
        volume = self.core.read_persistent_volume(claim.spec.volume_name)
        if volume.spec.local is not None:
            return Path(volume.spec.local.path)
        if volume.spec.host_path is not None:
            return Path(volume.spec.host_path.path)
        raise SandboxError(f"persistentvolume {claim.spec.volume_name!r}: only local and hostPath volumes are supported on the test bed")

    def service_account_token(self, audience: str | None, expiration: int | None) -> bytes:
        from kubernetes import client

        metadata = self.pod["metadata"]
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[audience] if audience else [],
                expiration_seconds=max(expiration or 3607, 600),
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=metadata["name"], uid=metadata["uid"]
                ),
            )
        )
        account = self.pod["spec"].get("serviceAccountName") or "default"
        token = self.core.create_namespaced_service_account_token(account, self.namespace, request)
        return token.status.token.encode()


def materialize_volume(volume: dict, target: Path, source: VolumeSource) -> Path:
    """Create the host directory (or file tree) for one pod volume and return it."""
    name = volume["name"]
    if "emptyDir" in volume:
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o777)  # as the kubelet makes it: any container user may write
        return target
    if "hostPath" in volume:
        return Path(volume["hostPath"]["path"])
    if "persistentVolumeClaim" in volume:
        return source.claimed_path(volume["persistentVolumeClaim"]["claimName"])
    if "configMap" in volume:
        spec = volume["configMap"]
        data = source.config_map(spec["name"], spec.get("optional", False)) or {}
        _write_items(target, data, spec.get("items"), spec.get("defaultMode"))
        return target
    if "secret" in volume:
        spec = volume["secret"]
        data = source.secret(spec["secretName"], spec.get("optional", False)) or {}
        _write_items(target, data, spec.get("items"), spec.get("defaultMode", 0o644))
        return target
    if "downwardAPI" in volume:
        spec = volume["downwardAPI"]
        data = {i["path"]: _field_value(source.pod, i["fieldRef"]["fieldPath"]).encode() for i in spec["items"]}
        _write_items(target, data, None, spec.get("defaultMode"))
        return target
    if "projected" in volume:
        spec = volume["projected"]
        target.mkdir(parents=True, exist_ok=True)
        for part in spec.get("sources", []):
            if "serviceAccountToken" in part:
                sat = part["serviceAccountToken"]
                token = source.service_account_token(sat.get("audience"), sat.get("expirationSeconds"))
                _write_items(target, {sat["path"]: token}, None, spec.get("defaultMode", 0o600))
            elif "configMap" in part:
                cm = part["configMap"]
                data = source.config_map(cm["name"], cm.get("optional", False)) or {}
                _write_items(target, data, cm.get("items"), spec.get("defaultMode"))
            elif "secret" in part:
                sec = part["secret"]
                data = source.secret(sec["name"], sec.get("optional", False)) or {}
                _write_items(target, data, sec.get("items"), spec.get("defaultMode"))
            elif "downwardAPI" in part:
                items = part["downwardAPI"]["items"]
                data = {i["path"]: _field_value(source.pod, i["fieldRef"]["fieldPath"]).encode() for i in items}
                _write_items(target, data, None, spec.get("defaultMode"))
        return target
    kinds = sorted(k for k in volume if k != "name")
    raise SandboxError(f"volume {name!r}: {', '.join(kinds)} volumes are not supported on the test bed")


def apply_fs_group(volume: dict, path: Path, gid: int) -> None:
    """The pod's fsGroup, as the kubelet applies it: the volume's files belong to the group,
    which may read them (and write an emptyDir); directories are setgid."""
    if "hostPath" in volume or "persistentVolumeClaim" in volume:
        return  # the kubelet leaves host directories as they are (a local volume too)
    writable = "emptyDir" in volume
    for directory, _dirs, files in os.walk(path):
        os.chown(directory, -1, gid)
        os.chmod(directory, os.stat(directory).st_mode | 0o2070)
        for name in files:
            file = os.path.join(directory, name)
            os.chown(file, -1, gid, follow_symlinks=False)
            mode = os.stat(file).st_mode
            os.chmod(file, mode | (0o060 if writable else 0o040))


# --------------------------------------------------------------------------- processes


def launch_script(mounts: list[tuple[Path, str, bool]], termination_file: Path, termination_path: str,
                  workdir: str, project: Path | None, hostname: str) -> str:
    """A shell script run inside the pod's namespaces that mounts volumes and execs the container."""
    lines = ["set -e", f"hostname {shlex.quote(hostname)}"]
    if project is not None:
        mounts = [(project, PROJECT_MOUNT, True), *mounts]
    for host_path, mount_path, read_only in mounts:
        src, dst = shlex.quote(str(host_path)), shlex.quote(mount_path)
        if host_path.is_dir():
            lines.append(f"mkdir -p {dst}")
        else:
            lines.append(f"mkdir -p $(dirname {dst}); [ -e {dst} ] || touch {dst}")
        lines.append(f"mount --bind {src} {dst}")
        if read_only:
            lines.append(f"mount -o remount,bind,ro {dst}")
    dst = shlex.quote(termination_path)
    lines.append(f"mkdir -p $(dirname {dst}); [ -e {dst} ] || touch {dst}")
    lines.append(f"mount --bind {shlex.quote(str(termination_file))} {dst}")
    lines.append(f"mkdir -p {shlex.quote(workdir)} && cd {shlex.quote(workdir)}")
    lines.append('exec "$@"')
    return "\n".join(lines) + "\n"


ENTER = Path(__file__).with_name("enter.py")
SYMLINK_HOPS = 40


def path_in_root(rootfs: Path, path: str) -> str:
    """`path` inside the image, with the image's symlinks followed inside the image (as
    runc's securejoin does): /var/run -> /run in Debian must not lead to the host's /run."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = rootfs.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > SYMLINK_HOPS:
                raise SandboxError(f"too many symbolic links under {path!r} in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return "/" + "/".join(resolved)


DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def image_launch_script(rootfs: Path, state: Path, mounts: list[tuple[Path, str, bool]], termination_file: Path,
                        termination_path: str, workdir: str, hostname: str, pod_ip: str, who: Identity,
                        python: Path) -> str:
    """A shell script run inside the pod's namespaces that builds the container's root from
    its image and volumes, and execs the command in it as the container's user."""
    q = shlex.quote
    root = state / "root"
    upper, work = state / "upper", state / "work"
    lines = ["set -e", f"hostname {q(hostname)}", f"rm -rf {q(str(state))}",
             f"mkdir -p {q(str(root))} {q(str(upper))} {q(str(work))}",
             # Mounts made here stay in this container's mount namespace.
             "mount --make-rprivate /",
             f"mount -t overlay overlay -o lowerdir={q(str(rootfs))},upperdir={q(str(upper))},workdir={q(str(work))} {q(str(root))}"]
    r = str(root)

    def inside(path: str) -> str:
        return q(r + path_in_root(rootfs, path))

    lines += [f"mkdir -p {inside(d)}" for d in ("/proc", "/sys", "/dev", "/etc", "/tmp")]
    dev = inside("/dev")  # a fresh tmpfs: what is under it is not the image's
    lines += [f"mount -t proc proc {inside('/proc')}", f"mount --rbind /sys {inside('/sys')}",
              f"mount -t tmpfs -o nosuid,mode=755 tmpfs {dev}",
              f"mkdir -p {dev}/shm {dev}/pts",
              f"mount -t tmpfs -o nosuid,nodev,mode=1777 shm {dev}/shm",
              f"ln -s /proc/self/fd {dev}/fd"]
    for name, fd in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        lines.append(f"ln -s /proc/self/fd/{fd} {dev}/{name}")
    for device in DEVICES:
        lines.append(f"touch {dev}/{device} && mount --bind /dev/{device} {dev}/{device}")
    hosts = state.parent / f"{state.name}.hosts"
    hosts.write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{hostname}\n")
    for host_file, path in ((hosts, "/etc/hosts"), (Path("/etc/resolv.conf"), "/etc/resolv.conf")):
        if host_file.exists():
            lines.append(f"[ -e {inside(path)} ] || touch {inside(path)}; mount --bind {q(str(host_file))} {inside(path)}")
    for host_path, mount_path, read_only in mounts:
        src, dst = q(str(host_path)), inside(mount_path)
        if host_path.is_dir():
            lines.append(f"mkdir -p {dst}")
        else:
            lines.append(f"mkdir -p $(dirname {dst}); [ -e {dst} ] || touch {dst}")
        lines.append(f"mount --bind {src} {dst}")
        if read_only:
            lines.append(f"mount -o remount,bind,ro {dst}")
    dst = inside(termination_path)
    lines.append(f"mkdir -p $(dirname {dst}); [ -e {dst} ] || touch {dst}")
    lines.append(f"mount --bind {q(str(termination_file))} {dst}")
    lines.append(f"chown {who.uid}:{who.gid} {q(str(termination_file))}")
    lines.append(f"mkdir -p {inside(workdir)}")
    if who.read_only_root:
        lines.append(f"mount -o remount,ro {q(r)}")
    groups = ",".join(str(g) for g in who.groups)
    lines.append(f'exec {q(str(python))} -I {q(str(ENTER))} {q(r)} {q(workdir)} {who.uid} {who.gid} "{groups}" '
                 f'{int(who.no_new_privileges)} -- "$@"')
    return "\n".join(lines) + "\n"


def start_container(netns: str, script: Path, argv: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen:
    with open(log_file, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            # Its own UTS namespace too, so that the hostname is the pod's name.
            ["ip", "netns", "exec", netns, "unshare", "--uts", "/bin/sh", str(script), *argv],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
