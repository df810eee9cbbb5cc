"""The generators of the repository's generated files, run by ``make crds`` (``make docs``,
``make manifests``) and by the tests that find a generated file stale: ``apidocs`` (docs/api.md),
``sizing`` (docs/sizing.md), ``manifests`` (the chart's generated parts and ``config/``). The
operator never imports them at run time."""
