"""The domain every part of powerplane shares.

``site``/``configfile``: typed site configuration; ``topology``: its flattened arrays;
``readings``: metrics, units, ranges and columnar batches; ``grid`` and ``jobs``; ``physics``;
``clock``; ``errors``; ``generate``: large synthetic sites; ``twin``: the digital twin.
"""
