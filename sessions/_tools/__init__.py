"""The operator tools, on top of everything: the ``sessions`` command (``cli``), the
simulated plant (``demo``), the status server (``server``), Prometheus metrics
(``metrics``) and the config JSON Schema (``schema``). Nothing in the library imports
them."""
