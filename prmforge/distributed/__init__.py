"""Scale-out backends: Ray actor pools for sharded generation/labelling and Ray Train for the PRM.

``ray`` is an optional dependency (``pip install 'prmforge[ray]'``): nothing
outside this package imports it, and this package imports it only when a Ray
executor or trainer is actually used.
"""
