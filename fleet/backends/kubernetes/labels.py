"""Accelerator node labels: how clusters name their GPUs, and how a pod asks for one. Pure.

Every cluster labels its GPU nodes its own way, so a pod that wants a T4 must ask in the
cluster's words:

==========  ===========================================  =========================================
scheme      label key                                    values (T4 / L4 / A100-80GB)
==========  ===========================================  =========================================
gke         cloud.google.com/gke-accelerator             nvidia-tesla-t4 / nvidia-l4 / nvidia-a100-80gb
gfd         nvidia.com/gpu.product (GPU Feature          Tesla-T4 / NVIDIA-L4 / NVIDIA-A100-SXM4-80GB,
            Discovery)                                   NVIDIA-A100-80GB-PCIe (and what nodes show)
karpenter   karpenter.k8s.aws/instance-gpu-name          t4 / l4 / a100 (+ instance-gpu-memory 81920)
custom      a key the operator names                     the accelerator name, or the operator's map
==========  ===========================================  =========================================

``auto`` reads the cluster's nodes and takes the first scheme whose key a node carries with a
value naming the accelerator (SkyPilot's approach: formatters detected from node labels). A
selection is a list of node-affinity match expressions; values seen on the cluster's nodes
that name the accelerator are added to the scheme's own, so a GFD product string the table
does not know still matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

GKE_KEY = "cloud.google.com/gke-accelerator"
GFD_KEY = "nvidia.com/gpu.product"
KARPENTER_KEY = "karpenter.k8s.aws/instance-gpu-name"
KARPENTER_MEMORY_KEY = "karpenter.k8s.aws/instance-gpu-memory"  # MiB per GPU

SCHEMES = ("gke", "karpenter", "gfd")  # the order ``auto`` tries them in
_TESLA = {"K80", "P4", "P100", "V100", "T4", "A100"}  # GKE keeps "tesla" in these names
_GFD_KNOWN = {  # product strings GPU Feature Discovery reports (nvidia-smi's names, dashed)
    "T4": ["Tesla-T4"],
    "V100": ["Tesla-V100-SXM2-16GB", "Tesla-V100-PCIE-16GB"],
    "L4": ["NVIDIA-L4"],
    "A10G": ["NVIDIA-A10G"],
    "A100": ["NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"],
    "A100-80GB": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"],
    "H100-80GB": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"],
}
_NAME_RE = re.compile(r"^([A-Za-z]+[0-9]*[A-Za-z]?)(?:[-_ ]?([0-9]+)GB)?$", re.IGNORECASE)


class LabelError(ValueError):
    """The cluster gives no way to select the accelerator (no scheme's key, no value)."""


@dataclass(frozen=True)
class Accelerator:
    """A GPU model as fleet's config names it: ``T4``, ``L4``, ``A100-80GB``."""

    model: str  # upper case: T4, A100, H100
    memory_gb: int | None = None

    @classmethod
    def parse(cls, name: str) -> Accelerator:
        m = _NAME_RE.match(name.strip())
        if not m:
            raise LabelError(f"accelerator {name!r} is not a GPU model name like T4, L4 or A100-80GB")
        return cls(model=m.group(1).upper(), memory_gb=int(m.group(2)) if m.group(2) else None)

    @property
    def name(self) -> str:
        return f"{self.model}-{self.memory_gb}GB" if self.memory_gb else self.model


def _tokens(value: str) -> list[str]:
    return [t for t in re.split(r"[-_ ./]+", value.upper()) if t]


def names_it(scheme: str, accel: Accelerator, value: str, custom: Mapping[str, str] | None = None) -> bool:
    """Whether a node label value (of ``scheme``'s key) names ``accel``."""
    if scheme == "custom":
        wanted = (custom or {}).get(accel.name, accel.name)
        return value.lower() == wanted.lower()
    if scheme == "karpenter":
        return value.lower() == accel.model.lower()
    tokens = _tokens(value)
    if accel.model not in tokens:
        return False
    memories = {t for t in tokens if re.fullmatch(r"[0-9]+GB", t)}
    if accel.memory_gb is not None:
        return f"{accel.memory_gb}GB" in memories
    # A plain name (A100) is the variant without a larger memory in its name: on GKE the 80GB
    # A100 is its own accelerator, not an A100.
    return not any(int(t[:-2]) >= 80 for t in memories)


def scheme_values(scheme: str, accel: Accelerator, custom: Mapping[str, str] | None = None) -> list[str]:
    """The values a scheme itself gives ``accel`` (before looking at any node)."""
    if scheme == "gke":
        tesla = "tesla-" if accel.model in _TESLA and accel.memory_gb is None else ""
        return [f"nvidia-{tesla}{accel.name.lower()}"]
    if scheme == "karpenter":
        return [accel.model.lower()]
    if scheme == "gfd":
        return list(_GFD_KNOWN.get(accel.name, [f"NVIDIA-{accel.name}"]))
    if scheme == "custom":
        return [(custom or {}).get(accel.name, accel.name)]
    raise LabelError(f"unknown label scheme {scheme!r}")


def key_of(scheme: str, custom_key: str | None = None) -> str:
    if scheme == "custom":
        if not custom_key:
            raise LabelError("the custom label scheme needs a key")
        return custom_key
    return {"gke": GKE_KEY, "gfd": GFD_KEY, "karpenter": KARPENTER_KEY}[scheme]


def detect(accel: Accelerator, nodes: Iterable[Mapping[str, str]], custom_key: str | None = None,
           custom: Mapping[str, str] | None = None) -> str:
    """The scheme ``auto`` picks from the nodes' labels: the first whose key some node carries
    with a value naming ``accel``, else the first whose key any node carries.

    Raises:
        LabelError: no node carries any known accelerator label.
    """
    nodes = list(nodes)
    schemes: list[tuple[str, str | None]] = [("custom", custom_key)] if custom_key else []
    schemes += [(s, None) for s in SCHEMES]
    present = []
    for scheme, ckey in schemes:
        key = key_of(scheme, ckey)
        values = [labels[key] for labels in nodes if key in labels]
        if any(names_it(scheme, accel, v, custom) for v in values):
            return scheme
        if values:
            present.append(scheme)
    if present:
        return present[0]
    looked = ", ".join(key_of(s, k) for s, k in schemes)
    raise LabelError(f"no node of the cluster carries an accelerator label ({looked}): set "
                     f"labels: gke|gfd|karpenter|{{custom: {{key: ...}}}} for {accel.name}")


def selection(scheme: str, accel: Accelerator, nodes: Iterable[Mapping[str, str]] = (),
              custom_key: str | None = None, custom: Mapping[str, str] | None = None) -> list[dict[str, object]]:
    """Node-affinity match expressions (all must hold) that pick nodes with ``accel``: the
    scheme's values plus those seen on ``nodes`` that name it."""
    key = key_of(scheme, custom_key)
    values = set(scheme_values(scheme, accel, custom))
    values.update(labels[key] for labels in nodes if key in labels and names_it(scheme, accel, labels[key], custom))
    exprs: list[dict[str, object]] = [{"key": key, "operator": "In", "values": sorted(values)}]
    if scheme == "karpenter" and accel.memory_gb is not None:
        exprs.append({"key": KARPENTER_MEMORY_KEY, "operator": "In", "values": [str(accel.memory_gb * 1024)]})
    return exprs


def matches(exprs: Iterable[Mapping[str, object]], labels: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` satisfies every match expression (In / NotIn / Exists /
    DoesNotExist), as the Kubernetes scheduler reads them."""
    for e in exprs:
        key, op = str(e["key"]), str(e["operator"])
        values = [str(v) for v in e.get("values") or []]  # type: ignore[attr-defined]
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
