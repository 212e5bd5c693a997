"""Importers, one module per source; each turns its input into rows for the federation writer.

- :mod:`~fedkper_monai.data.sources.npz`: MedMNIST-layout ``.npz`` arrays (2D, 3D), local or downloaded.
- :mod:`~fedkper_monai.data.sources.folders`: class-folder trees ``root/<class_name>/<images>``.
- :mod:`~fedkper_monai.data.sources.manifest`: CSV manifests ``image,label[,site][,split][,id]``.
- :mod:`~fedkper_monai.data.sources.segmentation`: the same manifests with label-map paths (``--task segmentation``).
- :mod:`~fedkper_monai.data.sources.images`: what the file sources share (probing, copying, writing images).

A new source builds a :class:`~fedkper_monai.data.federation.Catalog` and calls
:func:`~fedkper_monai.data.federation.import_catalog` with the shared
:class:`~fedkper_monai.data.import_settings.ImportSettings`.
"""
