"""Inventory loading through Ansible's own code: INI, YAML, directories, plugins, bad vars."""

import platform
from pathlib import Path

import pytest

from fleet.errors import InventoryError
from fleet.inventory import Jump, _jumps_from_args, embedded_inventory, load_inventory


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def by_name(hosts):
    return {h.name: h for h in hosts}


def test_ini_with_group_vars_host_vars_and_jump(tmp_path):
    inv = tmp_path / "lab"
    write(inv / "hosts.ini", """
[rtx]
rtx-1 ansible_host=10.0.0.5 ansible_port=2222 ansible_user=lab fleet_slots=2
[jetson]
jet-1 ansible_host=10.0.1.7 ansible_ssh_common_args='-o ProxyJump=lab@rtx-1:2222'
[local]
me ansible_connection=local
""")
    write(inv / "group_vars" / "jetson.yml", "fleet_arch: arm64\nfleet_accelerator: jetson-orin-nano\n")
    write(inv / "group_vars" / "rtx.yml", "fleet_arch: x86_64\nfleet_accelerator: rtx5060\n")
    write(inv / "host_vars" / "jet-1.yml", "fleet_labels: {jetpack: '6.0', power: maxn}\n")
    hosts = by_name(load_inventory(str(inv), tmp_path / "w"))
    rtx, jet, me = hosts["rtx-1"], hosts["jet-1"], hosts["me"]
    assert (rtx.address, rtx.port, rtx.user, rtx.slots) == ("10.0.0.5", 2222, "lab", 2)
    assert rtx.device_class == "x86_64/rtx5060" and rtx.pools == ("rtx",)
    assert jet.arch == "aarch64" and jet.labels == {"jetpack": "6.0", "power": "maxn"}
    assert jet.jumps == (Jump(host="rtx-1", port=2222, user="lab"),)
    assert me.connection == "local" and me.workdir == str(tmp_path / "w")


def test_yaml_inventory(tmp_path):
    path = write(tmp_path / "inv.yml", """
all:
  children:
    hailo8:
      hosts:
        hailo-1: {ansible_host: 10.0.2.3, fleet_arch: x86_64, fleet_accelerator: hailo8}
""")
    (host,) = load_inventory(str(path), tmp_path)
    assert host.device_class == "x86_64/hailo8" and host.pools == ("hailo8",)


def test_inventory_plugin_config(tmp_path):
    path = write(tmp_path / "gen.yml", """
plugin: ansible.builtin.generator
hosts:
  name: "{{ kind }}-{{ n }}"
  parents:
    - name: "{{ kind }}"
layers:
  kind: [jetson, rtx]
  n: ["1", "2"]
""")
    hosts = by_name(load_inventory(str(path), tmp_path))
    assert set(hosts) == {"jetson-1", "jetson-2", "rtx-1", "rtx-2"}
    assert hosts["jetson-2"].pools == ("jetson",)


@pytest.mark.parametrize(
    ("line", "var", "problem"),
    [
        ("bad-1 fleet_arch=armv7", "fleet_arch", "expected x86_64 or aarch64"),
        ("bad-1 fleet_slots=two", "fleet_slots", "must be an integer"),
        ("bad-1 fleet_slots=0", "fleet_slots", "at least 1"),
        ("bad-1 fleet_labels=nope", "fleet_labels", "must be a mapping"),
        ("bad-1 ansible_connection=winrm", "ansible_connection", "ssh or local"),
        ("bad-1 fleet_workdir=relative/dir", "fleet_workdir", "absolute"),
        ("bad-1 fleet_isolation=container", "fleet_isolation", "needs fleet_container_engine"),
        ("bad-1 fleet_container_image=cpu-ort", "fleet_container_image", "needs fleet_container_engine"),
        ("bad-1 fleet_container_engine=podman fleet_container_image=--privileged", "fleet_container_image",
         "expected an image name"),
    ],
)
def test_bad_vars_name_host_variable_and_file(tmp_path, line, var, problem):
    path = write(tmp_path / "hosts.ini", f"[g]\nok-1\n{line}\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(str(path), tmp_path)
    msg = str(info.value)
    assert "host bad-1" in msg and var in msg and problem in msg and str(path) in msg


def test_bad_var_in_group_vars_names_that_file(tmp_path):
    write(tmp_path / "inv" / "hosts.ini", "[jetson]\nj1\n")
    gv = write(tmp_path / "inv" / "group_vars" / "jetson.yml", "fleet_slots: many\n")
    with pytest.raises(InventoryError, match=str(gv)):
        load_inventory(str(tmp_path / "inv"), tmp_path)


def test_missing_and_unparsable_inventory(tmp_path):
    with pytest.raises(InventoryError, match="no such file"):
        load_inventory(str(tmp_path / "nope.ini"), tmp_path)
    bad = write(tmp_path / "broken.yml", "all: [this, is: not an inventory\n")
    with pytest.raises(InventoryError, match=str(bad.name)):
        load_inventory(str(bad), tmp_path)


def test_jump_argument_forms():
    assert _jumps_from_args("-o ProxyJump=a@b:23") == [Jump("b", 23, "a")]
    assert _jumps_from_args("-J b1,b2 -o StrictHostKeyChecking=no") == [Jump("b1"), Jump("b2")]
    assert _jumps_from_args("-oProxyJump=b") == [Jump("b")]
    assert _jumps_from_args("-o 'ProxyJump none'") == []


def test_embedded_default_is_this_machine(tmp_path):
    (host,) = embedded_inventory(tmp_path)
    assert host.connection == "local" and host.accelerator == "cpu"
    assert host.arch == {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())


def test_example_lab_inventory_loads(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    hosts = by_name(load_inventory(str(repo / "inventory"), tmp_path))
    assert {"rtx", "jetson", "hailo8"} <= {p for h in hosts.values() for p in h.pools}
    assert hosts["orin-01"].device_class == "aarch64/jetson-orin-nano"
    assert hosts["orin-01"].jumps[0].host == "lab-gw.example.internal"
    assert hosts["hailo-01"].accelerator == "hailo8"
    assert not hosts["lab-gw"].schedulable


def test_a_pools_default_image_comes_from_its_group_vars(tmp_path):
    """A pool (an inventory group) sets the image its jobs run in when their spec names none."""
    write(tmp_path / "inv" / "hosts.ini", "[lab]\nc1\n[lab:vars]\nfleet_container_engine=podman\n"
                                         "fleet_container_image=cpu-ort\nfleet_isolation=container\n")
    host = by_name(load_inventory(str(tmp_path / "inv"), tmp_path))["c1"]
    assert (host.container_image, host.isolation, host.needs_root) == ("cpu-ort", "container", True)
