"""The application layer: from a command line or a run specification to a results folder.

``specs`` (typed run specifications), ``parser`` and ``cli`` (the command line and its boundary),
``problems`` (CBCT and ZSR), ``factory`` (the one place that builds a run's parts), ``run`` (the
run routine of the entry scripts), ``results`` (self-describing results folders) and
``distributed`` (multi-GPU). It builds on ``algorithms``, ``models``, ``physics`` and ``utils``.
"""
