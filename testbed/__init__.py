"""What the tests and the benchmarks both run against, and that production code must not import.

Real servers on loopback (``realservers``), the snmpsim recordings of the PDU models
(``recordings``), a line-protocol parser that reads back what we write (``lpparse``) and the
lexicographic max-min LP cross-check of the allocator on HiGHS (``lp``, needs scipy from the
``test`` extra). ``bench/`` imports from here, never from ``tests/``.
"""
