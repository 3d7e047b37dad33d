"""Pure numpy: flat parameter vectors and what is done to them.

``params`` (the layout of a flat vector), ``update`` (one client's update), ``strategies`` (every
aggregation strategy, one registry), ``robust`` rules, ``staleness``, ``compress``, ``privacy``,
``secagg``, ``pipeline`` (what happens to an update between a client and the strategy),
``moments`` and ``normstats`` (the running statistics of observation normalisation, merged by
counts) and ``experience`` (what a device records while acting). Nothing here imports torch, a transport or
the file system; import the module you need (this package imports none of them, so that a
torch-free device that needs one record does not load the rest).
"""
