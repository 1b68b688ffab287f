"""A NetworkPolicy engine for the test bed, started on demand: kube-router's network policy
controller (`e2e/testbed/build.sh kube-router`), with routing and the service proxy off.

The test bed's pods are network namespaces with a veth on one bridge, and the API server and
MinIO listen on the bridge's address. With `bridge-nf-call-iptables`, traffic between pods on
the bridge passes the host's iptables FORWARD chain, and traffic from a pod to the host its
INPUT chain; kube-router puts a firewall chain per pod there (ipsets for the peers, REJECT for
what no policy allows). Both nodes report the bridge address as their InternalIP and so as
every pod's hostIP, so one kube-router instance (as `testbed-cpu`) counts every pod of the test
bed as its own, and pods of another test bed (another bridge address) as none of its.

The chains are in the host's filter table, which every test bed on the machine shares, so one
engine runs at a time on a machine (a lock in the cache), and `stop()` removes every chain,
rule and ipset it made: kube-router's own `--cleanup-config` does not, in v2.1.0, remove the
policy controller's rules.

Only the standard library is used, as in cluster.py.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

CACHE = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops"))
LOCK = CACHE / "netpol.lock"
# The chains and ipsets of kube-router's network policy controller.
CHAIN_PREFIXES = ("KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-")
IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-")
TOOLS = ("iptables", "iptables-save", "iptables-restore", "ipset")
BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def without_engine_rules(saved: str) -> str:
    """The `iptables-save -t filter` text less every chain of the engine and every rule in one
    of them or jumping to one: what the table was before the engine started."""

    def ours(name: str) -> bool:
        return name.startswith(CHAIN_PREFIXES)

    kept = []
    for line in saved.splitlines():
        words = line.split()
        if line.startswith(":") and ours(line[1:].split()[0]):
            continue
        if words[:1] == ["-A"] and (ours(words[1]) or ("-j" in words and ours(words[words.index("-j") + 1]))):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def engine_ipsets(names: str) -> list[str]:
    """The engine's ipsets among `ipset list -n`'s lines."""
    return [name for name in names.split() if name.startswith(IPSET_PREFIXES)]


def ensure_tools() -> None:
    """iptables and ipset, from Debian where they are missing (as images/build.sh installs buildah)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"the NetworkPolicy engine needs {', '.join(missing)} (Debian: apt-get install iptables ipset) and root")
    subprocess.run(["apt-get", "install", "-y", "-q", "iptables", "ipset"], check=True, capture_output=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def remove_engine_state() -> None:
    """Every chain, rule and ipset of the engine, removed from the host's filter table."""
    saved = subprocess.run(["iptables-save", "-t", "filter"], check=True, capture_output=True, text=True).stdout
    if any(prefix in saved for prefix in CHAIN_PREFIXES):
        subprocess.run(["iptables-restore"], input=without_engine_rules(saved), check=True, capture_output=True, text=True)
    names = subprocess.run(["ipset", "list", "-n"], check=True, capture_output=True, text=True).stdout
    for name in engine_ipsets(names):
        subprocess.run(["ipset", "destroy", name], check=False, capture_output=True)


class PolicyEngine:
    """kube-router's network policy controller for one test bed, as its admin (`kubeconfig`)."""

    def __init__(self, kubeconfig: str, state_dir: Path, binary: Path, lock_timeout: float = 900) -> None:
        self.kubeconfig = kubeconfig
        self.binary = binary
        self.lock_timeout = lock_timeout
        self.log_path = state_dir / "logs" / "kube-router.log"
        self.pid_file = state_dir / "kube-router.pid"
        self.process: subprocess.Popen | None = None
        self._lock: IO[str] | None = None

    def _take_lock(self) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        self._lock = open(LOCK, "w")  # noqa: SIM115 - held until stop()
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another test bed's NetworkPolicy engine held {LOCK} for {self.lock_timeout:.0f} s") from None
                time.sleep(1)

    def start(self, timeout: float = 120) -> None:
        ensure_tools()
        if BRIDGE_NF.read_text().strip() != "1":
            BRIDGE_NF.write_text("1\n")  # bridged pod-to-pod traffic must pass iptables
        self._take_lock()
        try:
            remove_engine_state()  # left by an engine that was killed
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as out:
                self.process = subprocess.Popen([
                    str(self.binary), f"--kubeconfig={self.kubeconfig}", "--hostname-override=testbed-cpu",
                    "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
                    "--enable-ipv4=true", "--enable-ipv6=false", "--service-cluster-ip-range=10.96.0.0/16",
                    "--health-port=0", "--metrics-port=0", "--v=1",
                ], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            self.pid_file.write_text(str(self.process.pid))
            deadline = time.monotonic() + timeout
            while not self.enforcing():
                if self.process.poll() is not None:
                    raise RuntimeError(f"kube-router exited with {self.process.returncode}; see {self.log_path}")
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"kube-router set up no chains in {timeout:.0f} s; see {self.log_path}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise

    def enforcing(self) -> bool:
        """The engine's chains are in place and the built-in chains jump to them."""
        saved = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout
        return all(f"-j KUBE-ROUTER-{chain}" in saved for chain in ("INPUT", "FORWARD", "OUTPUT"))

    def pod_chains(self) -> str:
        """The engine's rules as they are now (for a failing test's message)."""
        saved = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout
        return "\n".join(line for line in saved.splitlines() if any(prefix in line for prefix in CHAIN_PREFIXES))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.pid_file.unlink(missing_ok=True)
        if self._lock is not None:
            try:
                remove_engine_state()
            finally:
                self._lock.close()
                self._lock = None


def stop_recorded(state_dir: Path) -> None:
    """Stop an engine that a test left running for this test bed (cluster down calls this)."""
    pid_file = state_dir / "kube-router.pid"
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return
    try:
        if b"kube-router" in Path(f"/proc/{pid}/cmdline").read_bytes():  # not a reused PID
            os.killpg(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass
    pid_file.unlink(missing_ok=True)
    if not (shutil.which("iptables-save") and shutil.which("ipset")):
        return
    with open(LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another test bed's engine runs now, and owns the chains
        remove_engine_state()
