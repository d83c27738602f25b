"""Placement and queues are pure: feasibility, ranking, reasons, fair share."""

from collections import Counter

import pytest

from fleet.backends.base import Outcome
from fleet.inventory import Host
from fleet.models.enums import AttemptState, Health, Reason
from fleet.models.spec import load_spec
from fleet.runners import manifests
from fleet.scheduler.placement import (
    Demand,
    HostView,
    Placement,
    Unplaceable,
    place,
    static_reason,
    static_report,
)
from fleet.scheduler.queues import ClassQueue
from fleet.scheduler.verdict import judge


def host(name, pools, arch="x86_64", accel="cpu", slots=1, labels=None):
    return Host(name=name, pools=tuple(pools), arch=arch, accelerator=accel, slots=slots, labels=labels or {})


LAB = [
    host("rtx-1", ["rtx"], accel="rtx5060", slots=2),
    host("jet-1", ["jetson"], arch="aarch64", accel="jetson-orin-nano", labels={"jetpack": "6.0"}),
    host("jet-2", ["jetson"], arch="aarch64", accel="jetson-orin-nano", labels={"jetpack": "5.1"}),
    host("jet-3", ["jetson"], arch="aarch64", accel="jetson-orin-nano", labels={"jetpack": "6.0"}),
    host("hailo-1", ["hailo8"], accel="hailo8"),
]


def demand(yaml_text):
    return Demand.of(load_spec("name: t\nrun: x\n" + yaml_text))


def statics(d):
    return {h.name: static_reason(d, h, manifests().get(d.runner)) for h in LAB}


def test_feasibility_by_pool_arch_accelerator_labels():
    d = demand("resources: {pool: jetson, labels: {jetpack: '6.0'}}")
    views = [HostView(h) for h in LAB]
    result = place(d, views, statics(d))
    assert isinstance(result, Placement) and result.host in {"jet-1", "jet-3"}
    d = demand("resources: {arch: aarch64, accelerator: hailo8}")
    report = static_report(d, LAB, None)
    assert report is not None and report.static
    assert report.reasons == Counter({"arch x86_64": 2, "accelerator jetson-orin-nano": 3})


def test_why_counts_hosts_by_reason():
    d = demand("resources: {pool: jetson}")
    views = [
        HostView(LAB[1], used_slots=1),
        HostView(LAB[2], used_slots=1),
        HostView(LAB[3], health=Health.BAD),
    ]
    result = place(d, views, statics(d))
    assert isinstance(result, Unplaceable) and not result.static
    assert result.summary() == "3 hosts in pool jetson: 2 busy, 1 unreachable, quarantined (health=bad)"


def test_slots_and_drain_respected():
    d = demand("resources: {pool: rtx, slots: 2}")
    assert isinstance(place(d, [HostView(LAB[0], used_slots=1)], statics(d)), Unplaceable)
    assert isinstance(place(d, [HostView(LAB[0])], statics(d)), Placement)
    assert isinstance(place(d, [HostView(LAB[0], drained=True)], statics(d)), Unplaceable)
    d3 = demand("resources: {pool: rtx, slots: 3}")
    assert static_reason(d3, LAB[0], None) == "only 2 slots"


def test_ranking_prefers_free_cached_and_not_failed_hosts():
    d = demand("resources: {pool: jetson}")
    views = [HostView(LAB[1]), HostView(LAB[3], cached=frozenset({"abc"}))]
    assert place(d, views, statics(d), inputs=["abc"]).host == "jet-3"
    assert place(d, views, statics(d), inputs=["abc"], failed_on=frozenset({"jet-3"})).host == "jet-1"


def test_queue_priority_then_fair_share_then_age():
    q = ClassQueue("k")
    q.push("j001", 500, "alice")
    q.push("j002", 500, "alice")
    q.push("j003", 500, "bob")
    q.push("j004", 900, "carol")
    assert q.head({}) == "j004"
    q.remove("j004")
    # alice already runs 2 jobs, bob none: bob goes first although his job is younger
    assert q.head({"alice": 2}) == "j003"
    # equal running counts: the oldest job first
    assert q.head({"alice": 1, "bob": 1}) == "j001"
    q.remove("j001")
    q.push("j001", 500, "alice")  # a retried job keeps its age
    assert q.job_ids()[0] == "j001" and len(q) == 3


def test_demand_key_separates_device_classes():
    a = demand("resources: {pool: jetson}")
    b = demand("resources: {pool: rtx}")
    assert a.key != b.key and a.key == "jetson/*/*"


