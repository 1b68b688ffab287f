"""Which endpoints a Model or a ModelDeployment may point the operator at.

A tenant names a storage endpoint (and, for KEDA, a Prometheus address), and the operator or a
component it configures then sends requests there from its own network position. Addresses that
reach the cluster itself are refused unless the operator's settings list them: the Kubernetes API
server, link-local addresses (instance metadata at 169.254.169.254), the operator's own pod
(loopback and its pod IP) and the CIDRs named in MODELOPS_DENIED_CIDRS (the pod network). When
MODELOPS_ALLOWED_ENDPOINTS is set, only what it lists may be named at all.

Pure: the caller resolves host names and passes the addresses in."""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The API server's in-cluster names, in every namespace-qualified form a resolver accepts.
APISERVER_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.*")
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> HostPort | None:
        """The host (lower case, without brackets) and port of an http(s) URL; None if it has no host."""
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if not parts.hostname:
            return None
        try:
            port = parts.port
        except ValueError:
            return None
        return cls(parts.hostname.lower().rstrip("."), port or DEFAULT_PORTS.get(parts.scheme, 80))


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses); raises ValueError naming the first that is neither."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


@dataclass(frozen=True)
class EndpointPolicy:
    """`allowed`: host patterns (fnmatch, e.g. *.s3.amazonaws.com) and CIDRs that may be named;
    empty allows everything not refused. `apiservers`: the API server as the operator reaches it
    (its kubeconfig's server, the in-cluster service), refused by address and port."""

    allowed: tuple[str, ...] = ()
    denied: tuple[Network, ...] = ()
    apiservers: tuple[HostPort, ...] = ()
    own: tuple[str, ...] = ()  # the operator pod's own addresses (its IP from the downward API)

    def _listed(self, where: HostPort, addresses: Sequence[Address]) -> bool:
        for entry in self.allowed:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if fnmatch.fnmatchcase(where.host, entry.lower()):
                    return True
                continue
            if any(address in network for address in addresses):
                return True
        return False

    def _refusal(self, where: HostPort, addresses: Sequence[Address]) -> str | None:
        if any(fnmatch.fnmatchcase(where.host, name) for name in APISERVER_NAMES):
            return "the Kubernetes API server"
        for server in self.apiservers:
            if where.port == server.port and (where.host == server.host or str(_address(server.host)) in map(str, addresses)):
                return "the Kubernetes API server"
        for address in addresses:
            if address.is_link_local:
                return f"a link-local address ({address}, where instance metadata is served)"
            if address.is_loopback or str(address) in self.own:
                return f"{'a loopback address' if address.is_loopback else 'an address'} ({address}) of the operator's own pod"
            network = next((n for n in self.denied if address in n), None)
            if network is not None:
                return f"{address}, in {network} (MODELOPS_DENIED_CIDRS)"
        return None

    def problem(self, url: str, field: str, resolved: Sequence[str] = ()) -> str | None:
        """Why `url` (given in `field`) may not be reached, or None. `resolved` holds the
        addresses its host name resolves to; a literal address needs none."""
        where = HostPort.of(url)
        if where is None:
            return f"{field}: {url!r} has no host"
        literal = _address(where.host)
        addresses = [literal] if literal is not None else [a for a in map(_address, resolved) if a is not None]
        if self._listed(where, addresses):
            return None
        if self.allowed:
            return (f"{field}: {where.host} is not among the endpoints this operator may reach "
                    f"(MODELOPS_ALLOWED_ENDPOINTS: {', '.join(self.allowed)})")
        refusal = self._refusal(where, addresses)
        if refusal is None:
            return None
        return (f"{field}: {where.host}:{where.port} is {refusal}, which a Model or ModelDeployment may not name; "
                "list it in the operator's allowed endpoints (chart value endpoints.allowed) if it is meant")
