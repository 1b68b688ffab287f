"""The kubelet API of a test bed node: what `kubectl logs`, `exec` and `port-forward` reach.

The apiserver proxies those commands to the node's kubelet endpoint (its InternalIP and
`status.daemonEndpoints.kubeletEndpoint.Port`) over TLS, with a client certificate from
the cluster CA. This server answers, as a kubelet does:

- `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`, `tailLines`,
  `previous`, `limitBytes`: the container's output, from the files the node agent writes
  (`<container>.log`, and `<container>.previous.log` for the instance before);
- `/exec/{namespace}/{pod}/{container}?command=...&input=1&output=1&error=1`: upgraded to
  SPDY/3.1 (remotecommand v4), the command runs in the container's namespaces and root
  (nsenter), as the container's user, with the container's environment; TTYs are not
  offered;
- `/portForward/{namespace}/{pod}`: upgraded to SPDY/3.1 (portforward.k8s.io), each
  stream pair is a TCP connection to localhost:port inside the pod's network namespace.

It runs one asyncio loop on a thread of the node agent, so a TLS connection is only ever
read and written from one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from . import spdy

if TYPE_CHECKING:
    from .agent import NodeAgent
    from .pod import Container, PodWorker

log = logging.getLogger("nodeagent.kubelet")

EXEC_PROTOCOLS = ("v4.channel.k8s.io",)
PORT_FORWARD_PROTOCOL = "portforward.k8s.io"
STREAM_WAIT_SECONDS = 30
FOLLOW_POLL_SECONDS = 0.1
CLONE_NEWNET = 0x40000000


class Refused(Exception):
    """A request the kubelet answers with an HTTP error; the message is the body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def log_files(worker_dir: Path, container: str) -> tuple[Path, Path]:
    """(current, previous) output of a container: the files the pod worker writes."""
    return worker_dir / f"{container}.log", worker_dir / f"{container}.previous.log"


def tail_offset(path: Path, lines: int) -> int:
    """The byte offset where the last `lines` lines of a file begin."""
    size = path.stat().st_size
    if lines <= 0:
        return size
    with path.open("rb") as handle:
        end, found, block = size, 0, 8192
        # A trailing newline ends the last line; it does not start another.
        handle.seek(max(0, size - 1))
        if size and handle.read(1) == b"\n":
            end -= 1
        position = end
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            for index in range(len(chunk) - 1, -1, -1):
                if chunk[index : index + 1] == b"\n":
                    found += 1
                    if found == lines:
                        return start + index + 1
            position = start
    return 0


def _status(exit_code: int | None, message: str = "") -> bytes:
    """The v4 remotecommand status, as the kubelet writes it on the error stream."""
    if exit_code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    if exit_code is None:
        return json.dumps({"metadata": {}, "status": "Failure", "message": message}).encode()
    return json.dumps({
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }).encode()


