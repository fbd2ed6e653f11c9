"""The benchmark suite behind ``equipart bench`` (and ``python -m benchmarks``).

It lives inside the package, not in the repository's top-level ``benchmarks/`` folder, so
that ``equipart bench`` works from a plain ``pip install equipart``; ``benchmarks/`` keeps
the thin ``python -m benchmarks`` entry point, standalone scripts and the committed results.

Modules:

* ``problems``: deterministic float32 score matrices (SeLa-early, SeLa-late, Zipf-skewed,
  collapsed, and real images scored against prototypes).
* ``contenders``: every solver run the same way (equipart backends, the SeLa reference
  algorithm, POT, k-means-constrained, OTT-JAX when installed).
* ``checker``: the one judge of every contender's output.
* ``worker``: runs one contender's jobs in a subprocess and measures time and memory.
* ``runner``: the command line, scheduling, timeouts, the markdown table and JSON.
* ``report``: the machine description and the plots.

Needs the ``bench`` extra: ``pip install 'equipart[bench]'``.
"""
