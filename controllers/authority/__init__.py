"""Controller authority: which of several controllers may command the agents, and under which epoch.

Two or more controllers run; exactly one holds **authority** at a time, through etcd:

    /<prefix>/<site>/authority/leader   the holder: {"holder", "epoch"}, attached to its etcd lease
    /<prefix>/<site>/authority/epoch    the fencing counter: the last epoch ever granted

A controller **campaigns** when no leader key exists: it grants itself a lease (TTL seconds)
and, in one transaction, creates the leader key on that lease *and* raises the counter —
``compare(leader.create_revision == 0, epoch.mod_revision == seen) → put(leader), put(epoch =
max(counter, floor) + 1)``. The counter is therefore raised exactly once per change of
authority, never reused, and ordered with every epoch before it; ``floor`` is the highest
epoch this controller knows of otherwise (its ``--state-dir`` epoch and the epochs the agents
report in their statuses), so a wiped etcd cannot hand out an epoch the agents would refuse.
The epoch travels in every command (``(epoch, seq)``): agents apply only a newer one, and
while an older epoch's lease is still live they enforce the minimum of both plans
(``controllers.actuation.agent``).

**Fencing in time.** The holder keeps the lease alive every TTL/3. Its authority ends
locally at ``t_sent + TTL·(1 − drift) − margin``, where ``t_sent`` is when the last
*successful* grant or keep-alive request was sent: etcd's lease cannot expire before then
(it counts from when it received the request), so the holder stops publishing before any
other controller can be granted authority — whether etcd is gone, the network to it is cut,
or the keep-alive answers ``TTL ≤ 0``. The control loop asks ``current()`` (a clock read,
never a network call) every period and before every command it sends.

**Standby.** A controller without authority polls the leader key every ``poll_s`` and
campaigns as soon as it is gone; meanwhile it runs the whole period on the same readings
and statuses (warm), publishing nothing. When it takes over, its first period sends every
rack a command, its ramp starting from the caps the agents report enforced.
"""

from controllers.authority.lease import Authority, AuthorityStatus, FixedAuthority, LocalLease, Transition

__all__ = ["Authority", "AuthorityStatus", "FixedAuthority", "LocalLease", "Transition"]