def test_judge_classifies_outcomes():
    assert judge(Outcome(exit_code=0), "shell").state is AttemptState.SUCCEEDED
    assert judge(Outcome(exit_code=3), "shell").reason is Reason.EXIT_NONZERO
    assert judge(Outcome(exit_code=None, timed_out=True, signal=15), "shell").reason is Reason.TIMED_OUT
    assert judge(Outcome(exit_code=1, phase="setup"), "shell").reason is Reason.SETUP_FAILED
    assert judge(Outcome(exit_code=0), "onnxruntime").reason is Reason.RUNNER_ERROR
    err = {"class": "setup_failed", "message": "onnxruntime missing"}
    assert judge(Outcome(exit_code=78, runner_error=err), "onnxruntime").reason is Reason.SETUP_FAILED
    assert judge(Outcome(exit_code=None, lost="gone"), "shell").reason is Reason.HOST_LOST


def test_gateway_hosts_run_no_jobs():
    gw = Host(name="gw", pools=("bastion",), arch="x86_64", accelerator="cpu", slots=1, schedulable=False)
    assert static_reason(demand(""), gw, None) == "runs no jobs (fleet_jobs=false)"


def test_equal_hosts_are_used_in_turn():
    d = demand("resources: {pool: jetson}")
    views = [HostView(LAB[1], last_placed=5.0), HostView(LAB[2], last_placed=1.0), HostView(LAB[3], last_placed=3.0)]
    assert place(d, views, statics(d)).host == "jet-2"


def test_elastic_pools_take_only_burst_jobs_and_rank_below_every_free_fixed_host():
    """Offers from several backends are ranked by the same pure function: an elastic pool (a
    backend's burst capacity) is feasible only for ``burst: true`` and loses to any free fixed
    host, even one the job already failed on; among pools the quicker and cheaper wins."""
    fixed = host("rtx-1", ["rtx"], accel="rtx5060", slots=2)

    def pool(name, latency=0.0, cost=0.0, limit=8):
        return Host(name=name, pools=("rtx",), arch="x86_64", accelerator="rtx5060", slots=limit,
                    backend="cloud", elastic=True, startup_latency=latency, cost=cost)

    slow, fast = pool("slow", latency=120), pool("fast", latency=5)
    hosts = [fixed, slow, fast]
    stay = demand("resources: {pool: rtx}\n")
    burst = demand("resources: {pool: rtx}\nburst: true\n")
    assert stay.key != burst.key  # they cannot share a queue: their feasible hosts differ

    def static(d):
        return {h.name: static_reason(d, h, None) for h in hosts}

    views = [HostView(host=h) for h in hosts]
    assert place(burst, views, static(burst), failed_on=frozenset({"rtx-1"})) == \
        Placement(host="rtx-1", score=-1.0)
    full = [HostView(host=fixed, used_slots=2), HostView(host=slow), HostView(host=fast)]
    assert place(burst, full, static(burst)).host == "fast"
    cheap = [HostView(host=fixed, used_slots=2), HostView(host=pool("a", cost=3.0)),
             HostView(host=pool("b", cost=0.5))]
    assert place(burst, cheap, {v.host.name: None for v in cheap}).host == "b"
    waiting = place(stay, full, static(stay))
    assert isinstance(waiting, Unplaceable)
    assert waiting.reasons == Counter({"busy": 1, "elastic pool of backend cloud (the job has "
                                                  "burst: never)": 2})
    # A pool at its limit is busy like a full host.
    at_limit = [HostView(host=fixed, used_slots=2), HostView(host=fast, used_slots=8)]
    assert place(burst, at_limit, static(burst)).reasons == Counter({"busy": 2})


