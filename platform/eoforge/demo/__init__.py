"""Catalogs eoforge writes on disk (not a pipeline stage).

- :mod:`~eoforge.demo.catalog`: the synthetic land-cover world behind ``eoforge catalog demo``
  (:mod:`~eoforge.demo.world` draws it, :mod:`~eoforge.demo.synth` renders S1/S2/labels,
  :mod:`~eoforge.demo.cog` writes COGs);
- :mod:`~eoforge.demo.bigearthnet`: STAC items for the real BigEarthNet-MM sample patches.
"""
