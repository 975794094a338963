"""The contract between ``training`` and ``service``: what one writes and the other reads.

- ``layout``: the models folder: ``<name>/<version>/`` folders, the ``current`` pointer, ``history.jsonl``, file
  hashes, and the atomic writes that keep a reader from ever seeing half of any of them;
- ``metadata``: a version's ``metadata.json`` as a typed object, checked on both sides;
- ``reference``: the statistics drift is measured with, and the population stability index (pure maths);
- ``feedback_store``: the production labels the service stores and the next retrain reads;
- ``config``: settings declared once (name, environment variable, type, default, bounds, doc), and the ones both
  packages read.

It imports neither package (an import-linter contract in pyproject.toml).
"""
