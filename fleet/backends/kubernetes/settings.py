"""``backends: {kubernetes: {...}}``: the cluster, what fleet may create there, and which fleet
device classes it offers (each an elastic pool of pods)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet import images
from fleet.backends.kubernetes.labels import Accelerator, LabelError
from fleet.models.spec import parse_duration

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
CLASS_RE = re.compile(r"^[a-z0-9_]+/[a-z0-9_.-]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomLabels(_Strict):
    key: str = Field(description="the node label that names the accelerator")
    values: dict[str, str] = Field(default_factory=dict,
                                   description="accelerator name -> label value (default: the name)")


class CustomScheme(_Strict):
    custom: CustomLabels


LabelScheme = Literal["auto", "gke", "gfd", "karpenter"] | CustomScheme


class ClassSettings(_Strict):
    """One fleet device class the cluster offers (the key: ``ARCH/ACCELERATOR`` as fleet names
    it, e.g. ``x86_64/nvidia-t4``)."""

    gpu: str | None = Field(None, description="the cloud accelerator: T4, L4, A100-80GB (none: CPU pods)")
    gpus: int = Field(1, ge=1, le=16, description="GPUs per pod")
    image: str | None = Field(None, description="the image pods of this class run (default: the class's "
                                                "runner image of images/, under image_registry)")
    pools: list[str] | None = Field(None, description="fleet pools the class serves (default: every "
                                                      "inventory pool with a host of this class)")
    max_pods: int | None = Field(None, ge=1, description="pods of this class at once (default: the backend's)")
    name: str | None = Field(None, description="the pool's host name in fleet (default BACKEND-ACCELERATOR)")
    node_selector: dict[str, str] = Field(default_factory=dict, description="more node labels to require")
    requests: dict[str, str] = Field(default_factory=dict, description="cpu/memory requests, e.g. {cpu: '4'}")
    limits: dict[str, str] = Field(default_factory=dict)
    cost: float = Field(0.0, ge=0, description="price of one pod-hour (shown with where jobs ran)")

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Accelerator.parse(value)
            except LabelError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not DNS_LABEL.match(value):
            raise ValueError("must be a lower-case DNS label (letters, digits, '-')")
        return value


class KubernetesSettings(_Strict):
    kubeconfig: str | None = Field(None, description="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    context: str | None = Field(None, description="kubeconfig context (default: its current one)")
    in_cluster: bool = Field(False, description="use the service account fleet runs under in a cluster")
    namespace: str = "default"
    max_pods: int = Field(8, ge=1, le=10000, description="pods of all classes at once")
    labels: LabelScheme = Field("auto", description="how nodes name accelerators: auto | gke | gfd | "
                                                    "karpenter | {custom: {key, values}}")
    gpu_resource: str = Field("nvidia.com/gpu", description="the extended resource pods request")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    tolerate_gpu_taint: bool = Field(True, description="tolerate the usual GPU-node taint (gpu_resource, "
                                                       "NoSchedule), as GKE adds it")
    image_registry: str | None = Field(None, description="where fleet's runner images are pushed, e.g. "
                                                         "registry.example/fleet (for classes naming no image)")
    service_account: str | None = None
    image_pull_secrets: list[str] = Field(default_factory=list)
    provision_timeout: float = Field(600.0, gt=0, description="seconds a pod may wait for a node before "
                                                              "its job goes back to the lab's queue")
    startup_latency: float = Field(90.0, ge=0, description="typical seconds to get a node (ranks pools)")
    callback_url: str | None = Field(None, description="the URL pods reach this controller's callback "
                                                       "listener at (default: http://THIS-HOST'S-NAME:PORT)")
    callback_listen: str = Field("0.0.0.0:8471", description="HOST:PORT the callback listener binds; a "
                                                             "fixed port, so pods find a restarted controller")
    poll_interval: float = Field(2.0, gt=0, description="seconds between looks at pods when a watch is down")
    classes: dict[str, ClassSettings] = Field(description="fleet device class (ARCH/ACCELERATOR) -> pods")

    @field_validator("provision_timeout", "startup_latency", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not DNS_LABEL.match(value):
            raise ValueError("must be a lower-case DNS label")
        return value

    @field_validator("callback_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError("must be HOST:PORT (port 0: any free one)")
        return value

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: dict[str, ClassSettings]) -> dict[str, ClassSettings]:
        if not value:
            raise ValueError("name at least one device class, e.g. {x86_64/nvidia-t4: {gpu: T4, image: ...}}")
        for key in value:
            if not CLASS_RE.match(key):
                raise ValueError(f"{key!r} is not a device class ARCH/ACCELERATOR like x86_64/nvidia-t4")
        return value

    @model_validator(mode="after")
    def _kubeconfig(self) -> KubernetesSettings:
        if self.in_cluster and (self.kubeconfig or self.context):
            raise ValueError("in_cluster takes no kubeconfig or context")
        for device_class, cls in self.classes.items():
            if cls.image is None:
                arch, accelerator = device_class.split("/")
                name = images.for_class(arch, accelerator)
                if name is None or not self.image_registry:
                    raise ValueError(f"classes.{device_class}.image: name the image (or set image_registry"
                                     f"{'' if name else ' — no runner image of images/ fits this class'})")
                cls.image = f"{self.image_registry.rstrip('/')}/{images.tag(name, arch)}"
        return self

    @property
    def scheme(self) -> str:
        return "custom" if isinstance(self.labels, CustomScheme) else str(self.labels)

    @property
    def custom_key(self) -> str | None:
        return self.labels.custom.key if isinstance(self.labels, CustomScheme) else None

    @property
    def custom_values(self) -> dict[str, str]:
        return dict(self.labels.custom.values) if isinstance(self.labels, CustomScheme) else {}