def _process_identity(pid: int) -> tuple[dict[str, str], str, str]:
    """The environment, uid and gid a container process runs with."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)
    uid = gid = "0"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            uid = line.split()[1]
        elif line.startswith("Gid:"):
            gid = line.split()[1]
    return env, uid, gid


def connect_in_netns(netns_path: str, port: int) -> socket.socket:
    """A TCP connection to localhost:port inside a network namespace.

    The namespace is entered on a thread of its own (a network namespace belongs to a
    thread), the socket is created there, and it stays in that namespace once the thread ends.
    """
    result: dict[str, object] = {}

    def connect() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            target = os.open(netns_path, os.O_RDONLY)
            try:
                if libc.setns(target, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns_path}: {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(target)
            result["socket"] = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError as err:
            result["error"] = err

    thread = threading.Thread(target=connect, name=f"portforward-{port}", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    sock = result["socket"]
    assert isinstance(sock, socket.socket)
    sock.settimeout(None)
    return sock


class KubeletServer:
    def __init__(self, agent: NodeAgent, host: str, port: int, cert: Path, key: Path, ca: Path):
        self.agent = agent
        self.host = host
        self.port = port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
        self.context.load_cert_chain(str(cert), str(key))
        # Only clients with a certificate from the cluster CA (the apiserver's) get in.
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="kubelet-api", daemon=True).start()
        if not self.ready.wait(30):
            raise RuntimeError("the kubelet API did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._connection, self.host, self.port, ssl=self.context))
        log.info("kubelet API on https://%s:%d", self.host, self.port)
        self.ready.set()
        self.loop.run_forever()

    # ------------------------------------------------------------------ HTTP

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode("latin-1").strip()
            headers: dict[str, list[str]] = {}
            while True:
                line = (await reader.readline()).decode("latin-1")
                if line in ("\r\n", "\n", ""):
                    break
                name, _, value = line.partition(":")
                headers.setdefault(name.strip().lower(), []).append(value.strip())
            method, target, _ = (request_line.split(" ") + ["", "", ""])[:3]
            await self._route(method, target, headers, reader, writer)
        except Refused as err:
            self._respond(writer, err.status, str(err).encode())
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except Exception as err:  # noqa: BLE001 - one bad request must not stop the server
            log.exception("kubelet API request failed")
            self._respond(writer, 500, str(err).encode())
        finally:
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError, OSError):
                pass

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str = "text/plain") -> None:
        if writer.is_closing():
            return
        reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}
        writer.write(
            f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\nContent-Type: {content_type}; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)

    async def _route(self, method: str, target: str, headers: dict[str, list[str]],
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        url = urlsplit(target)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = dict(parse_qs(url.query, keep_blank_values=True).items())
        if parts == ["healthz"]:
            self._respond(writer, 200, b"ok")
        elif parts[0] == "containerLogs" and len(parts) == 4 and method == "GET":
            await self._logs(parts[1], parts[2], parts[3], query, writer)
        elif parts[0] == "exec" and len(parts) == 4 and method in ("GET", "POST"):
            await self._exec(parts[1], parts[2], parts[3], query, headers, reader, writer)
        elif parts[0] == "portForward" and len(parts) == 3 and method in ("GET", "POST"):
            await self._port_forward(parts[1], parts[2], headers, reader, writer)
        else:
            raise Refused(404, f"{method} {url.path}: not served by this node")

    # ------------------------------------------------------------------ lookup

    def _pod(self, namespace: str, name: str) -> PodWorker:
        with self.agent.lock:
            workers = list(self.agent.workers.values())
        for worker in workers:
            if worker.namespace == namespace and worker.pod_name == name:
                return worker
        raise Refused(404, f'pod "{name}" in namespace "{namespace}" is not running on node {self.agent.name}')

    @staticmethod
    def _container(worker: PodWorker, name: str) -> Container:
        for container in worker.init_containers + worker.containers:
            if container.name == name:
                return container
        raise Refused(400, f'container "{name}" is not valid for pod "{worker.pod_name}"')

    # ------------------------------------------------------------------ logs

    async def _logs(self, namespace: str, pod: str, name: str, query: dict[str, list[str]],
                    writer: asyncio.StreamWriter) -> None:
        worker = self._pod(namespace, pod)
        container = self._container(worker, name)
        current, previous = log_files(worker.dir, name)
        flag = lambda key: query.get(key, ["false"])[0] in ("true", "1")  # noqa: E731
        path = previous if flag("previous") else current
        if not path.exists():
            if flag("previous"):
                raise Refused(400, f'previous terminated container "{name}" in pod "{pod}" not found')
            waiting = container.state.get("waiting", {})
            raise Refused(400, f'container "{name}" in pod "{pod}" is waiting to start: '
                               f'{waiting.get("reason", "ContainerCreating")}')
        limit = int(query["limitBytes"][0]) if "limitBytes" in query else None
        handle = path.open("rb")
        try:
            if "tailLines" in query:
                handle.seek(tail_offset(path, int(query["tailLines"][0])))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            sent, draining = 0, False
            follow = flag("follow") and not flag("previous")
            instance = container.process
            while limit is None or sent < limit:
                chunk = handle.read(65536 if limit is None else min(65536, limit - sent))
                if chunk:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                    sent += len(chunk)
                    continue
                # Following ends when the container instance that writes this file has exited
                # (after one more read for what it wrote just before), or when the client leaves.
                alive = instance is not None and container.process is instance and instance.poll() is None
                if not follow or writer.is_closing() or (draining and not alive):
                    break
                draining = not alive
                if alive:
                    await asyncio.sleep(FOLLOW_POLL_SECONDS)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            handle.close()

    # ------------------------------------------------------------------ streams

    @staticmethod
    def _upgrade(headers: dict[str, list[str]], writer: asyncio.StreamWriter, offered: tuple[str, ...]) -> str:
        if "spdy/3.1" not in [v.lower() for v in headers.get("upgrade", [])]:
            raise Refused(400, "this endpoint needs an upgrade to SPDY/3.1")
        client = [p.strip() for v in headers.get("x-stream-protocol-version", []) for p in v.split(",")]
        chosen = next((p for p in client if p in offered), None)
        if chosen is None:
            raise Refused(403, f"none of the stream protocols {client} is supported; this node speaks {list(offered)}")
        writer.write(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            f"X-Stream-Protocol-Version: {chosen}\r\n\r\n".encode())
        return chosen

    async def _exec(self, namespace: str, pod: str, name: str, query: dict[str, list[str]],
                    headers: dict[str, list[str]], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worker = self._pod(namespace, pod)
        container = self._container(worker, name)
        command = query.get("command", [])
        if not command:
            raise Refused(400, "you must specify at least 1 command")
        if query.get("tty", ["0"])[0] in ("1", "true"):
            raise Refused(400, "this node does not allocate TTYs; run kubectl exec without -t")
        process = container.process
        if process is None or process.poll() is not None:
            raise Refused(400, f'container "{name}" in pod "{pod}" is not running')
        env, uid, gid = _process_identity(process.pid)
        # The apiserver names them as the kubelet API does: input, output, error (and tty).
        want = {kind for kind, param in (("stdin", "input"), ("stdout", "output"), ("stderr", "error"))
                if query.get(param, ["0"])[0] in ("1", "true")}
        self._upgrade(headers, writer, EXEC_PROTOCOLS)
        session = spdy.Session(reader, writer)
        serving = asyncio.ensure_future(session.serve())
        streams: dict[str, spdy.Stream] = {}
        try:
            async with asyncio.timeout(STREAM_WAIT_SECONDS):
                while not ({"error"} | want) <= streams.keys():
                    stream = await session.opened.get()
                    if stream is None:
                        return
                    streams[stream.headers.get("streamtype", "")] = stream
        except TimeoutError:
            log.warning("exec %s/%s: the client opened only %s", namespace, pod, sorted(streams))
            return
        argv = ["nsenter", "-t", str(process.pid), "-m", "-n", "-u", "-i", "-r", "-w",
                "-S", uid, "-G", gid, "--", *command]
        pipe = asyncio.subprocess.PIPE
        child = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=pipe if "stdin" in streams else asyncio.subprocess.DEVNULL,
            stdout=pipe if "stdout" in streams else asyncio.subprocess.DEVNULL,
            stderr=pipe if "stderr" in streams else asyncio.subprocess.DEVNULL, start_new_session=True)

        async def pump_out(source: asyncio.StreamReader, stream: spdy.Stream) -> None:
            while chunk := await source.read(65536):
                stream.write(chunk)
                await stream.drain()
            stream.close()

        async def pump_in(stream: spdy.Stream) -> None:
            assert child.stdin is not None
            try:
                while chunk := await stream.reader.read(65536):
                    child.stdin.write(chunk)
                    await child.stdin.drain()
            except (ConnectionError, BrokenPipeError):
                pass
            finally:
                child.stdin.close()

        outputs = [asyncio.ensure_future(pump_out(source, streams[kind]))
                   for kind, source in (("stdout", child.stdout), ("stderr", child.stderr)) if source is not None]
        feeder = asyncio.ensure_future(pump_in(streams["stdin"])) if "stdin" in streams else None
        exited = asyncio.ensure_future(child.wait())
        await asyncio.wait([exited, asyncio.ensure_future(session.done.wait())], return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():  # the client went away (kubectl interrupted): so does the command
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        code = await exited
        await asyncio.gather(*outputs)
        if feeder is not None:
            feeder.cancel()
        streams["error"].write(_status(code))
        streams["error"].close()
        for stream in streams.values():
            stream.close()
        await session.drain()
        # The client closes the connection once it has read the status.
        try:
            await asyncio.wait_for(serving, STREAM_WAIT_SECONDS)
        except TimeoutError:
            serving.cancel()

    async def _port_forward(self, namespace: str, pod: str, headers: dict[str, list[str]],
                            reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worker = self._pod(namespace, pod)
        if worker.pod_ip is None:
            raise Refused(400, f'pod "{pod}" has no network yet')
        netns = f"/run/netns/{worker.netns}"
        self._upgrade(headers, writer, (PORT_FORWARD_PROTOCOL,))
        session = spdy.Session(reader, writer)
        serving = asyncio.ensure_future(session.serve())
        pairs: dict[str, dict[str, spdy.Stream]] = {}
        tasks: set[asyncio.Task] = set()
        while (stream := await session.opened.get()) is not None:
            request = stream.headers.get("requestid", str(stream.id))
            pair = pairs.setdefault(request, {})
            pair[stream.headers.get("streamtype", "")] = stream
            if {"error", "data"} <= pair.keys():
                del pairs[request]
                task = asyncio.ensure_future(self._forward(pod, netns, pair["error"], pair["data"]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        for task in list(tasks):
            task.cancel()
        await serving

    async def _forward(self, pod: str, netns: str, error: spdy.Stream, data: spdy.Stream) -> None:
        try:
            port = int(data.headers["port"])
            sock = await asyncio.to_thread(connect_in_netns, netns, port)
            target_reader, target_writer = await asyncio.open_connection(sock=sock)
        except (OSError, KeyError, ValueError) as err:
            error.write(f"error forwarding port {data.headers.get('port')} to pod {pod}: {err}".encode())
            error.close()
            data.close()
            return

        async def upstream() -> None:
            while chunk := await data.reader.read(65536):
                target_writer.write(chunk)
                await target_writer.drain()
            if target_writer.can_write_eof():
                target_writer.write_eof()

        async def downstream() -> None:
            while chunk := await target_reader.read(65536):
                data.write(chunk)
                await data.drain()
            data.close()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            data.session.reset(data)
        finally:
            error.close()
            target_writer.close()
