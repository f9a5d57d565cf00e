"""The job table: rules give priorities, unknown nodes / reservations / duplicates are refused and
counted, a newer job takes its nodes, an ended job frees its power; the assignment and the regrouped
problem equal a from-scratch build."""

from __future__ import annotations

import numpy as np

from controllers.allocate import Structure
from controllers.jobs.feed import JobFeed
from controllers.jobs.names import NodeIndex
from controllers.jobs.table import End, JobTable, Refused, Start
from controllers.problem import SiteProblem
from models.clock import ManualClock
from models.jobs import JobFacts, terms_of, with_jobs
from models.site import SiteConfig
from models.topology import Topology

R06 = tuple(f"r06-node-{i:03d}" for i in range(72, 144))  # free in the demo site


def slurm(job: str, nodes: tuple[str, ...] = R06[:8], **kw: object) -> Start:
    return Start(JobFacts(job, "slurm", nodes, **kw))  # type: ignore[arg-type]


def table(site: SiteConfig, topo: Topology) -> JobTable:
    return JobTable(site, topo, NodeIndex(site, topo))


def test_rules_first_match_wins_and_a_job_may_only_lower_its_priority(demo_site: SiteConfig) -> None:
    sch = demo_site.scheduler
    assert terms_of(JobFacts("1", "slurm", (), partition="gpu-prod"), sch).priority == 1
    t = terms_of(JobFacts("1", "slurm", (), partition="gpu", qos="high"), sch)
    assert (t.priority, t.weight, t.rule) == (2, 2.0, 1)
    assert terms_of(JobFacts("1", "slurm", (), partition="gpu", qos="low"), sch).priority == sch.default_priority
    assert terms_of(JobFacts("1", "kubernetes", (), priority_class="powerplane-high"), sch).priority == 2
    assert terms_of(JobFacts("1", "slurm", (), priority_class="powerplane-high"), sch).priority == 8  # k8s rule
    # asking: lower (a larger number) is granted, higher is not
    assert terms_of(JobFacts("1", "slurm", (), partition="gpu-prod", priority=5), sch).priority == 5
    assert terms_of(JobFacts("1", "slurm", (), partition="gpu", qos="high", priority=0), sch).priority == 2
    assert terms_of(JobFacts("1", "slurm", (), partition="gpu-prod", checkpointable=True), sch).checkpointable


def test_refusals_are_counted_by_reason(demo_site: SiteConfig, demo_topo: Topology) -> None:
    t = table(demo_site, demo_topo)
    assert t.apply([slurm("1")], 0)
    assert not t.apply([slurm("1")], 0)  # the same start again (a re-sent prolog)
    t.apply([slurm("2", ("r06-node-080", "nowhere-1")),  # keeps its known node
             slurm("3", ("nowhere-2",)),  # nothing known: refused
             slurm("4", ("r01-node-000",)),  # a site-file job's node (a reservation)
             slurm("finetune", R06[20:22]),  # a site-file job's id
             Start(JobFacts("5", "kubernetes", R06[30:31])), Start(JobFacts("5", "slurm", R06[31:32])),
             slurm("bad id!"), End("slurm", "99"), Refused("slurm", "malformed", "x")], 0)
    assert dict(t.rejected) == {("slurm", "duplicate"): 3, ("slurm", "unknown_node"): 2,
                                ("slurm", "node_reserved"): 1, ("slurm", "malformed"): 2,
                                ("slurm", "unknown_job"): 1}
    assert sorted(t.jobs) == ["1", "2", "5"] and t.jobs["2"].servers.size == 1
    assert t.jobs["5"].facts.source == "kubernetes"


def test_a_newer_job_takes_its_nodes_and_an_end_frees_them(demo_site: SiteConfig, demo_topo: Topology) -> None:
    t = table(demo_site, demo_topo)
    t.apply([slurm("old", R06[:10]), slurm("new", R06[5:12])], 0)
    assert t.jobs["old"].servers.size == 5 and t.jobs["new"].servers.size == 7 and t.nodes_taken == 5
    t.apply([slurm("newest", R06[:5])], 0)
    assert "old" not in t.jobs and t.ended["slurm"] == 1  # it has no node left
    t.apply([End("slurm", "new"), End("slurm", "newest")], 0)
    assert t.jobs == {} and (t.owner == -1).all()


def test_max_jobs_is_a_bound(demo_site: SiteConfig, demo_topo: Topology) -> None:
    site = demo_site.model_copy(update={"scheduler": demo_site.scheduler.model_copy(update={"max_jobs": 2})})
    t = table(site, demo_topo)
    t.apply([slurm(str(i), R06[i:i + 1]) for i in range(4)], 0)
    assert len(t.jobs) == 2 and t.rejected[("slurm", "too_many_jobs")] == 2


def test_the_assignment_equals_a_build_from_scratch(demo_site: SiteConfig, demo_topo: Topology) -> None:
    """with_jobs + SiteProblem.with_jobs (regroup) give the arrays a full build would."""
    t = table(demo_site, demo_topo)
    t.apply([slurm("a", R06[:30], partition="gpu", qos="high"), slurm("b", R06[40:72], partition="gpu-prod")], 0)
    topo = with_jobs(demo_topo, t.live())
    assert topo.job_ids[-2:] == ("a", "b") and list(topo.job_priority[-2:]) == [2, 1]
    first = topo.node_first_gpu
    servers = t.jobs["a"].servers
    assert (topo.gpu_job[first[servers]] == len(topo.job_ids) - 2).all()
    assert (topo.gpu_weight[first[servers]] == 2.0).all()
    base = SiteProblem.build(demo_topo)
    fast = base.with_jobs(topo)
    full = SiteProblem.build(topo)
    for name in ("classes", "cls_ptr", "cls_members", "con_ptr", "con_members", "weight", "priority"):
        np.testing.assert_array_equal(getattr(fast.structure, name), getattr(full.structure, name), err_msg=name)
    np.testing.assert_array_equal(fast.job, full.job)


def test_regroup_matches_build_on_random_priorities() -> None:
    rng = np.random.default_rng(5)
    for n, m in ((1, 1), (50, 7), (400, 40)):
        mem = np.where(rng.random((n, 4)) < 0.8, rng.integers(0, m, (n, 4)), -1).astype(np.int32)
        s = Structure.build(np.ones(n), np.ones(n), np.zeros(n), mem, m)
        for _ in range(3):
            prio, w = rng.integers(0, 17, n), rng.uniform(0.5, 3.0, n)
            a, b = s.regroup(w, prio), Structure.build(np.ones(n), w, prio, mem, m)
            for name in ("classes", "cls_ptr", "cls_members", "con_ptr", "con_members"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_the_feed_publishes_an_assignment_only_when_the_table_changed(demo_site: SiteConfig,
                                                                      demo_topo: Topology) -> None:
    pending = [[slurm("7", R06[:4])], [], [End("slurm", "7")]]
    feed = JobFeed(demo_site, demo_topo, ManualClock(), [lambda: pending.pop(0) if pending else []])
    a = feed.poll()
    assert a is not None and a.jobs[0].id == "7" and a.nodes["7"] == "r06-node-[072-075]"
    assert feed.poll() is None
    b = feed.poll()
    assert b is not None and b.jobs == () and b.version > a.version and b.topo.job_ids == demo_topo.job_ids
    assert feed.stats().rebuilds == 2
