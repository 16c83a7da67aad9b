"""Catalogs eoforge writes on disk (not a pipeline stage).

- :mod:`~eoforge.demo.catalog`: the synthetic land-cover world behind ``eoforge catalog demo``
  (:mod:`~eoforge.demo.world` draws it, :mod:`~eoforge.demo.synth` renders S1/S2/labels,
  :mod:`~eoforge.demo.cog` writes COGs), and :mod:`~eoforge.demo.pool` its unlabelled pool;
- :mod:`~eoforge.demo.sen12ms`: STAC for SEN12MS / DFC2020 patches on disk
  (:mod:`~eoforge.demo.sen12ms_layout` reads their published layouts);
- :mod:`~eoforge.demo.bigearthnet`: STAC items for the real BigEarthNet-MM sample patches;
- :mod:`~eoforge.demo.stac_writer`: the one way all of them write STAC (items, assets,
  collections, catalogs), with :mod:`~eoforge.demo.geotiff` for the headers of files on disk.
"""
