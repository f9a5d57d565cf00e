"""Scheduler hooks: controller events delivered to schedulers (issue 7).

    payloads.py    one event -> versioned JSON payload, signing (pure)
    webhook.py     signed POSTs: retries, bounded queue per endpoint, dead letter, replay
    receiver.py    the receiving side: signature check, a loopback reference receiver
    mqtt.py        payloads on <prefix>/<site>/events/<kind>, QoS 1
    slurm.py       move/preempt/DR end -> scontrol (dry-run by default)
    kubernetes.py  move/fallback/DR end -> node taints and labels (dry-run by default)
    dispatch.py    HookDispatcher: the one entry point the controller calls
    cli.py         powerplane hooks receive|test|replay
"""