def test_burst_only_and_the_burst_policy_hold_elastic_pools_back_until_a_queue_has_waited():
    """``burst: only`` never takes a fixed host; ``allowed`` takes an elastic pool only once the
    policy opens its queue (the oldest job waited long enough, or the queue is deep), and the
    reason says how far it is; a group limit (a cluster's max pods) makes a pool busy."""
    from fleet.errors import ConfigError
    from fleet.scheduler.burst import BurstPolicy

    fixed = host("rtx-1", ["rtx"], accel="rtx5060", slots=1)
    cloud = Host(name="k8s-rtx", pools=("rtx",), arch="x86_64", accelerator="rtx5060", slots=4,
                 backend="kubernetes", elastic=True, group="kubernetes", group_slots=2)
    only = demand("resources: {pool: rtx, accelerator: rtx5060}\nburst: only\n")
    allowed = demand("resources: {pool: rtx, accelerator: rtx5060}\nburst: allowed\n")
    assert only.key.endswith("^cloud") and allowed.key.endswith("^burst")
    assert demand("burst: true\n").burst == "allowed" and demand("burst: false\n").burst == "never"
    static = {h.name: static_reason(only, h, None) for h in (fixed, cloud)}
    assert static == {"rtx-1": "not an elastic pool (the job has burst: only)", "k8s-rtx": None}
    free = [HostView(host=fixed), HostView(host=cloud)]
    assert place(only, free, static).host == "k8s-rtx"

    policy = BurstPolicy.load({"wait": "10m", "depth": 20,
                               "rules": [{"device_class": "*/rtx5060", "wait": 60, "depth": 3}]}, "cfg")
    assert policy.limits(allowed) == (60.0, 3)
    assert policy.limits(demand("resources: {accelerator: t4}\nburst: true\n")) == (600.0, 20)
    block, opens_in = policy.block(allowed, oldest_wait=15.0, depth=2)
    assert block == "may burst, not yet: the oldest job has waited 15s of 60s; 2 waiting, bursts past 3"
    assert opens_in == 45.0
    assert policy.block(allowed, oldest_wait=61.0, depth=1) == (None, None)  # waited long enough
    assert policy.block(allowed, oldest_wait=1.0, depth=4) == (None, None)  # deep enough
    assert policy.block(only, oldest_wait=0.0, depth=1) == (None, None)  # only: no policy

    full = [HostView(host=fixed, used_slots=1), HostView(host=cloud)]
    static = {h.name: static_reason(allowed, h, None) for h in (fixed, cloud)}
    held = place(allowed, full, static, burst_block=block)
    assert isinstance(held, Unplaceable) and held.reasons == Counter({"busy": 1, block: 1})
    assert place(allowed, full, static).host == "k8s-rtx"
    # only the group's limit is left: busy, though the pool itself has room
    grouped = [HostView(host=fixed, used_slots=1), HostView(host=cloud, used_slots=0, group_free=0)]
    assert place(allowed, grouped, static).reasons == Counter({"busy": 1, "busy (backend kubernetes at its limit)": 1})

    with pytest.raises(ConfigError, match=r"burst.rules.0.device_class"):
        BurstPolicy.load({"rules": [{"device_class": "t4"}]}, "cfg")
    with pytest.raises(ConfigError, match=r"burst.wait"):
        BurstPolicy.load({"wait": "soon"}, "cfg")


@pytest.mark.parametrize("seed", range(12))
def test_the_host_books_index_picks_what_a_look_at_every_host_picks(tmp_path, seed):
    """The host book's ordered index (HostBook.pick) hands placement a few hosts; placement
    must choose among them exactly what it chooses among all of them, whatever the load,
    health, drain, caches, failures, groups and elastic pools, as slots are taken and given
    back job after job."""
    import random

    from fleet.db import Database
    from fleet.scheduler.hostbook import HostBook
    from fleet.store import Store

    rnd = random.Random(seed)
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.create_schema()
    hosts = []
    for i in range(rnd.randint(1, 40)):
        elastic = rnd.random() < 0.1
        hosts.append(Host(name=f"h{i:02d}", pools=(rnd.choice(["a", "b"]),), arch="x86_64",
                          accelerator=rnd.choice(["cpu", "rtx"]), slots=rnd.randint(1, 3) * (10 if elastic else 1),
                          elastic=elastic, backend="fake" if elastic else "ssh", connection="ssh",
                          address="192.0.2.1", startup_latency=rnd.choice([0.0, 60.0]),
                          group="g" if elastic and rnd.random() < 0.5 else None, group_slots=5))
    book = HostBook(hosts, Store(db))
    book.load()
    for h in hosts:
        book.set_health(h.name, rnd.choice([Health.GOOD] * 4 + [Health.BAD]), None)
        if rnd.random() < 0.1:
            book.drain(h.name, True)
    shas = [f"{i:064x}" for i in range(4)]
    for h in hosts:
        if rnd.random() < 0.3:
            book.add_cached(h.name, rnd.sample(shas, rnd.randint(1, 2)))
    taken = []
    for _ in range(150):
        d = demand(f"name: t\nrun: x\nresources: {{pool: {rnd.choice(['a', 'b'])}, "
                   f"accelerator: {rnd.choice(['cpu', 'rtx'])}, slots: {rnd.randint(1, 2)}}}\n")
        inputs = rnd.sample(shas, rnd.randint(0, 2))
        failed = frozenset(rnd.sample([h.name for h in hosts], min(len(hosts), rnd.randint(0, 3))))
        no_cap = frozenset(h.name for h in hosts if h.elastic and rnd.random() < 0.3)
        block = "waiting for the lab first" if rnd.random() < 0.3 else None
        static = book.static_for(d)
        args = dict(inputs=inputs, failed_on=failed, burst_block=block, no_capacity=no_cap)
        everywhere = place(d, book.views(), static, **args)
        picked = place(d, book.pick(d, inputs, failed, block, no_cap), static, **args)
        if isinstance(everywhere, Unplaceable):
            assert isinstance(picked, Unplaceable)
        else:
            assert not isinstance(picked, Unplaceable), (everywhere, picked)
            assert picked.host == everywhere.host
            host = book.hosts[everywhere.host]
            book.take(host, d.slots)
            taken.append((host, d.slots))
        if taken and rnd.random() < 0.4:
            host, slots = taken.pop(rnd.randrange(len(taken)))
            book.give_back(host, slots)
        if rnd.random() < 0.05:
            name = rnd.choice(hosts).name
            book.set_health(name, rnd.choice([Health.GOOD, Health.BAD]), None)
